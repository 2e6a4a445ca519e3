"""The read-only harness: fixed constants, data preparation, the dataloader and the metric.

The agent edits `train.py` and never this file; the supervisor checks that it is unchanged before
every trial. Everything that makes two trials comparable lives here: the data, the tokenizer, the
sequence length, the validation tokens and the way val_bpb is computed.

Read it top to bottom:

1. constants (time budget, the two size profiles) and the active values read from the cache;
2. what a trial uses: `time_budget()` (or `token_budget()`), `make_dataloader()`, `evaluate_bpb()`;
3. how the cache is built: the source, the stages (text, tokenizer, tokens, audit split) and the manifest;
   the stages' internals (corpus sources, downloads, tokenizer training, token files) are in
   corpus.py beside this file, which is part of the harness too;
4. the command line (`python trainer/prepare.py ...`, also `autoresearch prepare ...` via `main()`).

The cache (`AUTORESEARCH_CACHE`, default `~/.cache/autoresearch`) holds:

    data/*.parquet        the text (column `text`), train shards and validation shard(s)
    tokenizer.json        byte-level BPE (any UTF-8 text round-trips exactly), with a BOS token
    token_bytes.npy       UTF-8 byte length of every token id (0 for special tokens)
    train.bin, val.bin    the token streams, uint16, each document preceded by BOS
    audit.bin             the audit split: validation documents that evaluation never scores (same form);
                          the supervisor scores every keep on it, never to decide, to see whether a night of
                          keeps has overfitted the validation split
    .stage-*.json         what each build step produced, so an interrupted prepare resumes
    manifest.json         written last and atomically: the cache is complete when it exists
"""

from __future__ import annotations

import argparse
import hashlib
import io
import json
import math
import operator
import os
import re
import stat
import sys
import time
import zipfile
from pathlib import Path

import numpy as np
import torch

if __package__:  # imported as trainer.prepare (`autoresearch prepare`, the tests)
    from . import corpus
else:  # run as a script, or imported by train.py: this folder is on sys.path
    import corpus

# ---------------------------------------------------------------------------------------------
# 1. Fixed constants
# ---------------------------------------------------------------------------------------------

TIME_BUDGET = 300  # seconds of training per trial, unless AUTORESEARCH_TIME_BUDGET says otherwise
TOKEN_BUDGET_ENV = "AUTORESEARCH_BUDGET_TOKENS"  # set (by `run --budget-tokens N`): train on N tokens instead

# Two sizes of the same experiment. "full" is the upstream setting for large GPUs; "small" keeps a
# trial meaningful on a CPU, Apple MPS or a small GPU (short sequences, smaller vocabulary, an
# evaluation that takes a couple of seconds on two CPU cores). Chosen once, at prepare time.
PROFILES: dict[str, dict[str, int]] = {
    "full": {"MAX_SEQ_LEN": 2048, "VOCAB_SIZE": 8192, "EVAL_TOKENS": 20 * 2**19},
    "small": {"MAX_SEQ_LEN": 256, "VOCAB_SIZE": 4096, "EVAL_TOKENS": 2**15},
}
DEFAULT_PROFILE = "small"  # the values exposed before any cache exists
FULL_PROFILE_MIN_GPU_GB = 20  # `--profile auto` picks "full" on a CUDA/ROCm GPU with this much memory

# The text constants live with the code that uses them (corpus.py) and are the same values here.
BOS_TOKEN = corpus.BOS_TOKEN  # the only special token: starts every document, separates them in the stream
VAL_BUCKETS = corpus.VAL_BUCKETS  # share of documents (of 256 hash buckets) that are validation
SHARD_BYTES = corpus.SHARD_BYTES  # text per parquet shard we write
TOKENIZER_MAX_CHARS = corpus.TOKENIZER_MAX_CHARS  # text used to train the tokenizer, at most
TOKENIZER_DOC_CHARS = corpus.TOKENIZER_DOC_CHARS  # characters of one document used for the tokenizer, at most
MANIFEST_NAME = "manifest.json"
MANIFEST_VERSION = 1

EMBEDDED_MAX_MB = 12.0  # default size cap of the embedded corpus (Python standard library sources)

DEFAULT_URL_TEMPLATE = (
    "https://huggingface.co/datasets/karpathy/fineweb-edu-100b-shuffle/resolve/main/shard_{index:05d}.parquet"
)
DEFAULT_NUM_SHARDS = 8  # downloaded shards; the last one is the validation shard
DOWNLOAD_RETRIES = 5
DOWNLOAD_BACKOFF = 2.0  # seconds before the first retry, doubled after each failure (capped at 60 s)
DOWNLOAD_TIMEOUT = 60.0  # seconds without data before a connection is given up and retried


PrepareError = corpus.PrepareError  # a problem the person can fix: a message, no traceback
DownloadError = corpus.DownloadError  # a shard could not be downloaded or failed its size/checksum check


class CacheNotReadyError(PrepareError):
    """The cache has not been prepared (or is incomplete)."""


class EvaluationError(PrepareError):
    """A handed-over model gets no val_bpb: the message says why (for the journal and the agent)."""


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


