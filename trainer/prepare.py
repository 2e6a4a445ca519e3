"""The read-only harness: fixed constants, data preparation, the dataloader and the metric.

The agent edits `train.py` and never this file; the supervisor checks that it is unchanged before
every trial. Everything that makes two trials comparable lives here: the data, the tokenizer, the
sequence length, the validation tokens and the way val_bpb is computed.

Read it top to bottom:

1. constants (time budget, the two size profiles) and the active values read from the cache;
2. what a trial uses: `time_budget()`, `make_dataloader()`, `evaluate_bpb()`;
3. how the cache is built: corpus sources (embedded, local folder, download), tokenizer training,
   tokenization into flat uint16 token files, the manifest;
4. the command line (`python trainer/prepare.py ...`, also `autoresearch prepare ...` via `main()`).

The cache (`AUTORESEARCH_CACHE`, default `~/.cache/autoresearch`) holds:

    data/*.parquet        the text (column `text`), train shards and validation shard(s)
    tokenizer.json        byte-level BPE (any UTF-8 text round-trips exactly), with a BOS token
    token_bytes.npy       UTF-8 byte length of every token id (0 for special tokens)
    train.bin, val.bin    the token streams, uint16, each document preceded by BOS
    .stage-*.json         what each build step produced, so an interrupted prepare resumes
    manifest.json         written last and atomically: the cache is complete when it exists
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import http.client
import json
import math
import os
import re
import shutil
import sys
import sysconfig
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path

import numpy as np
import torch

# ---------------------------------------------------------------------------------------------
# 1. Fixed constants
# ---------------------------------------------------------------------------------------------

TIME_BUDGET = 300  # seconds of training per trial, unless AUTORESEARCH_TIME_BUDGET says otherwise

# Two sizes of the same experiment. "full" is the upstream setting for large GPUs; "small" keeps a
# trial meaningful on a CPU, Apple MPS or a small GPU (short sequences, smaller vocabulary, an
# evaluation that takes a couple of seconds on two CPU cores). Chosen once, at prepare time.
PROFILES: dict[str, dict[str, int]] = {
    "full": {"MAX_SEQ_LEN": 2048, "VOCAB_SIZE": 8192, "EVAL_TOKENS": 20 * 2**19},
    "small": {"MAX_SEQ_LEN": 256, "VOCAB_SIZE": 4096, "EVAL_TOKENS": 2**15},
}
DEFAULT_PROFILE = "small"  # the values exposed before any cache exists
FULL_PROFILE_MIN_GPU_GB = 20  # `--profile auto` picks "full" on a CUDA/ROCm GPU with this much memory

BOS_TOKEN = "<|bos|>"  # the only special token: starts every document, separates them in the stream
MANIFEST_NAME = "manifest.json"
MANIFEST_VERSION = 1

EMBEDDED_MAX_MB = 12.0  # default size cap of the embedded corpus (Python standard library sources)
VAL_BUCKETS = 16  # a document is validation when a hash of its name falls in 16 of 256 buckets (1/16)
SHARD_BYTES = 64 * 2**20  # text per parquet shard we write
TOKENIZER_MAX_CHARS = 250_000_000  # text used to train the tokenizer, at most
TOKENIZER_DOC_CHARS = 10_000  # characters of one document used to train the tokenizer, at most

DEFAULT_URL_TEMPLATE = (
    "https://huggingface.co/datasets/karpathy/fineweb-edu-100b-shuffle/resolve/main/shard_{index:05d}.parquet"
)
DEFAULT_NUM_SHARDS = 8  # downloaded shards; the last one is the validation shard
DOWNLOAD_RETRIES = 5
DOWNLOAD_BACKOFF = 2.0  # seconds before the first retry, doubled after each failure (capped at 60 s)
DOWNLOAD_TIMEOUT = 60.0  # seconds without data before a connection is given up and retried


class PrepareError(RuntimeError):
    """A problem the person can fix (bad arguments, missing data, network failure): message, no traceback."""


class CacheNotReadyError(PrepareError):
    """The cache has not been prepared (or is incomplete)."""


class DownloadError(PrepareError):
    """A shard could not be downloaded or failed its size/checksum check."""


def cache_dir() -> Path:
    """Where the prepared data lives: $AUTORESEARCH_CACHE, or ~/.cache/autoresearch."""
    env = os.environ.get("AUTORESEARCH_CACHE", "").strip()
    return Path(env).expanduser() if env else Path.home() / ".cache" / "autoresearch"


def _not_ready(cache: Path, why: str) -> CacheNotReadyError:
    return CacheNotReadyError(
        f"no prepared data in {cache} ({why}): run `autoresearch prepare` first "
        f"(or `python trainer/prepare.py`)"
    )


def load_manifest(cache: str | Path | None = None) -> dict:
    """The manifest of a complete cache; raises CacheNotReadyError when there is none."""
    cache = Path(cache) if cache is not None else cache_dir()
    path = cache / MANIFEST_NAME
    if not path.is_file():
        raise _not_ready(cache, "no manifest.json")
    try:
        manifest = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise _not_ready(cache, f"unreadable manifest.json: {exc}") from exc
    if manifest.get("version") != MANIFEST_VERSION:
        raise _not_ready(cache, f"manifest version {manifest.get('version')!r}, expected {MANIFEST_VERSION}")
    return manifest


def _active_values() -> tuple[str, int, int, int, bool]:
    """The profile values of the current cache, or the small profile's when there is no cache yet."""
    try:
        m = load_manifest()
        return m["profile"], m["max_seq_len"], m["vocab_size"], m["eval_tokens"], True
    except (CacheNotReadyError, KeyError):
        p = PROFILES[DEFAULT_PROFILE]
        return DEFAULT_PROFILE, p["MAX_SEQ_LEN"], p["VOCAB_SIZE"], p["EVAL_TOKENS"], False


# The values a trial uses, read from the prepared cache when this module is imported.
# VOCAB_SIZE is the tokenizer's real size (at most the profile's; less only for a tiny corpus);
# EVAL_TOKENS is the profile's, or less when the validation split is smaller than that.
PROFILE, MAX_SEQ_LEN, VOCAB_SIZE, EVAL_TOKENS, CACHE_READY = _active_values()