def token_budget() -> int | None:
    """Training tokens for this trial: $AUTORESEARCH_BUDGET_TOKENS, or None when it is unset (the budget is
    then time_budget() seconds).

    Under a token budget the trial trains until it has consumed that many tokens (the last step may cross
    it) and then hands its model over, however long that takes: speed no longer counts, and results compare
    across machines. The supervisor's --budget seconds still cap the trial's wall-clock time. 0 is allowed
    (no training)."""
    raw = os.environ.get(TOKEN_BUDGET_ENV)
    if raw is None or raw.strip() == "":
        return None
    text = raw.strip()
    if not (text.isascii() and text.isdigit()):
        raise ValueError(f"{TOKEN_BUDGET_ENV} must be a whole number of tokens >= 0, got {raw!r}")
    return int(text)


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
    """Manifest plus memory-mapped token streams and the byte-length table (cheap checks only).

    A trial sees a training view of the cache: the validation tokens are not there (the supervisor's
    evaluator reads them, never a trial), and "val" is then None.
    """
    cache = Path(cache) if cache is not None else cache_dir()
    manifest = load_manifest(cache)
    key = (str(cache.resolve()), (cache / MANIFEST_NAME).stat().st_mtime)
    if key in _OPEN_CACHES:
        return _OPEN_CACHES[key]
    val_name = manifest["val_tokens"]
    for name in (manifest["train_tokens"], manifest["token_bytes"], manifest["tokenizer"], val_name):
        path, info = cache / name, manifest["files"].get(name, {})
        if name == val_name and not path.exists():
            continue  # the training view
        if not path.is_file() or path.stat().st_size != info.get("size"):
            raise _not_ready(cache, f"{name} is missing or has the wrong size")
    val_path = cache / val_name
    opened = {
        "manifest": manifest,
        "cache": cache,
        "train": np.memmap(cache / manifest["train_tokens"], dtype=np.uint16, mode="r"),
        "val": np.memmap(val_path, dtype=np.uint16, mode="r") if val_path.is_file() else None,
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
    if split == "audit":  # said plainly: a trial that could train or tune on it would void the audit
        raise ValueError("the audit split is never available to a trial: the supervisor scores kept models on it, "
                         "and never for a decision")
    if split not in ("train", "val"):
        raise ValueError(f"split must be 'train' or 'val', got {split!r}")
    opened = _open_cache(cache)
    if opened[split] is None:
        raise ValueError("the validation split is not available to a trial: the supervisor evaluates the model "
                         "that hand_over(model) leaves for it")
    seq_len = seq_len or opened["manifest"]["max_seq_len"]
    return DataLoader(opened[split], batch_size, seq_len, device, seed, shuffle=(split == "train"))


def _row_batches(tokens: np.ndarray, n_rows: int, T: int, batch_size: int, order: np.ndarray | None = None):
    """(count, idx, targets) for rows of T targets, in `order` (default: as they come); the last batch is padded
    with its last row."""
    window = np.arange(T + 1, dtype=np.int64)
    order = np.arange(n_rows) if order is None else order
    for first in range(0, n_rows, batch_size):
        count = min(batch_size, n_rows - first)
        rows = order[np.arange(first, first + batch_size).clip(max=n_rows - 1)]
        chunk = torch.from_numpy(tokens[rows[:, None] * T + window])
        yield count, chunk[:, :-1], chunk[:, 1:]


def _token_nats(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Cross-entropy in nats of every target under the logits, computed here, never by the model."""
    logprobs = torch.log_softmax(logits.float(), dim=-1)  # summed in float64 by the caller
    return -logprobs.gather(-1, targets.unsqueeze(-1)).squeeze(-1).double()


@torch.no_grad()
def evaluate_bpb(
    logits_fn,
    batch_size: int,
    device: str | torch.device = "cpu",
    cache: str | Path | None = None,
    tokens: np.ndarray | None = None,
    token_bytes: np.ndarray | None = None,
    manifest: dict | None = None,
    order: np.ndarray | None = None,
) -> dict:
    """Bits per byte of a model on the first EVAL_TOKENS validation targets. Lower is better.

        val_bpb = sum of cross-entropy (nats) over targets / (ln 2 * sum of UTF-8 bytes of targets)

    Targets that are special tokens (0 bytes: the BOS between documents) count in neither sum.
    Because the denominator is bytes of text, not tokens, the number does not depend on the
    vocabulary: a tokenizer change is judged on the same scale.

    The validation stream is cut into consecutive rows of MAX_SEQ_LEN targets (each row sees only
    its own context). `logits_fn(idx)` must return logits of shape (B, T, V) with V >= the vocabulary;
    the cross-entropy and the byte counts are computed here, from the logits, never by the model.
    The last batch is padded by repeating a row, so every call has the same shape. Returns a dict:
    val_bpb, nats, bytes, tokens, scored_tokens. Run by the supervisor's evaluator (section 5), on
    validation tokens it has checked; `tokens`/`token_bytes` default to the cache's.
    """
    if tokens is None or token_bytes is None:
        opened = _open_cache(cache)
        tokens = opened["val"] if tokens is None else tokens
        token_bytes = opened["token_bytes"] if token_bytes is None else token_bytes
    manifest = load_manifest(cache) if manifest is None else manifest
    T, eval_tokens, vocab = manifest["max_seq_len"], manifest["eval_tokens"], manifest["vocab_size"]
    n_rows = eval_tokens // T
    if tokens is None:
        raise ValueError("the validation tokens are not in this cache view")
    tokens = np.asarray(tokens[: n_rows * T + 1], dtype=np.int64)
    table = torch.as_tensor(token_bytes, dtype=torch.int64, device=device)
    total_nats, total_bytes, scored = 0.0, 0, 0
    for count, idx, targets in _row_batches(tokens, n_rows, T, batch_size, order):
        idx, targets = idx.to(device), targets.to(device)
        logits = logits_fn(idx)
        if not isinstance(logits, torch.Tensor) or logits.dim() != 3 or tuple(logits.shape[:2]) != (batch_size, T) \
                or logits.shape[2] < vocab:
            shape = tuple(logits.shape) if isinstance(logits, torch.Tensor) else type(logits).__name__
            raise EvaluationError(f"the model must return logits of shape ({batch_size}, {T}, >= {vocab}), got {shape}")
        nats = _token_nats(logits[:count], targets[:count])  # a nan or inf logit makes the total non-finite
        nbytes = table[targets[:count]]
        counted = nbytes > 0
        total_nats += float(torch.where(counted, nats, torch.zeros_like(nats)).sum())
        total_bytes += int(nbytes.sum())
        scored += int(counted.sum())
    if not math.isfinite(total_nats):
        raise EvaluationError("the model's logits are not all finite (nan or inf)")
    return {"val_bpb": total_nats / (math.log(2) * total_bytes), "nats": total_nats, "bytes": total_bytes,
            "tokens": n_rows * T, "scored_tokens": scored, "seq_len": T, "batch_size": batch_size}


# ---------------------------------------------------------------------------------------------
# 2b. The end of a trial: hand the model over
# ---------------------------------------------------------------------------------------------

MODEL_OUT_ENV = "AUTORESEARCH_MODEL_OUT"  # where hand_over() leaves the model; set by the supervisor
EVAL_BATCH_SIZE = 8  # rows per call of the handed-over model (its exported input shape is fixed)


class HandOverError(PrepareError):
    """The model cannot be handed over for evaluation (the message says why and what to change)."""


class _Logits(torch.nn.Module):
    """What the evaluator runs: idx (B, T) -> logits (B, T, V). Nothing else of the model is called."""

    def __init__(self, model: torch.nn.Module):
        super().__init__()
        self.model = model

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        return self.model(idx)


@torch.no_grad()
def hand_over(model: torch.nn.Module) -> Path | None:
    """End a trial: export `model(idx) -> logits` as a program and leave it for the supervisor's evaluator.

    The supervisor computes val_bpb in a separate process that runs this exported program (a graph of
    PyTorch operators, saved with torch.export) on the validation rows, computes the cross-entropy and
    the byte counts itself, and checks that the logits at a position do not change when later tokens
    change. No code of train.py runs there. Call it once, after training, in the autocast context the
    model trains in. Returns the file written, or None when no supervisor asked for one.
    """
    out = os.environ.get(MODEL_OUT_ENV, "").strip()
    if not out:
        return None
    opened = _open_cache()
    T, vocab = opened["manifest"]["max_seq_len"], opened["manifest"]["vocab_size"]
    target = getattr(model, "_orig_mod", model)  # a torch.compile'd model exports as its original module
    first = next(iter(target.parameters()), None)
    device = first.device if first is not None else torch.device("cpu")
    example = torch.randint(0, vocab, (EVAL_BATCH_SIZE, T), dtype=torch.int64, device=device)
    was_training = target.training
    wrapped = _Logits(target).eval()
    try:
        logits = wrapped(example)
        if not isinstance(logits, torch.Tensor) or tuple(logits.shape[:2]) != (EVAL_BATCH_SIZE, T) \
                or logits.dim() != 3 or logits.shape[2] < vocab:
            shape = tuple(logits.shape) if isinstance(logits, torch.Tensor) else type(logits).__name__
            raise HandOverError(f"model(idx) must return logits of shape (batch, {T}, >= {vocab}) for the "
                                f"evaluator, got {shape}")
        try:
            program = torch.export.export(wrapped, (example,), strict=False)
        except Exception as exc:
            first_line = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:300]
            raise HandOverError(
                "the model could not be exported for the supervisor's evaluation (torch.export): "
                f"{type(exc).__name__}: {first_line}. The evaluator runs forward(idx) -> logits as a graph of "
                "PyTorch operators: keep Python control flow in forward independent of tensor values "
                "(no .item(), no if on a tensor), and no custom autograd Functions or Python-side state") from exc
    finally:
        target.train(was_training)
    path = Path(out)
    tmp = path.with_name(f".part-{path.name}")  # torch.export.save wants the .pt2 suffix
    torch.export.save(program, str(tmp))
    os.replace(tmp, path)  # complete when it appears: the supervisor takes the first one
    return path


# ---------------------------------------------------------------------------------------------
# 3. Building the cache (the stages' internals are in corpus.py)
# ---------------------------------------------------------------------------------------------

_log = corpus.log
_sha256_file = corpus.sha256_file  # how the manifest's sha256s are computed (the tests check files with it)


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
    with exponential backoff; other HTTP errors fail at once. Raises DownloadError. The retry
    settings default to DOWNLOAD_RETRIES, DOWNLOAD_BACKOFF and DOWNLOAD_TIMEOUT, read at each call.
    """
    return corpus.download_file(
        url, dest, expected_sha256,
        retries=DOWNLOAD_RETRIES if retries is None else retries,
        backoff=DOWNLOAD_BACKOFF if backoff is None else backoff,
        timeout=DOWNLOAD_TIMEOUT if timeout is None else timeout,
    )


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
    with corpus.cache_lock(cache):
        return _prepare_locked(source, profile, cache, max_mb, num_shards)


def _prepare_locked(source: str | None, profile: str, cache: Path, max_mb: float | None,
                    num_shards: int | None) -> dict:
    profile = _resolve_profile(profile)
    old = corpus.read_json(cache / MANIFEST_NAME) or {}
    if source is None:  # keep what the cache was built from, so a bare `prepare` repairs it
        source, max_mb, num_shards = _previous_source(cache, old, max_mb, num_shards)
    spec = _source_spec(source, max_mb, num_shards)
    if _is_up_to_date(cache, old, profile, spec):
        return load_manifest(cache)
    (cache / MANIFEST_NAME).unlink(missing_ok=True)  # from here until the end the cache is incomplete
    corpus.remove_partial_files(cache)
    sizes = PROFILES[profile]
    text, tokenizer, tokens = _run_stages(cache, spec, sizes)
    eval_tokens = _eval_tokens(sizes, tokens, profile, spec)
    audit = _audit_stage(cache, text, tokenizer, sizes, eval_tokens)
    manifest = _manifest(profile, sizes, spec, eval_tokens, text, tokenizer, tokens, audit,
                         vocab_size=int(np.load(cache / "token_bytes.npy").shape[0]))
    corpus.write_json(cache / MANIFEST_NAME, manifest)  # last: its presence means the cache is complete
    _log(f"done: {cache} ({profile}, vocab {manifest['vocab_size']}, {tokens['num_train_tokens']:,} train "
         f"tokens, eval on {eval_tokens:,} tokens, audit on {manifest[AUDIT_EVAL_KEY]:,})")
    return manifest


def _resolve_profile(profile: str) -> str:
    if profile == "auto":
        profile = detect_profile()
        _log(f"profile auto -> {profile}")
    if profile not in PROFILES:
        raise PrepareError(f"unknown profile {profile!r}; choose auto, full or small")
    return profile


def _previous_source(cache: Path, old: dict, max_mb: float | None,
                     num_shards: int | None) -> tuple[str, float | None, int | None]:
    """The source (and its size options, unless given) the existing cache was built from; "embedded" if none."""
    previous = old.get("source") or (corpus.read_json(cache / ".stage-text.json") or {}).get("params", {})
    kind = previous.get("kind")
    source = {"download": previous.get("url_template"), "local": previous.get("path")}.get(kind) or "embedded"
    if kind in ("embedded", "local") and max_mb is None:
        max_mb = previous.get("max_mb")
    if kind == "download" and num_shards is None:
        num_shards = previous.get("num_shards")
    return source, max_mb, num_shards


def _is_up_to_date(cache: Path, old: dict, profile: str, spec: dict) -> bool:
    """True when the existing manifest matches the request and its files are intact; logs what happens next."""
    if old.get("profile") == profile and old.get("source") == spec:
        problems = corpus.file_problems(cache, old.get("files", {}))
        if not problems and AUDIT_EVAL_KEY not in old:  # prepared before the audit split: only it is built
            _log(f"cache {cache} has no audit split; adding it (the other files are kept as they are)")
            return False
        if not problems:
            _log(f"cache {cache} is up to date ({profile} profile, {_describe_source(spec)}); nothing to do")
            return True
        _log(f"cache {cache} is damaged ({'; '.join(problems)}); repairing")
    elif old:
        if old.get("profile") != profile:
            _log(f"cache was prepared with profile {old.get('profile')!r}; rebuilding for profile {profile!r}")
        else:
            _log(f"cache was prepared from {_describe_source(old.get('source') or {})}; rebuilding from {_describe_source(spec)}")
    else:
        _log(f"preparing {cache} ({profile} profile, {_describe_source(spec)})")
    return False


def _run_stages(cache: Path, spec: dict, sizes: dict[str, int]) -> tuple[dict, dict, dict]:
    """The text, tokenizer and tokens stages; each is redone only when its inputs or outputs changed."""
    text = corpus.run_stage(cache, "text", spec, lambda: corpus.build_text(cache, spec, download=download_file))
    text_digest = corpus.digest(text["files"])
    tokenizer = corpus.run_stage(
        cache, "tokenizer", {"text": text_digest, "vocab_size": sizes["VOCAB_SIZE"]},
        lambda: {"files": corpus.train_tokenizer(cache, text["train_shards"], sizes["VOCAB_SIZE"])},
    )
    # The validation stream is capped, with a margin, at what evaluation can read of it.
    val_cap = 2 * sizes["EVAL_TOKENS"] + sizes["MAX_SEQ_LEN"] + 1

    def build_tokens() -> dict:
        return {
            "num_train_tokens": corpus.tokenize_split(cache, text["train_shards"], "train.bin"),
            "num_val_tokens": corpus.tokenize_split(cache, text["val_shards"], "val.bin", max_tokens=val_cap),
            "files": ["train.bin", "val.bin"],
        }

    tokens = corpus.run_stage(
        cache, "tokens", {"text": text_digest, "tokenizer": corpus.digest(tokenizer["files"]), "val_cap": val_cap},
        build_tokens,
    )
    return text, tokenizer, tokens


def _eval_tokens(sizes: dict[str, int], tokens: dict, profile: str, spec: dict) -> int:
    """The validation tokens evaluate_bpb scores: the profile's, or fewer when the split is small."""
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
    return eval_tokens


AUDIT_EVAL_KEY = "audit_eval_tokens"  # in every manifest since the audit split (0 when the corpus has none)


def _audit_stage(cache: Path, text: dict, tokenizer: dict, sizes: dict[str, int], eval_tokens: int) -> dict:
    """The audit split: validation documents that begin after the last token evaluation scores, as many tokens
    as evaluation scores where the text allows. Built from the existing text and tokenizer, so adding it to an
    older cache changes no other file (train.bin and val.bin, hence every earlier val_bpb, stay as they are)."""
    T = sizes["MAX_SEQ_LEN"]
    # Scoring reads the stream's first eval_tokens + 1 tokens: the audit starts after them and is as long.
    after, wanted = eval_tokens + 1, eval_tokens + 1

    def build() -> dict:
        count = corpus.tokenize_held_out(cache, text["val_shards"], "audit.bin", after_tokens=after, max_tokens=wanted)
        return {"num_audit_tokens": count, "files": ["audit.bin"]}

    audit = corpus.run_stage(cache, "audit", {"text": corpus.digest(text["files"]),
                                              "tokenizer": corpus.digest(tokenizer["files"]),
                                              "after_tokens": after, "max_tokens": wanted}, build)
    audit_eval = max(0, min(eval_tokens, (audit["num_audit_tokens"] - 1) // T * T))
    if audit_eval == 0:
        _log("note: the validation text has no document left after what evaluation scores, so there is no audit "
             "split: prepare more text (a larger --max-mb, or more shards) to have keeps audited")
    elif audit_eval < eval_tokens:
        _log(f"note: the audit split is smaller than what evaluation scores: {audit_eval:,} tokens, not {eval_tokens:,}")
    return {**audit, AUDIT_EVAL_KEY: audit_eval}


def _manifest(profile: str, sizes: dict[str, int], spec: dict, eval_tokens: int, text: dict, tokenizer: dict,
              tokens: dict, audit: dict, vocab_size: int) -> dict:
    source_info = dict(spec)
    if spec["kind"] == "embedded":
        source_info["python"] = sys.version.split()[0]
    return {
        "version": MANIFEST_VERSION,
        "profile": profile,
        "max_seq_len": sizes["MAX_SEQ_LEN"],
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
        # Named only when it holds at least one row: a manifest without audit_tokens has no audit split.
        "audit_tokens": "audit.bin" if audit[AUDIT_EVAL_KEY] else None,
        "num_audit_tokens": audit["num_audit_tokens"],
        AUDIT_EVAL_KEY: audit[AUDIT_EVAL_KEY],
        "files": {**text["files"], **tokenizer["files"], **tokens["files"], **audit["files"]},
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }


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
    return corpus.file_problems(cache, manifest.get("files", {}), deep=deep)


# ---------------------------------------------------------------------------------------------
# 5. The evaluator (run by the supervisor from its own copy of this file, never by a trial)
# ---------------------------------------------------------------------------------------------

# Operators a handed-over program may contain: PyTorch's own. Anything else (a custom op would be code the
# agent registered) is refused before the program runs.
_ALLOWED_NAMESPACES = ("aten", "prims")
_ALLOWED_HIGHER_ORDER = ("wrap_with_autocast", "wrap_with_set_grad_enabled")
# PyTorch's own operators that read files, print, or draw random numbers: an evaluated model is a pure function
# of its input, and a file-reading operator could look for the validation data.
_REFUSED_OPERATORS = ("from_file", "_print", "set_", "rand", "randn", "randint", "randperm", "rand_like", "randn_like",
                      "randint_like", "normal", "normal_", "bernoulli", "bernoulli_", "multinomial", "poisson",
                      "dropout", "native_dropout", "_fused_dropout", "alpha_dropout", "feature_dropout", "uniform_",
                      "exponential_", "geometric_", "cauchy_", "log_normal", "log_normal_", "random_")
CHECK_TOLERANCE = 1e-3  # nats of log-probability: more than this is a dependence, not rounding


def _verified(data: bytes, name: str, expected: dict[str, str] | None, manifest: dict) -> bytes:
    """Bytes the supervisor sent for a cache file, checked here by sha256 just before use, against the manifest
    and against what the run recorded when it began."""
    digest = hashlib.sha256(data).hexdigest()
    wanted = [manifest["files"].get(name, {}).get("sha256")]
    if expected and name not in expected:
        raise EvaluationError(f"the manifest names {name}, not the validation file the run started with: the "
                              "cache was redirected")
    if expected:
        wanted.append(expected[name])
    if any(w is None or w != digest for w in wanted):
        raise EvaluationError(f"{name} does not match its recorded sha256: the validation data changed")
    return data


class _NoPickle:
    """Stands in for the pickle module while a program loads: everything but loading objects."""

    def __init__(self, real):
        self._real = real

    def __getattr__(self, name):
        if name in ("load", "loads", "Unpickler"):
            return _refuse_pickle
        return getattr(self._real, name)


def _refuse_pickle(*args, **kwargs):
    raise EvaluationError("the handed-over model holds pickled Python objects, which the evaluator never loads "
                          "(they could run code): hand over a plain module of tensors and PyTorch operators")


def _load_without_pickle(data: bytes):
    """torch.export.load, with every way it has of unpickling arbitrary objects closed.

    torch.export.load falls back to ``torch.load(weights_only=False)`` and ``pickle.loads`` for some constants:
    on a file the agent wrote, that is code execution in the evaluator. Here torch.load is held to
    weights_only=True (tensors and plain containers only) and the raw unpicklers refuse.
    """
    from torch.export.pt2_archive import _package

    real_load, real_pickle_obj, real_pickle = torch.load, getattr(torch._C, "_pickle_load_obj", None), _package.pickle

    def weights_only_load(f, *args, **kwargs):
        kwargs["weights_only"] = True
        return real_load(f, *args, **kwargs)

    torch.load = weights_only_load
    torch._C._pickle_load_obj = _refuse_pickle
    _package.pickle = _NoPickle(real_pickle)
    try:
        return torch.export.load(io.BytesIO(data))
    finally:
        torch.load, _package.pickle = real_load, real_pickle
        if real_pickle_obj is not None:
            torch._C._pickle_load_obj = real_pickle_obj


# Keys of the serialized program that make torch.export.load evaluate text as Python (sympy.sympify of symbolic
# sizes) or compile it (guards_code), or that hold objects outside PyTorch's tensors: a handed-over program has
# static shapes and none of them, so any of them is refused before torch reads the archive.
_FORBIDDEN_ARCHIVE_KEYS = frozenset({"expr_str", "as_sym_int", "as_sym_ints", "as_sym_float", "as_sym_floats",
                                     "as_sym_bool", "as_sym_bools", "as_custom_obj", "as_operator"})
_MUST_BE_EMPTY = frozenset({"guards_code", "range_constraints", "sym_int_values", "sym_float_values",
                            "sym_bool_values", "custom_obj_values"})
MAX_ARCHIVE_JSON_BYTES = 256 * 2**20


def _check_archive(data: bytes) -> None:
    """Refuse an archive whose JSON asks the loader to run text as code (before torch.export.load sees it)."""
    try:
        archive = zipfile.ZipFile(io.BytesIO(data))
        names = archive.namelist()
    except (zipfile.BadZipFile, ValueError, OSError) as exc:
        raise EvaluationError(f"the handed-over model is not a torch.export archive: {exc}") from exc
    if len(set(names)) != len(names) or any(n.startswith("/") or ".." in n.split("/") for n in names):
        raise EvaluationError("the handed-over model's archive has duplicate or odd entry names")
    for name in names:
        if not name.endswith(".json"):
            continue
        if archive.getinfo(name).file_size > MAX_ARCHIVE_JSON_BYTES:
            raise EvaluationError(f"the handed-over model's {name} is too large to be a program")
        try:
            document = json.loads(archive.read(name))
        except (ValueError, RecursionError, zipfile.BadZipFile) as exc:
            raise EvaluationError(f"the handed-over model's {name} is not valid JSON") from exc
        _check_archive_json(document, name)


def _check_archive_json(document, name: str) -> None:
    stack = [document]
    while stack:
        node = stack.pop()
        if isinstance(node, list):
            stack.extend(node)
            continue
        if not isinstance(node, dict):
            continue
        for key, value in node.items():
            if key in _FORBIDDEN_ARCHIVE_KEYS or (key in _MUST_BE_EMPTY and value) or (key == "use_pickle" and value):
                raise EvaluationError(
                    f"the handed-over model's {name} holds {key!r}: symbolic shapes, guards, custom objects and "
                    "pickled values are not evaluated (hand over a model with static shapes, as hand_over() exports it)")
            stack.append(value)


def _check_signature(program) -> None:
    """A pure function of the token ids: no state it updates between calls, no guards to compile."""
    signature = program.graph_signature
    if signature.buffers_to_mutate or signature.user_inputs_to_mutate or getattr(program, "_guards_code", None):
        raise EvaluationError("the handed-over model updates its own buffers or inputs when it runs: the evaluated "
                              "model must be a pure function of the token ids (no state kept between calls)")
    kinds = {str(getattr(spec.kind, "name", spec.kind)) for spec in signature.output_specs}
    if kinds != {"USER_OUTPUT"}:
        raise EvaluationError(f"the handed-over model has outputs of kinds {sorted(kinds)}: only its logits may be")


def _load_program(path: Path):
    """The handed-over program, refused unless it is a plain file of PyTorch's own operators."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_NOFOLLOW", 0))
    except OSError as exc:
        raise EvaluationError(f"no model was handed over ({exc.strerror})") from exc
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise EvaluationError("the handed-over model is not a regular file")
        with os.fdopen(os.dup(fd), "rb") as handle:
            data = handle.read()
    finally:
        os.close(fd)
    _check_archive(data)
    try:
        program = _load_without_pickle(data)
    except EvaluationError:
        raise
    except Exception as exc:
        raise EvaluationError(f"the handed-over model could not be loaded: {type(exc).__name__}: "
                              f"{(str(exc).splitlines() or [''])[0][:200]}") from exc
    graphs = [m.graph for m in program.graph_module.modules() if isinstance(m, torch.fx.GraphModule)]
    for node in (n for graph in graphs for n in graph.nodes):  # subgraphs of higher-order operators too
        if node.op != "call_function":
            continue
        target = node.target
        namespace = getattr(target, "namespace", None)
        name = getattr(target, "__name__", str(target))
        base = name.split(".")[0]
        schema = getattr(target, "_schema", None)
        if schema is not None and schema.is_mutable:
            raise EvaluationError(f"the handed-over model calls {namespace}.{name}, which changes a tensor in place: "
                                  "the evaluated model must be a pure function of the token ids")
        if namespace in _ALLOWED_NAMESPACES and base in _REFUSED_OPERATORS:
            raise EvaluationError(f"the handed-over model calls {namespace}.{name}, which reads files, prints or draws "
                                  "random numbers: the evaluated model must be a pure function of the token ids")
        if namespace in _ALLOWED_NAMESPACES or name in _ALLOWED_HIGHER_ORDER or target is operator.getitem:
            continue
        raise EvaluationError(f"the handed-over model calls {name!s}, which is not one of PyTorch's operators")
    if len(program.graph_signature.user_inputs) != 1:
        raise EvaluationError("the handed-over model must take exactly one input, the token ids")
    _check_signature(program)
    return program, hashlib.sha256(data).hexdigest()


def _max_deviation(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a.float() - b.float()).abs().max()) if a.numel() else 0.0


class _CheckedModel:
    """The handed-over model as the metric calls it, checked on the way for causality and repeatability.

    The metric's rows go in a random order (no row's successor, whose first token is its last target, sits
    beside it on purpose). Before the pass, random rows and a random cut in each are drawn, from 0 to the last
    position (a trial cannot predict them); their logits are kept as the pass computes them, with the first
    batch's. After the pass (:meth:`verify`), one probe batch holds those rows with every token after the cut
    replaced by another real row's, in reversed order: the logits up to and including the cut must not move,
    or the model looks ahead (or at the other rows of its batch: a cut at the last position changes nothing
    of the row itself). The first batch is run again and must give the same logits, or the model keeps state
    between calls. Two extra calls in all.
    """

    def __init__(self, module, tokens: np.ndarray, n_rows: int, T: int, batch_size: int, rng: np.random.Generator):
        self.module, self.tokens, self.T, self.batch_size = module, tokens, T, batch_size
        self.order = rng.permutation(n_rows)
        count = min(batch_size, n_rows)
        self.rows = rng.choice(n_rows, size=count, replace=False)
        self.donors = (self.rows + rng.integers(1, max(2, n_rows), size=count)) % n_rows
        self.cuts = rng.integers(0, T, size=count)
        self.cuts[rng.integers(count)] = T - 1  # one row compared whole: only the other rows of its batch change
        self.position = {int(row): i for i, row in enumerate(self.rows)}
        self.kept: dict[int, torch.Tensor] = {}
        self.first: tuple[torch.Tensor, torch.Tensor] | None = None
        self.calls = 0

    def __call__(self, idx: torch.Tensor) -> torch.Tensor:
        logits = self.module(idx)
        if self.first is None:
            self.first = (idx.clone(), logits.detach().float().cpu())
        first = self.calls * self.batch_size
        batch_rows = self.order[first: first + idx.shape[0]]
        for slot, row in enumerate(batch_rows):
            i = self.position.get(int(row))
            if i is not None and i not in self.kept and isinstance(logits, torch.Tensor):
                self.kept[i] = logits[slot, : self.cuts[i] + 1].detach().float().cpu()
        self.calls += 1
        return logits

    def _window(self, rows: np.ndarray) -> torch.Tensor:
        return torch.from_numpy(self.tokens[rows[:, None] * self.T + np.arange(self.T, dtype=np.int64)])

    def verify(self, device) -> dict:
        idx, donor = self._window(self.rows), self._window(self.donors)
        for i, cut in enumerate(self.cuts):
            idx[i, cut + 1:] = donor[i, cut + 1:]
        padded = torch.cat([idx.flip(0), idx[:1].expand(self.batch_size - len(idx), -1)]) if len(idx) < self.batch_size \
            else idx.flip(0)
        probe = torch.log_softmax(self.module(padded.to(device))[: len(idx)].flip(0).detach().float().cpu(), -1)
        # Compared as log-probabilities, in nats: what the metric sees (a constant added to every logit, however
        # large, cannot hide a dependence).
        causal = max((_max_deviation(torch.log_softmax(self.kept[i], -1), probe[i, : cut + 1])
                      for i, cut in enumerate(self.cuts) if i in self.kept), default=0.0)
        assert self.first is not None
        again = torch.log_softmax(self.module(self.first[0]).detach().float().cpu(), -1)
        repeat = _max_deviation(torch.log_softmax(self.first[1], -1), again)
        # Repeatability first: a model that keeps state moves every probe, and would read as looking ahead.
        if repeat > CHECK_TOLERANCE:
            raise EvaluationError(f"repeatability check failed: the same rows gave log-probabilities {repeat:.3g} nats apart on a "
                                  "second call. The model keeps state between calls")
        if causal > CHECK_TOLERANCE:
            raise EvaluationError(
                f"causality check failed: the log-probabilities at a position changed by {causal:.3g} nats when "
                "only later tokens, or other rows of the batch, changed. The model looks ahead: check the attention "
                "mask")
        return {"causality_deviation": causal, "repeat_deviation": repeat, "rows_checked": len(self.kept)}


def evaluate_handed_over(model_path: str | Path, device: str, expected: dict[str, str] | None, manifest: dict,
                         val_data: bytes, token_bytes_data: bytes) -> dict:
    """The whole trusted evaluation of one handed-over model: the record the supervisor keeps.

    The validation tokens and the byte table arrive as bytes (over the evaluator's stdin): no file in the
    evaluator's view holds them, so nothing the model does can find them there."""
    started = time.time()
    if not manifest:
        raise EvaluationError("the data cache has no manifest.json: prepare it (autoresearch prepare)")
    if manifest.get("version") != MANIFEST_VERSION:
        raise EvaluationError(f"manifest version {manifest.get('version')!r}, expected {MANIFEST_VERSION}")
    if not all(isinstance(manifest.get(k), str) for k in ("val_tokens", "token_bytes")):
        raise EvaluationError("the data cache's manifest names no validation data: prepare it again")
    val = np.frombuffer(_verified(val_data, manifest["val_tokens"], expected, manifest), dtype=np.uint16)
    table = np.load(io.BytesIO(_verified(token_bytes_data, manifest["token_bytes"], expected, manifest)),
                    allow_pickle=False)
    program, artifact_sha = _load_program(Path(model_path))
    module = program.module()
    T, n_rows = manifest["max_seq_len"], manifest["eval_tokens"] // manifest["max_seq_len"]
    if n_rows < 1 or len(val) < n_rows * T + 1:
        raise EvaluationError("the validation split is smaller than one row")

    rng = np.random.default_rng(int.from_bytes(os.urandom(8), "little"))  # rows a trial cannot predict
    checked = _CheckedModel(module, np.asarray(val[: n_rows * T + 1], dtype=np.int64), n_rows, T, EVAL_BATCH_SIZE, rng)
    with torch.no_grad():
        result = evaluate_bpb(checked, EVAL_BATCH_SIZE, device=device, tokens=val, token_bytes=table, manifest=manifest,
                              order=checked.order)
        checks = checked.verify(device)
    if not math.isfinite(result["val_bpb"]):
        raise EvaluationError(f"val_bpb is {result['val_bpb']}")
    return {**result, **checks, "seconds": round(time.time() - started, 3), "profile": manifest["profile"],
            "vocab_size": manifest["vocab_size"], "artifact_sha256": artifact_sha,
            "val_tokens_sha256": manifest["files"][manifest["val_tokens"]]["sha256"], "evaluator": "exported program",
            "time": time.time()}


def _evaluation_device(requested: str) -> str:
    want = (requested or "auto").strip().lower()
    if want in ("cuda", "rocm") or (want == "auto" and torch.cuda.is_available()):
        return "cuda"
    if want == "mps" or (want == "auto" and torch.backends.mps.is_available()):
        return "mps"
    return "cpu"


def _read_exactly(stream, count: int) -> bytes:
    chunks, left = [], count
    while left > 0:
        chunk = stream.read(min(left, 1 << 20))
        if not chunk:
            raise EvaluationError(f"the job ended {left} bytes early")
        chunks.append(chunk)
        left -= len(chunk)
    return b"".join(chunks)


def serve_evaluation(stream=None) -> int:
    """`prepare.py --serve-evaluation`: started ahead (its imports overlap the trial), then one job on stdin.

    The job is one JSON line, {"model": path, "record": path, "expected": {file: sha256}, "device": ...,
    "manifest": {...}, "val_size": n, "token_bytes_size": m}, followed by the n bytes of the validation tokens
    and the m bytes of the byte table. The record (JSON) is written atomically either way: {"ok": true,
    "val_bpb": ...} or {"ok": false, "error": ...}. EOF instead of a job: no evaluation needed; exit quietly.

    A keep's audit score is the same job on the audit split: the manifest sent names audit.bin as its
    "val_tokens" and audit_eval_tokens as its "eval_tokens", so the same checks hold (the bytes against the
    manifest's sha256 and the run's fingerprint) and the record's val_tokens_sha256 says which split was scored.
    """
    # Ahead of the job, while the trial trains: what torch.export.load imports (seconds on a busy CPU).
    import torch._export.non_strict_utils  # noqa: F401
    import torch._export.serde.serialize  # noqa: F401
    import torch.export.pt2_archive._package  # noqa: F401

    stream = stream or sys.stdin.buffer
    line = stream.readline()
    if not line.strip():
        return 0
    job = json.loads(line)
    try:
        val_data = _read_exactly(stream, int(job["val_size"]))
        table_data = _read_exactly(stream, int(job["token_bytes_size"]))
        record = {"ok": True, **evaluate_handed_over(job["model"], _evaluation_device(job.get("device", "auto")),
                                                     job.get("expected"), job["manifest"], val_data, table_data)}
    except (EvaluationError, PrepareError) as exc:
        record = {"ok": False, "error": str(exc)}
    except Exception as exc:  # a hostile program may make torch raise anything: still a record, not a traceback
        record = {"ok": False, "error": f"the handed-over model failed to run: {type(exc).__name__}: "
                                        f"{(str(exc).splitlines() or [''])[0][:300]}"}
    corpus.atomic_write_bytes(Path(job["record"]), (json.dumps(record, indent=2) + "\n").encode())
    return 0


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
    argv = sys.argv[1:] if argv is None else argv
    if argv == ["--serve-evaluation"]:  # the supervisor's evaluator (section 5); not for people
        return serve_evaluation()
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