def time_budget() -> float:
    """Training seconds for this trial: $AUTORESEARCH_TIME_BUDGET if set, else TIME_BUDGET.

    0 is allowed (no training: evaluate the freshly initialised model)."""
    raw = os.environ.get("AUTORESEARCH_TIME_BUDGET")
    if raw is None or raw.strip() == "":
        return float(TIME_BUDGET)
    try:
        value = float(raw)
    except ValueError:
        value = float("nan")
    if not math.isfinite(value) or value < 0:
        raise ValueError(f"AUTORESEARCH_TIME_BUDGET must be a number of seconds >= 0, got {raw!r}")
    return value


# MFU is measured against this table. It lives in the harness so that every trial (and the
# supervisor's `doctor`) uses the same reference and an edit to train.py cannot inflate MFU.
# Dense (no sparsity) bf16 tensor-core peak FLOP/s per device as torch sees it, from vendor
# datasheets (GeForce cards: with fp32 accumulation, as used in training). Matched in order: every
# word of the key must be a word of the lower-cased device name, so specific keys come first. An
# unknown GPU (or a CPU) gets no MFU rather than a guess.
PEAK_BF16_FLOPS = [
    ("gh200", 989e12),
    ("h200 nvl", 835e12),
    ("h200", 989e12),
    ("h100 nvl", 835e12),
    ("h100 pcie", 756e12),
    ("h100", 989e12),  # SXM
    ("h800", 989e12),
    ("b200", 2250e12),
    ("b100", 1750e12),
    ("a100", 312e12),
    ("a800", 312e12),
    ("a10g", 70e12),
    ("a10", 125e12),
    ("l40s", 362e12),
    ("l40", 181e12),
    ("l4", 121e12),
    ("rtx 5090", 209.5e12),
    ("rtx 4090", 165.2e12),
    ("rtx 3090", 71e12),
    ("mi325x", 1307e12),
    ("mi300x", 1307e12),
    ("mi250x", 191.5e12),  # per GCD: torch sees each of the two dies as one device
    ("mi250", 181e12),  # per GCD
]


def peak_flops(device_name: str) -> float | None:
    """Datasheet dense bf16 peak FLOP/s of a device, or None when unknown (no MFU rather than a guess)."""
    words = set(re.split(r"[^a-z0-9]+", device_name.lower()))
    for key, flops in PEAK_BF16_FLOPS:
        if set(key.split()) <= words:
            return flops
    return None


# ---------------------------------------------------------------------------------------------
# 2. What a trial uses: token data, the dataloader, the metric
# ---------------------------------------------------------------------------------------------

_OPEN_CACHES: dict[tuple[str, float], dict] = {}


def _open_cache(cache: str | Path | None = None) -> dict:
    """Manifest plus memory-mapped token streams and the byte-length table (cheap checks only)."""
    cache = Path(cache) if cache is not None else cache_dir()
    manifest = load_manifest(cache)
    key = (str(cache.resolve()), (cache / MANIFEST_NAME).stat().st_mtime)
    if key in _OPEN_CACHES:
        return _OPEN_CACHES[key]
    for name, info in manifest["files"].items():
        path = cache / name
        if not path.is_file() or path.stat().st_size != info["size"]:
            raise _not_ready(cache, f"{name} is missing or has the wrong size")
    opened = {
        "manifest": manifest,
        "cache": cache,
        "train": np.memmap(cache / manifest["train_tokens"], dtype=np.uint16, mode="r"),
        "val": np.memmap(cache / manifest["val_tokens"], dtype=np.uint16, mode="r"),
        "token_bytes": np.load(cache / manifest["token_bytes"]),
    }
    _OPEN_CACHES.clear()  # one cache at a time is enough; do not keep stale memmaps open
    _OPEN_CACHES[key] = opened
    return opened


def get_tokenizer(cache: str | Path | None = None):
    """The trained `tokenizers.Tokenizer` (special-token text in the input is encoded as plain text)."""
    from tokenizers import Tokenizer

    opened = _open_cache(cache)
    tok = Tokenizer.from_file(str(opened["cache"] / opened["manifest"]["tokenizer"]))
    tok.encode_special_tokens = True
    return tok


def get_token_bytes(device: str | torch.device = "cpu", cache: str | Path | None = None) -> torch.Tensor:
    """UTF-8 byte length of every token id as an int64 tensor (0 for the BOS token)."""
    return torch.as_tensor(_open_cache(cache)["token_bytes"], dtype=torch.int64, device=device)


class DataLoader:
    """Endless (inputs, targets) batches of shape (batch_size, seq_len), int64, on `device`.

    The split is one stream of tokens (BOS doc BOS doc ...). Each row is a window of seq_len + 1
    consecutive tokens; targets are inputs shifted by one. For "train", every epoch starts at a
    random offset and visits the windows in a random order (no window twice per epoch), from a
    numpy generator seeded with `seed`, so the batches are a function of the seed alone. For
    "val" the order is fixed (offset 0, windows in order) and the seed is ignored.
    `epoch` counts the passes started so far.
    """

    def __init__(self, tokens: np.ndarray, batch_size: int, seq_len: int, device, seed: int, shuffle: bool):
        if batch_size < 1 or seq_len < 1:
            raise ValueError(f"batch_size and seq_len must be >= 1, got {batch_size} and {seq_len}")
        if len(tokens) < seq_len + 1:
            raise ValueError(f"the split has {len(tokens)} tokens, fewer than seq_len + 1 = {seq_len + 1}")
        self.tokens, self.batch_size, self.seq_len = tokens, batch_size, seq_len
        self.device = torch.device(device)
        self.shuffle = shuffle
        self.rng = np.random.default_rng(seed)
        self.epoch = 0
        self._pending = np.empty(0, dtype=np.int64)
        self._window = np.arange(seq_len + 1, dtype=np.int64)

    def _epoch_starts(self) -> np.ndarray:
        T = self.seq_len
        offset = int(self.rng.integers(T)) if self.shuffle and len(self.tokens) > 2 * T + 1 else 0
        n = (len(self.tokens) - offset - 1) // T
        starts = offset + np.arange(n, dtype=np.int64) * T
        return self.rng.permutation(starts) if self.shuffle else starts

    def __iter__(self) -> DataLoader:
        return self

    def __next__(self) -> tuple[torch.Tensor, torch.Tensor]:
        while len(self._pending) < self.batch_size:
            self._pending = np.concatenate([self._pending, self._epoch_starts()])
            self.epoch += 1
        starts, self._pending = self._pending[: self.batch_size], self._pending[self.batch_size :]
        rows = torch.from_numpy(self.tokens[starts[:, None] + self._window].astype(np.int64))
        if self.device.type == "cuda":
            rows = rows.pin_memory().to(self.device, non_blocking=True)
        else:
            rows = rows.to(self.device)
        return rows[:, :-1].contiguous(), rows[:, 1:].contiguous()


def make_dataloader(
    split: str,
    batch_size: int,
    seq_len: int | None = None,
    device: str | torch.device = "cpu",
    seed: int = 0,
    cache: str | Path | None = None,
) -> DataLoader:
    """Batches from the "train" or "val" token stream; seq_len defaults to the profile's MAX_SEQ_LEN."""
    if split not in ("train", "val"):
        raise ValueError(f"split must be 'train' or 'val', got {split!r}")
    opened = _open_cache(cache)
    seq_len = seq_len or opened["manifest"]["max_seq_len"]
    return DataLoader(opened[split], batch_size, seq_len, device, seed, shuffle=(split == "train"))


@torch.no_grad()
def evaluate_bpb(
    model: torch.nn.Module,
    batch_size: int,
    device: str | torch.device | None = None,
    cache: str | Path | None = None,
) -> float:
    """Bits per byte of the model on the first EVAL_TOKENS validation targets. Lower is better.

        val_bpb = sum of cross-entropy (nats) over targets / (ln 2 * sum of UTF-8 bytes of targets)

    Targets that are special tokens (0 bytes: the BOS between documents) count in neither sum.
    Because the denominator is bytes of text, not tokens, the number does not depend on the
    vocabulary: a tokenizer change is judged on the same scale.

    The validation stream is cut into consecutive rows of MAX_SEQ_LEN targets (each row sees only
    its own context). `model(idx, targets, reduction="none")` must return the per-token loss in
    nats, shape (B, T). The last batch is padded by repeating a row whose loss is then dropped, so
    every call has the same shape and the result does not depend on batch_size.
    Runs in eval mode without gradients (restores the mode afterwards). When
    $AUTORESEARCH_EVAL_RECORD is set, writes a JSON record of the result there: the supervisor
    trusts that record over what train.py prints.
    """
    opened = _open_cache(cache)
    manifest = opened["manifest"]
    T, eval_tokens = manifest["max_seq_len"], manifest["eval_tokens"]
    n_rows = eval_tokens // T
    if device is None:
        first = next(iter(model.parameters()), None)
        device = first.device if first is not None else torch.device("cpu")
    device = torch.device(device)
    tokens = np.asarray(opened["val"][: n_rows * T + 1], dtype=np.int64)
    token_bytes = torch.as_tensor(opened["token_bytes"], dtype=torch.int64, device=device)
    window = np.arange(T + 1, dtype=np.int64)

    was_training = model.training
    model.eval()
    t0 = time.time()
    total_nats = torch.zeros((), dtype=torch.float64, device=device)
    total_bytes = torch.zeros((), dtype=torch.int64, device=device)
    scored = torch.zeros((), dtype=torch.int64, device=device)
    try:
        for first_row in range(0, n_rows, batch_size):
            count = min(batch_size, n_rows - first_row)
            rows = np.arange(first_row, first_row + batch_size).clip(max=n_rows - 1)
            chunk = torch.from_numpy(tokens[rows[:, None] * T + window]).to(device)
            idx, targets = chunk[:, :-1], chunk[:, 1:]
            loss = model(idx, targets, reduction="none")
            if tuple(loss.shape) != (batch_size, T):
                raise ValueError(
                    f'model(idx, targets, reduction="none") must return the per-token loss of shape '
                    f"{(batch_size, T)}, got {tuple(loss.shape)}"
                )
            loss, targets = loss[:count].double(), targets[:count]
            nbytes = token_bytes[targets]
            counted = nbytes > 0
            total_nats += torch.where(counted, loss, torch.zeros_like(loss)).sum()
            total_bytes += nbytes.sum()
            scored += counted.sum()
    finally:
        model.train(was_training)
    nats, nbytes_total = total_nats.item(), int(total_bytes.item())
    bpb = nats / (math.log(2) * nbytes_total)
    seconds = time.time() - t0

    record_path = os.environ.get("AUTORESEARCH_EVAL_RECORD", "").strip()
    if record_path:
        record = {
            "val_bpb": bpb,
            "tokens": n_rows * T,
            "scored_tokens": int(scored.item()),
            "bytes": nbytes_total,
            "nats": nats,
            "seconds": round(seconds, 3),
            "seq_len": T,
            "batch_size": batch_size,
            "profile": manifest["profile"],
            "vocab_size": manifest["vocab_size"],
            "val_tokens_sha256": manifest["files"][manifest["val_tokens"]]["sha256"],
            "time": time.time(),
        }
        _atomic_write_bytes(Path(record_path), (json.dumps(record, indent=2) + "\n").encode())
    return bpb


# ---------------------------------------------------------------------------------------------
# 3. Building the cache
# ---------------------------------------------------------------------------------------------

# --- small file helpers: every file is written under a temporary name, then renamed ---


def _tmp_path(path: Path) -> Path:
    return path.with_name(f".{path.name}.tmp-{os.getpid()}")


def _atomic_write_bytes(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = _tmp_path(path)
    with open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def _write_json(path: Path, obj: dict) -> None:
    _atomic_write_bytes(path, (json.dumps(obj, indent=2, sort_keys=True) + "\n").encode())


def _read_json(path: Path) -> dict | None:
    try:
        value = json.loads(path.read_text())
        return value if isinstance(value, dict) else None
    except (OSError, ValueError):
        return None


def _sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(4 * 2**20), b""):
            h.update(block)
    return h.hexdigest()


def _describe_files(cache: Path, names: Iterable[str]) -> dict[str, dict]:
    return {n: {"size": (cache / n).stat().st_size, "sha256": _sha256_file(cache / n)} for n in names}


def _file_problems(cache: Path, files: dict[str, dict], deep: bool = True) -> list[str]:
    problems = []
    for name, info in files.items():
        path = cache / name
        if not path.is_file():
            problems.append(f"{name} is missing")
        elif path.stat().st_size != info["size"]:
            problems.append(f"{name} has {path.stat().st_size} bytes, expected {info['size']}")
        elif deep and _sha256_file(path) != info["sha256"]:
            problems.append(f"{name} does not match its sha256")
    return problems


def _digest(files: dict[str, dict]) -> str:
    """One hash standing for a set of files (their names and sha256s): a later step's input."""
    return hashlib.sha256(json.dumps(files, sort_keys=True).encode()).hexdigest()


def _bucket(key: str, salt: str) -> int:
    return hashlib.sha256(f"{salt}:{key}".encode()).digest()[0]


def _is_val(key: str) -> bool:
    return _bucket(key, "split") < VAL_BUCKETS


# --- progress: rich bars on a terminal, a few plain lines otherwise ---


def _log(msg: str) -> None:
    print(f"prepare: {msg}", flush=True)


class _Progress:
    """A rich progress bar on stderr when it is a terminal; silent otherwise (the steps log lines)."""

    def __init__(self, description: str, total: float | None, bytes_: bool = False):
        self.bar = None
        if sys.stderr.isatty():
            from rich.console import Console
            from rich.progress import (
                BarColumn,
                DownloadColumn,
                MofNCompleteColumn,
                Progress,
                TimeRemainingColumn,
                TransferSpeedColumn,
            )

            columns = [BarColumn(), DownloadColumn(), TransferSpeedColumn()] if bytes_ else [
                BarColumn(),
                MofNCompleteColumn(),
            ]
            self.bar = Progress("{task.description}", *columns, TimeRemainingColumn(),
                                console=Console(stderr=True), transient=True)
            self.task = self.bar.add_task(description, total=total)

    def __enter__(self) -> _Progress:
        if self.bar:
            self.bar.start()
        return self

    def advance(self, n: float) -> None:
        if self.bar:
            self.bar.advance(self.task, n)

    def update(self, completed: float, total: float | None = None) -> None:
        if self.bar:
            self.bar.update(self.task, completed=completed, total=total)

    def __exit__(self, *exc) -> None:
        if self.bar:
            self.bar.stop()


# --- sources of text ---


def _embedded_documents(max_mb: float) -> Iterator[tuple[str, str]]:
    """(name, text) of Python standard library sources: a corpus every machine with Python has.

    Files are visited in an order fixed by a hash of their path relative to the stdlib folder (so
    a size cap takes a spread of modules, not the first letters of the alphabet); a file that
    would take the total past max_mb is skipped. So are site-packages (not the stdlib), caches,
    the generated codec tables and the few files that are not UTF-8 text.
    """
    root = Path(sysconfig.get_paths()["stdlib"])
    skip_dirs = {"site-packages", "dist-packages", "__pycache__", "encodings"}
    rels = []
    for path in sorted(root.rglob("*.py")):
        rel = path.relative_to(root)
        if not any(part in skip_dirs for part in rel.parts[:-1]) and path.is_file():
            rels.append(rel.as_posix())
    rels.sort(key=lambda r: hashlib.sha256(f"order:{r}".encode()).hexdigest())
    budget = int(max_mb * 1e6)
    for rel in rels:
        if (root / rel).stat().st_size > budget:
            continue  # does not fit in what is left of the cap; a smaller file may
        raw = (root / rel).read_bytes()
        if b"\0" in raw:
            continue
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError:
            continue
        if text.strip():
            budget -= len(raw)
            yield rel, text


def _local_documents(folder: Path, max_mb: float | None) -> Iterator[tuple[str, str]]:
    """(name, text) from .txt (one document per file), .jsonl (field `text`) and .parquet (column `text`)."""
    import pyarrow.parquet as pq

    folder = folder.expanduser()
    if folder.is_file():
        files, base = [folder], folder.parent
    elif folder.is_dir():
        base = folder
        files = sorted(
            p for p in folder.rglob("*")
            if p.is_file() and p.suffix in (".txt", ".jsonl", ".parquet")
            and not any(part.startswith(".") for part in p.relative_to(folder).parts)
        )
    else:
        raise PrepareError(f"source {str(folder)!r} is not 'embedded', a URL template, or an existing folder")
    if not files:
        raise PrepareError(f"no .txt, .jsonl or .parquet files in {folder}")
    budget = int(max_mb * 1e6) if max_mb else None
    for path in files:
        rel = path.relative_to(base).as_posix()
        if path.suffix == ".txt":
            docs: Iterable[tuple[str, str]] = [(rel, path.read_bytes().decode("utf-8", errors="replace"))]
        elif path.suffix == ".jsonl":
            docs = _jsonl_documents(path, rel)
        else:
            docs = _parquet_documents(pq, path, rel)
        for name, text in docs:
            if budget is not None and budget <= 0:
                return
            if text.strip():
                if budget is not None:
                    budget -= len(text.encode("utf-8"))
                yield name, text


def _jsonl_documents(path: Path, rel: str) -> Iterator[tuple[str, str]]:
    with open(path, encoding="utf-8", errors="replace") as f:
        for lineno, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                text = json.loads(line)["text"]
            except (ValueError, KeyError, TypeError) as exc:
                raise PrepareError(f"{path}:{lineno}: expected a JSON object with a string field 'text'") from exc
            if not isinstance(text, str):
                raise PrepareError(f"{path}:{lineno}: field 'text' is not a string")
            yield f"{rel}:{lineno}", text


def _parquet_documents(pq, path: Path, rel: str) -> Iterator[tuple[str, str]]:
    try:
        pf = pq.ParquetFile(path)
    except Exception as exc:  # pyarrow raises several types for a broken file
        raise PrepareError(f"{path}: not a readable parquet file ({exc})") from exc
    if "text" not in pf.schema_arrow.names:
        raise PrepareError(f"{path}: no column 'text' (columns: {', '.join(pf.schema_arrow.names)})")
    row = 0
    for batch in pf.iter_batches(columns=["text"], batch_size=1024):
        for text in batch.column(0).to_pylist():
            row += 1
            if isinstance(text, str):
                yield f"{rel}:{row}", text


class _ShardWriter:
    """Writes documents into parquet shards (column `text`) of about SHARD_BYTES of text each,
    streaming, so a large local folder never has to fit in memory."""

    def __init__(self, data: Path, prefix: str):
        self.data, self.prefix = data, prefix
        self.names: list[str] = []
        self.docs: list[str] = []
        self.size = 0
        self.count = 0

    def add(self, doc: str) -> None:
        self.docs.append(doc)
        self.size += len(doc)
        self.count += 1
        if self.size >= SHARD_BYTES:
            self.flush()

    def flush(self) -> None:
        import pyarrow as pa
        import pyarrow.parquet as pq

        path = self.data / f"{self.prefix}_{len(self.names):05d}.parquet"
        tmp = _tmp_path(path)
        pq.write_table(pa.table({"text": pa.array(self.docs, type=pa.string())}), tmp, row_group_size=1024)
        os.replace(tmp, path)
        self.names.append(f"data/{path.name}")
        self.docs, self.size = [], 0

    def close(self) -> list[str]:
        if self.docs:
            self.flush()
        return self.names


def _build_text_from_documents(cache: Path, documents: Iterator[tuple[str, str]]) -> dict:
    """Split (name, text) documents into train/val by a hash of the name and write the shards.
    Both splits get at least one document (the last train document moves if val is empty)."""
    data = cache / "data"
    shutil.rmtree(data, ignore_errors=True)
    data.mkdir(parents=True)
    train, val = _ShardWriter(data, "train"), _ShardWriter(data, "val")
    held: str | None = None  # the latest train document, written late in case val needs it
    nbytes = 0
    for name, text in documents:
        nbytes += len(text.encode("utf-8"))
        if _is_val(name):
            val.add(text)
        else:
            if held is not None:
                train.add(held)
            held = text
    if held is not None:
        (val if val.count == 0 else train).add(held)
    if train.count == 0 or val.count == 0:
        raise PrepareError(
            f"need documents in both splits, got {train.count} train and {val.count} validation documents "
            f"(a document is validation when a hash of its name falls in {VAL_BUCKETS}/256 of the range): "
            f"add more documents"
        )
    _log(f"corpus: {train.count} train and {val.count} validation documents, {nbytes / 1e6:.1f} MB")
    return {"train_shards": train.close(), "val_shards": val.close()}


# --- download over HTTPS, resumable ---


class _RecordRedirects(urllib.request.HTTPRedirectHandler):
    """Keeps the headers of redirect responses: Hugging Face sends the file's sha256 there."""

    def __init__(self):
        self.linked_etag: str | None = None

    def redirect_request(self, req, fp, code, msg, headers, newurl):
        etag = headers.get("X-Linked-Etag")
        if etag:
            self.linked_etag = etag
        return super().redirect_request(req, fp, code, msg, headers, newurl)


def _sha_from_etag(etag: str | None) -> str | None:
    value = (etag or "").strip().removeprefix("W/").strip('"').lower()
    return value if len(value) == 64 and all(c in "0123456789abcdef" for c in value) else None


def download_file(
    url: str,
    dest: str | Path,
    expected_sha256: str | None = None,
    retries: int | None = None,
    backoff: float | None = None,
    timeout: float | None = None,
) -> Path:
    """Download url to dest through dest + ".part", resuming a partial file with an HTTP Range request.

    The result is checked against the size the server announced (Content-Length / Content-Range)
    and against a sha256 when one is known: `expected_sha256`, or the `X-Linked-Etag` header that
    Hugging Face sends for large files. Network errors, HTTP 5xx/429 and short reads are retried
    with exponential backoff; other HTTP errors fail at once. Raises DownloadError.
    """
    dest = Path(dest)
    part = dest.with_name(dest.name + ".part")
    retries = DOWNLOAD_RETRIES if retries is None else retries
    delay = DOWNLOAD_BACKOFF if backoff is None else backoff
    timeout = DOWNLOAD_TIMEOUT if timeout is None else timeout
    dest.parent.mkdir(parents=True, exist_ok=True)
    last_error = "no attempt made"
    for attempt in range(1, retries + 1):
        try:
            total, sha = _download_attempt(url, part, timeout)
            have = part.stat().st_size
            if total is not None and have != total:
                part.unlink()
                raise DownloadError(f"size mismatch for {url}: the server announced {total} bytes and sent {have}")
            sha = expected_sha256 or sha
            if sha and _sha256_file(part) != sha.lower():
                part.unlink()
                raise DownloadError(f"sha256 mismatch for {url}: expected {sha}; the partial file was removed")
            os.replace(part, dest)
            return dest
        except DownloadError:
            raise
        except urllib.error.HTTPError as exc:
            if exc.code not in (408, 429) and exc.code < 500:
                raise DownloadError(f"HTTP {exc.code} {exc.reason} for {url}") from exc
            last_error = f"HTTP {exc.code} {exc.reason}"
        except _ShortRead as exc:
            last_error = str(exc)
        except (urllib.error.URLError, OSError, http.client.HTTPException) as exc:  # timeouts, resets, bad replies
            last_error = f"{type(exc).__name__}: {getattr(exc, 'reason', exc)}"
        if attempt < retries:
            _log(f"download of {url} failed ({last_error}); retry {attempt}/{retries - 1} in {delay:.1f} s")
            time.sleep(delay)
            delay = min(delay * 2, 60.0)
    raise DownloadError(f"could not download {url} after {retries} attempt(s): {last_error}")


class _ShortRead(Exception):
    """The transfer stopped before the announced size: worth a retry that resumes."""


def _download_attempt(url: str, part: Path, timeout: float) -> tuple[int | None, str | None]:
    """One request, appending to `part`. Returns (total size if announced, sha256 if announced)."""
    have = part.stat().st_size if part.exists() else 0
    headers = {"User-Agent": "autoresearch-prepare/1"}
    if have:
        headers["Range"] = f"bytes={have}-"
    redirects = _RecordRedirects()
    opener = urllib.request.build_opener(redirects)
    try:
        resp = opener.open(urllib.request.Request(url, headers=headers), timeout=timeout)
    except urllib.error.HTTPError as exc:
        if exc.code == 416 and have:  # asked for bytes past the end: the part may be complete already
            total = _total_from_content_range(exc.headers.get("Content-Range"))
            if total == have:
                return total, _sha_from_etag(exc.headers.get("X-Linked-Etag") or redirects.linked_etag)
            part.unlink()
            raise _ShortRead(f"the server refused to resume at byte {have}; starting over") from exc
        raise
    with resp:
        sha = _sha_from_etag(resp.headers.get("X-Linked-Etag") or redirects.linked_etag)
        length = resp.headers.get("Content-Length")
        if resp.status == 206:
            start = _start_from_content_range(resp.headers.get("Content-Range"))
            total = _total_from_content_range(resp.headers.get("Content-Range"))
            if start != have:
                part.unlink()
                raise _ShortRead(f"the server resumed at byte {start}, not {have}; starting over")
            mode = "ab"
        else:  # 200: the whole file (the server ignored or did not get a Range header)
            have, mode = 0, "wb"
            total = int(length) if length and length.isdigit() else None
        with _Progress(f"download {Path(part.name).stem}", total, bytes_=True) as bar, open(part, mode) as f:
            bar.update(have)
            while block := resp.read(1 << 20):  # b"" at the end, or when the connection drops
                f.write(block)
                bar.advance(len(block))
    size = part.stat().st_size
    if total is not None and size < total:
        raise _ShortRead(f"size mismatch: received {size} of the {total} bytes the server announced")
    return total, sha


def _start_from_content_range(value: str | None) -> int | None:
    try:  # "bytes 100-199/200"
        return int(value.split()[1].split("-")[0])
    except (AttributeError, IndexError, ValueError):
        return None


def _total_from_content_range(value: str | None) -> int | None:
    try:  # "bytes 100-199/200" or "bytes */200"
        total = value.rsplit("/", 1)[1]
        return None if total == "*" else int(total)
    except (AttributeError, IndexError, ValueError):
        return None


def _parquet_has_text(path: Path) -> bool:
    import pyarrow.parquet as pq

    try:
        return "text" in pq.ParquetFile(path).schema_arrow.names
    except Exception:
        return False


def _build_text_from_download(cache: Path, url_template: str, num_shards: int) -> dict:
    """Download shards 0..num_shards-1 (the last is validation). Keeps completed shards and .part
    files from an interrupted run of the same URL template; resumes the rest."""
    data = cache / "data"
    marker = data / ".download.json"
    if (_read_json(marker) or {}).get("url_template") != url_template:
        shutil.rmtree(data, ignore_errors=True)
        data.mkdir(parents=True)
        _write_json(marker, {"url_template": url_template})
    names = []
    for index in range(num_shards):
        url = url_template.format(index=index)
        dest = data / f"shard_{index:05d}.parquet"
        if dest.is_file() and _parquet_has_text(dest):
            _log(f"shard {index} already downloaded")
        else:
            dest.unlink(missing_ok=True)
            _log(f"downloading shard {index + 1}/{num_shards}: {url}")
            download_file(url, dest)
            if not _parquet_has_text(dest):
                dest.unlink()
                raise DownloadError(f"{url} is not a parquet file with a column 'text'")
        names.append(f"data/{dest.name}")
    return {"train_shards": names[:-1], "val_shards": names[-1:]}


# --- tokenizer ---


def _iter_shard_texts(cache: Path, shards: list[str]) -> Iterator[list[str]]:
    """Batches of document texts from parquet shards, in order."""
    import pyarrow.parquet as pq

    for name in shards:
        for batch in pq.ParquetFile(cache / name).iter_batches(columns=["text"], batch_size=1024):
            yield [t for t in batch.column(0).to_pylist() if isinstance(t, str) and t]


def _count_rows(cache: Path, shards: list[str]) -> int:
    import pyarrow.parquet as pq

    return sum(pq.ParquetFile(cache / name).metadata.num_rows for name in shards)


def _train_tokenizer(cache: Path, train_shards: list[str], vocab_size: int) -> list[str]:
    """Byte-level BPE: text is bytes before merges, so every UTF-8 string encodes and decodes exactly."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    def texts() -> Iterator[str]:
        budget = TOKENIZER_MAX_CHARS
        for batch in _iter_shard_texts(cache, train_shards):
            for text in batch:
                if budget <= 0:
                    return
                text = text[:TOKENIZER_DOC_CHARS]
                budget -= len(text)
                yield text

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=[BOS_TOKEN],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=sys.stderr.isatty(),
    )
    _log(f"training a byte-level BPE tokenizer (vocab {vocab_size})")
    tok.train_from_iterator(texts(), trainer)
    if tok.token_to_id(BOS_TOKEN) != 0:
        raise PrepareError(f"expected {BOS_TOKEN} to be token 0, got {tok.token_to_id(BOS_TOKEN)}")
    if tok.get_vocab_size() > 2**16:
        raise PrepareError(f"vocab size {tok.get_vocab_size()} does not fit the uint16 token files")
    path = cache / "tokenizer.json"
    tmp = _tmp_path(path)
    tok.save(str(tmp))
    os.replace(tmp, path)

    # Byte length of each token: a byte-level token is a string over a 256-character alphabet,
    # one character per byte, so its length is its byte count. Special tokens stand for no text.
    alphabet = set(pre_tokenizers.ByteLevel.alphabet())
    special = {BOS_TOKEN}
    lengths = np.zeros(tok.get_vocab_size(), dtype=np.int32)
    for token_id in range(tok.get_vocab_size()):
        piece = tok.id_to_token(token_id)
        if piece in special:
            continue
        if not set(piece) <= alphabet:
            raise PrepareError(f"token {token_id} {piece!r} is not a byte-level token")
        lengths[token_id] = len(piece)
    path = cache / "token_bytes.npy"
    tmp = _tmp_path(path)
    with open(tmp, "wb") as f:
        np.save(f, lengths)
    os.replace(tmp, path)
    _log(f"tokenizer: {tok.get_vocab_size()} tokens")
    return ["tokenizer.json", "token_bytes.npy"]


# --- token streams ---


def _tokenize_split(cache: Path, shards: list[str], out_name: str, max_tokens: int | None = None) -> int:
    """Encode documents into one uint16 stream, BOS before each document; returns the token count."""
    from tokenizers import Tokenizer

    tok = Tokenizer.from_file(str(cache / "tokenizer.json"))
    tok.encode_special_tokens = True  # a literal "<|bos|>" in the text is text, not a separator
    bos = tok.token_to_id(BOS_TOKEN)
    path = cache / out_name
    tmp = _tmp_path(path)
    count = 0
    with open(tmp, "wb") as f, _Progress(f"tokenize {out_name}", _count_rows(cache, shards)) as bar:
        for batch in _iter_shard_texts(cache, shards):
            encoded = tok.encode_batch(batch)
            pieces = []
            for enc in encoded:
                pieces.append(np.array([bos], dtype=np.uint16))
                pieces.append(np.asarray(enc.ids, dtype=np.uint16))
            if pieces:
                arr = np.concatenate(pieces)
                f.write(arr.tobytes())
                count += len(arr)
            bar.advance(len(batch))
            if max_tokens is not None and count >= max_tokens:
                break
    os.replace(tmp, path)
    _log(f"{out_name}: {count:,} tokens")
    return count


# --- stages: each records its inputs and outputs, so a rerun redoes only what is missing ---


def _run_stage(cache: Path, name: str, params: dict, build: Callable[[], dict]) -> dict:
    """Run `build` unless this stage's record says it already ran with these params and its output
    files are intact. `build` returns {"files": [names], ...extra}; the record keeps sizes and sha256s."""
    record_path = cache / f".stage-{name}.json"
    record = _read_json(record_path)
    if record:
        if record.get("params") != params:
            why = "its inputs changed"
        else:
            problems = _file_problems(cache, record.get("files", {}))
            if not problems:
                _log(f"{name}: up to date, kept")
                return record
            why = "; ".join(problems)
        _log(f"{name}: rebuilding ({why})")
    record_path.unlink(missing_ok=True)
    result = build()
    record = {"params": params, **result, "files": _describe_files(cache, result["files"])}
    _write_json(record_path, record)
    return record


def detect_profile() -> str:
    """"full" on a CUDA/ROCm GPU with >= FULL_PROFILE_MIN_GPU_GB of memory, else "small"."""
    try:
        if torch.cuda.is_available():
            total = torch.cuda.get_device_properties(0).total_memory
            if total >= FULL_PROFILE_MIN_GPU_GB * 1e9:
                return "full"
    except Exception:  # a broken driver is not a reason to fail preparation
        pass
    return "small"


def _source_spec(source: str, max_mb: float | None, num_shards: int | None) -> dict:
    """What to build the text from, normalised so that two equal requests compare equal."""
    if source == "download":
        source = DEFAULT_URL_TEMPLATE
    if source == "embedded":
        mb = EMBEDDED_MAX_MB if max_mb is None else max_mb
        return {"kind": "embedded", "max_mb": float(mb)}
    if source.startswith(("http://", "https://")):
        if "{index" not in source:
            raise PrepareError("a download source must be a URL template containing {index}, e.g. ..._{index:05d}.parquet")
        if max_mb is not None:
            raise PrepareError("--max-mb does not apply to downloads; choose the amount with --num-shards")
        n = DEFAULT_NUM_SHARDS if num_shards is None else num_shards
        if n < 2:
            raise PrepareError("--num-shards must be at least 2 (the last shard is the validation shard)")
        return {"kind": "download", "url_template": source, "num_shards": n}
    path = Path(source).expanduser()
    if not path.exists():
        raise PrepareError(f"source {source!r} is not 'embedded', a URL template, or an existing folder")
    return {"kind": "local", "path": str(path.resolve()), "max_mb": None if max_mb is None else float(max_mb)}


def prepare(
    source: str | None = None,
    profile: str = "auto",
    cache: str | Path | None = None,
    max_mb: float | None = None,
    num_shards: int | None = None,
) -> dict:
    """Build (or repair, or confirm) the cache; returns the manifest.

    source: "embedded" (default for a new cache), a local folder/file, or an https URL template
    with {index}; None reuses the source of the existing cache. profile: "auto", "full" or "small".
    """
    # Checked before the cache folder exists, so a bad option leaves nothing behind.
    if max_mb is not None and not (math.isfinite(max_mb) and max_mb > 0):
        raise PrepareError(f"--max-mb must be a positive number, got {max_mb}")
    if num_shards is not None and num_shards < 1:
        raise PrepareError(f"--num-shards must be positive, got {num_shards}")
    cache = (Path(cache) if cache is not None else cache_dir()).expanduser()
    cache.mkdir(parents=True, exist_ok=True)
    with _cache_lock(cache):
        return _prepare_locked(source, profile, cache, max_mb, num_shards)


@contextlib.contextmanager
def _cache_lock(cache: Path) -> Iterator[None]:
    """One prepare at a time per cache (a second one waits), where the OS has flock."""
    try:
        import fcntl
    except ImportError:  # Windows: no lock
        yield
        return
    with open(cache / ".lock", "a") as f:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            _log(f"another prepare is working on {cache}; waiting for it to finish")
            fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def _prepare_locked(source: str | None, profile: str, cache: Path, max_mb: float | None,
                    num_shards: int | None) -> dict:
    if profile == "auto":
        profile = detect_profile()
        _log(f"profile auto -> {profile}")
    if profile not in PROFILES:
        raise PrepareError(f"unknown profile {profile!r}; choose auto, full or small")
    old = _read_json(cache / MANIFEST_NAME) or {}
    if source is None:  # keep what the cache was built from, so a bare `prepare` repairs it
        previous = old.get("source") or (_read_json(cache / ".stage-text.json") or {}).get("params", {})
        kind = previous.get("kind")
        source = {"download": previous.get("url_template"), "local": previous.get("path")}.get(kind) or "embedded"
        if kind in ("embedded", "local") and max_mb is None:
            max_mb = previous.get("max_mb")
        if kind == "download" and num_shards is None:
            num_shards = previous.get("num_shards")
    spec = _source_spec(source, max_mb, num_shards)
    sizes = PROFILES[profile]

    if old.get("profile") == profile and old.get("source") == spec:
        problems = _file_problems(cache, old.get("files", {}))
        if not problems:
            _log(f"cache {cache} is up to date ({profile} profile, {_describe_source(spec)}); nothing to do")
            return load_manifest(cache)
        _log(f"cache {cache} is damaged ({'; '.join(problems)}); repairing")
    elif old:
        if old.get("profile") != profile:
            _log(f"cache was prepared with profile {old.get('profile')!r}; rebuilding for profile {profile!r}")
        else:
            _log(f"cache was prepared from {_describe_source(old.get('source') or {})}; rebuilding from {_describe_source(spec)}")
    else:
        _log(f"preparing {cache} ({profile} profile, {_describe_source(spec)})")
    (cache / MANIFEST_NAME).unlink(missing_ok=True)  # from here until the end the cache is incomplete
    for stale in cache.glob(".*.tmp-*"):
        stale.unlink(missing_ok=True)
    for stale in (cache / "data").glob(".*.tmp-*"):
        stale.unlink(missing_ok=True)

    def build_text() -> dict:
        if spec["kind"] == "embedded":
            shards = _build_text_from_documents(cache, _embedded_documents(spec["max_mb"]))
        elif spec["kind"] == "local":
            shards = _build_text_from_documents(cache, _local_documents(Path(spec["path"]), spec["max_mb"]))
        else:
            shards = _build_text_from_download(cache, spec["url_template"], spec["num_shards"])
        return {**shards, "files": shards["train_shards"] + shards["val_shards"]}

    text = _run_stage(cache, "text", spec, build_text)
    text_digest = _digest(text["files"])

    tokenizer = _run_stage(
        cache, "tokenizer", {"text": text_digest, "vocab_size": sizes["VOCAB_SIZE"]},
        lambda: {"files": _train_tokenizer(cache, text["train_shards"], sizes["VOCAB_SIZE"])},
    )
    val_cap = 2 * sizes["EVAL_TOKENS"] + sizes["MAX_SEQ_LEN"] + 1

    def build_tokens() -> dict:
        return {
            "num_train_tokens": _tokenize_split(cache, text["train_shards"], "train.bin"),
            "num_val_tokens": _tokenize_split(cache, text["val_shards"], "val.bin", max_tokens=val_cap),
            "files": ["train.bin", "val.bin"],
        }

    tokens = _run_stage(
        cache, "tokens", {"text": text_digest, "tokenizer": _digest(tokenizer["files"]), "val_cap": val_cap},
        build_tokens,
    )

    T = sizes["MAX_SEQ_LEN"]
    if tokens["num_train_tokens"] < T + 1 or tokens["num_val_tokens"] < T + 1:
        raise PrepareError(
            f"too little text: {tokens['num_train_tokens']} train and {tokens['num_val_tokens']} validation "
            f"tokens; each split needs more than the sequence length {T}"
        )
    eval_tokens = min(sizes["EVAL_TOKENS"], (tokens["num_val_tokens"] - 1) // T * T)
    if eval_tokens < sizes["EVAL_TOKENS"]:
        _log(f"note: the validation split is small; evaluating on {eval_tokens:,} tokens, "
             f"not {sizes['EVAL_TOKENS']:,}")
    if profile == "full" and spec["kind"] == "embedded":
        _log("note: the embedded corpus is small for the full profile: a GPU trial will see it many times "
             "over; `--source download` gives real web text")
    vocab_size = int(np.load(cache / "token_bytes.npy").shape[0])
    source_info = dict(spec)
    if spec["kind"] == "embedded":
        source_info["python"] = sys.version.split()[0]
    manifest = {
        "version": MANIFEST_VERSION,
        "profile": profile,
        "max_seq_len": T,
        "vocab_size": vocab_size,
        "profile_vocab_size": sizes["VOCAB_SIZE"],
        "eval_tokens": eval_tokens,
        "profile_eval_tokens": sizes["EVAL_TOKENS"],
        "bos_token": BOS_TOKEN,
        "bos_id": 0,
        "source": spec,
        "source_info": source_info,
        "train_shards": text["train_shards"],
        "val_shards": text["val_shards"],
        "tokenizer": "tokenizer.json",
        "token_bytes": "token_bytes.npy",
        "train_tokens": "train.bin",
        "val_tokens": "val.bin",
        "num_train_tokens": tokens["num_train_tokens"],
        "num_val_tokens": tokens["num_val_tokens"],
        "files": {**text["files"], **tokenizer["files"], **tokens["files"]},
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }
    _write_json(cache / MANIFEST_NAME, manifest)  # last: its presence means the cache is complete
    _log(f"done: {cache} ({profile}, vocab {vocab_size}, {tokens['num_train_tokens']:,} train tokens, "
         f"eval on {eval_tokens:,} tokens)")
    return manifest


def _describe_source(spec: dict) -> str:
    kind = spec.get("kind")
    if kind == "embedded":
        return f"embedded Python stdlib corpus, {spec.get('max_mb')} MB"
    if kind == "local":
        return f"local {spec.get('path')}" + (f", {spec['max_mb']} MB" if spec.get("max_mb") else "")
    if kind == "download":
        return f"{spec.get('num_shards')} shards of {spec.get('url_template')}"
    return "unknown source"


def verify_cache(cache: str | Path | None = None, deep: bool = True) -> list[str]:
    """Problems with the cache ([] when it is complete and intact). deep=True also checks sha256s."""
    cache = Path(cache) if cache is not None else cache_dir()
    try:
        manifest = load_manifest(cache)
    except CacheNotReadyError as exc:
        return [str(exc)]
    return _file_problems(cache, manifest.get("files", {}), deep=deep)


# ---------------------------------------------------------------------------------------------
# 4. Command line
# ---------------------------------------------------------------------------------------------


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="prepare",
        description="Prepare the data cache for autoresearch trials (corpus, tokenizer, token files).",
    )
    p.add_argument("--source", default=None,
                   help="'embedded' (Python stdlib sources, no network; the default for a new cache), a local "
                        "folder of .txt/.jsonl/.parquet files, an https URL template with {index}, or "
                        f"'download' for {DEFAULT_URL_TEMPLATE}; default: the existing cache's source")
    p.add_argument("--num-shards", type=int, default=None,
                   help=f"shards to download, the last one for validation (default {DEFAULT_NUM_SHARDS})")
    p.add_argument("--profile", choices=["auto", "full", "small"], default="auto",
                   help=f"size profile; auto = full on a CUDA/ROCm GPU with >= {FULL_PROFILE_MIN_GPU_GB} GB, else small")
    p.add_argument("--cache", default=None, help="cache folder (default $AUTORESEARCH_CACHE or ~/.cache/autoresearch)")
    p.add_argument("--max-mb", type=float, default=None,
                   help=f"cap on the text taken from the embedded corpus (default {EMBEDDED_MAX_MB:g}) or a local folder")
    return p


def main(argv: list[str] | None = None) -> int:
    """`python trainer/prepare.py ...` and `autoresearch prepare ...`. Returns an exit status."""
    args = _parser().parse_args(argv)
    try:
        prepare(source=args.source, profile=args.profile, cache=args.cache,
                max_mb=args.max_mb, num_shards=args.num_shards)
    except PrepareError as exc:
        print(f"prepare: error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("prepare: interrupted; run it again to resume", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
