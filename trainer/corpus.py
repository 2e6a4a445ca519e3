"""How the harness builds its cache: corpus sources, downloads, the tokenizer, token files, stages.

The internals behind `prepare.prepare()`, kept beside prepare.py (which stays the trainer's one
import and re-exports what callers use). Part of the read-only harness: the supervisor hashes this
file with prepare.py before every trial and restores both if either changed. It imports nothing
from prepare.py, so prepare.py can import it however it was itself imported (a script, a module
beside train.py, or `trainer.prepare`).

Read it top to bottom:

1. errors, the fixed text constants and small file helpers (every file is written under a
   temporary name, then renamed);
2. sources of text: the embedded corpus (Python standard library sources), a local folder, and
   resumable HTTPS downloads, written into parquet shards;
3. tokenizer training and tokenization into flat uint16 token files;
4. stages: each records its inputs and outputs, so an interrupted prepare resumes.
"""

from __future__ import annotations

import contextlib
import hashlib
import http.client
import json
import os
import shutil
import sys
import sysconfig
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path

import numpy as np

# ---------------------------------------------------------------------------------------------
# 1. Errors, constants, file helpers
# ---------------------------------------------------------------------------------------------

BOS_TOKEN = "<|bos|>"  # the only special token: starts every document, separates them in the stream
VAL_BUCKETS = 16  # a document is validation when a hash of its name falls in 16 of 256 buckets (1/16)
SHARD_BYTES = 64 * 2**20  # text per parquet shard we write
TOKENIZER_MAX_CHARS = 250_000_000  # text used to train the tokenizer, at most
TOKENIZER_DOC_CHARS = 10_000  # characters of one document used to train the tokenizer, at most


class PrepareError(RuntimeError):
    """A problem the person can fix (bad arguments, missing data, network failure): message, no traceback."""


class DownloadError(PrepareError):
    """A shard could not be downloaded or failed its size/checksum check."""


def _tmp_path(path: Path) -> Path:
    return path.with_name(f".{path.name}.tmp-{os.getpid()}")


def atomic_write_bytes(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = _tmp_path(path)
    with open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def write_json(path: Path, obj: dict) -> None:
    atomic_write_bytes(path, (json.dumps(obj, indent=2, sort_keys=True) + "\n").encode())


def read_json(path: Path) -> dict | None:
    try:
        value = json.loads(path.read_text())
        return value if isinstance(value, dict) else None
    except (OSError, ValueError):
        return None


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(4 * 2**20), b""):
            h.update(block)
    return h.hexdigest()


def _describe_files(cache: Path, names: Iterable[str]) -> dict[str, dict]:
    return {n: {"size": (cache / n).stat().st_size, "sha256": sha256_file(cache / n)} for n in names}


def file_problems(cache: Path, files: dict[str, dict], deep: bool = True) -> list[str]:
    problems = []
    for name, info in files.items():
        path = cache / name
        if not path.is_file():
            problems.append(f"{name} is missing")
        elif path.stat().st_size != info["size"]:
            problems.append(f"{name} has {path.stat().st_size} bytes, expected {info['size']}")
        elif deep and sha256_file(path) != info["sha256"]:
            problems.append(f"{name} does not match its sha256")
    return problems


def digest(files: dict[str, dict]) -> str:
    """One hash standing for a set of files (their names and sha256s): a later step's input."""
    return hashlib.sha256(json.dumps(files, sort_keys=True).encode()).hexdigest()


def _bucket(key: str, salt: str) -> int:
    return hashlib.sha256(f"{salt}:{key}".encode()).digest()[0]


def _is_val(key: str) -> bool:
    return _bucket(key, "split") < VAL_BUCKETS


# --- progress: rich bars on a terminal, a few plain lines otherwise ---


def log(msg: str) -> None:
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


# ---------------------------------------------------------------------------------------------
# 2. Sources of text
# ---------------------------------------------------------------------------------------------


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
    log(f"corpus: {train.count} train and {val.count} validation documents, {nbytes / 1e6:.1f} MB")
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
    url: str, dest: str | Path, expected_sha256: str | None, *, retries: int, backoff: float, timeout: float
) -> Path:
    """Download url to dest through dest + ".part", resuming a partial file with an HTTP Range request.

    The result is checked against the size the server announced (Content-Length / Content-Range)
    and against a sha256 when one is known: `expected_sha256`, or the `X-Linked-Etag` header that
    Hugging Face sends for large files. Network errors, HTTP 5xx/429 and short reads are retried
    with exponential backoff (`backoff` seconds before the first retry); other HTTP errors fail at
    once. Raises DownloadError. prepare.download_file supplies the harness's retry settings.
    """
    dest = Path(dest)
    part = dest.with_name(dest.name + ".part")
    delay = backoff
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
            if sha and sha256_file(part) != sha.lower():
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
            log(f"download of {url} failed ({last_error}); retry {attempt}/{retries - 1} in {delay:.1f} s")
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


def _build_text_from_download(cache: Path, url_template: str, num_shards: int,
                              download: Callable[[str, Path], Path]) -> dict:
    """Download shards 0..num_shards-1 (the last is validation) with `download(url, dest)`. Keeps
    completed shards and .part files from an interrupted run of the same URL template; resumes the rest."""
    data = cache / "data"
    marker = data / ".download.json"
    if (read_json(marker) or {}).get("url_template") != url_template:
        shutil.rmtree(data, ignore_errors=True)
        data.mkdir(parents=True)
        write_json(marker, {"url_template": url_template})
    names = []
    for index in range(num_shards):
        url = url_template.format(index=index)
        dest = data / f"shard_{index:05d}.parquet"
        if dest.is_file() and _parquet_has_text(dest):
            log(f"shard {index} already downloaded")
        else:
            dest.unlink(missing_ok=True)
            log(f"downloading shard {index + 1}/{num_shards}: {url}")
            download(url, dest)
            if not _parquet_has_text(dest):
                dest.unlink()
                raise DownloadError(f"{url} is not a parquet file with a column 'text'")
        names.append(f"data/{dest.name}")
    return {"train_shards": names[:-1], "val_shards": names[-1:]}


def build_text(cache: Path, spec: dict, download: Callable[[str, Path], Path]) -> dict:
    """The text shards of a source spec (see prepare._source_spec): {"train_shards", "val_shards", "files"}."""
    if spec["kind"] == "embedded":
        shards = _build_text_from_documents(cache, _embedded_documents(spec["max_mb"]))
    elif spec["kind"] == "local":
        shards = _build_text_from_documents(cache, _local_documents(Path(spec["path"]), spec["max_mb"]))
    else:
        shards = _build_text_from_download(cache, spec["url_template"], spec["num_shards"], download)
    return {**shards, "files": shards["train_shards"] + shards["val_shards"]}


# ---------------------------------------------------------------------------------------------
# 3. Tokenizer and token streams
# ---------------------------------------------------------------------------------------------


def _iter_shard_texts(cache: Path, shards: list[str]) -> Iterator[list[str]]:
    """Batches of document texts from parquet shards, in order."""
    import pyarrow.parquet as pq

    for name in shards:
        for batch in pq.ParquetFile(cache / name).iter_batches(columns=["text"], batch_size=1024):
            yield [t for t in batch.column(0).to_pylist() if isinstance(t, str) and t]


def _count_rows(cache: Path, shards: list[str]) -> int:
    import pyarrow.parquet as pq

    return sum(pq.ParquetFile(cache / name).metadata.num_rows for name in shards)


def train_tokenizer(cache: Path, train_shards: list[str], vocab_size: int) -> list[str]:
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
    log(f"training a byte-level BPE tokenizer (vocab {vocab_size})")
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
    log(f"tokenizer: {tok.get_vocab_size()} tokens")
    return ["tokenizer.json", "token_bytes.npy"]


# --- token streams ---


def tokenize_split(cache: Path, shards: list[str], out_name: str, max_tokens: int | None = None) -> int:
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
    log(f"{out_name}: {count:,} tokens")
    return count


def tokenize_held_out(cache: Path, shards: list[str], out_name: str, after_tokens: int, max_tokens: int) -> int:
    """The documents of `shards` that begin at or after position `after_tokens` of the stream tokenize_split
    makes of them, as one stream of the same form (BOS before each document), cut at `max_tokens`.

    The audit split: the validation text that no validation row scores (evaluation reads only the stream's first
    eval_tokens + 1 tokens). Whole documents only, so no document is half scored and half audited; the same
    tokenizer and the same order as val.bin, so the validation split and its audit come from one distribution.
    Returns the token count (0 when every document touches the scored part)."""
    from tokenizers import Tokenizer

    tok = Tokenizer.from_file(str(cache / "tokenizer.json"))
    tok.encode_special_tokens = True
    bos = tok.token_to_id(BOS_TOKEN)
    path = cache / out_name
    tmp = _tmp_path(path)
    position, count = 0, 0
    with open(tmp, "wb") as f:
        for batch in _iter_shard_texts(cache, shards):
            pieces = []
            for enc in tok.encode_batch(batch):
                if position >= after_tokens and count < max_tokens:
                    doc = np.concatenate([np.array([bos], dtype=np.uint16), np.asarray(enc.ids, dtype=np.uint16)])
                    doc = doc[: max_tokens - count]
                    pieces.append(doc)
                    count += len(doc)
                position += 1 + len(enc.ids)
            if pieces:
                f.write(np.concatenate(pieces).tobytes())
            if count >= max_tokens:
                break
    os.replace(tmp, path)
    log(f"{out_name}: {count:,} tokens (validation documents after the {after_tokens:,} tokens evaluation reads)")
    return count


# ---------------------------------------------------------------------------------------------
# 4. Stages, and one prepare at a time
# ---------------------------------------------------------------------------------------------


def run_stage(cache: Path, name: str, params: dict, build: Callable[[], dict]) -> dict:
    """Run `build` unless this stage's record says it already ran with these params and its output
    files are intact. `build` returns {"files": [names], ...extra}; the record keeps sizes and sha256s."""
    record_path = cache / f".stage-{name}.json"
    record = read_json(record_path)
    if record:
        if record.get("params") != params:
            why = "its inputs changed"
        else:
            problems = file_problems(cache, record.get("files", {}))
            if not problems:
                log(f"{name}: up to date, kept")
                return record
            why = "; ".join(problems)
        log(f"{name}: rebuilding ({why})")
    record_path.unlink(missing_ok=True)
    result = build()
    record = {"params": params, **result, "files": _describe_files(cache, result["files"])}
    write_json(record_path, record)
    return record


@contextlib.contextmanager
def cache_lock(cache: Path) -> Iterator[None]:
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
            log(f"another prepare is working on {cache}; waiting for it to finish")
            fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def remove_partial_files(cache: Path) -> None:
    """Drop the temporary files an interrupted prepare left behind (they are never resumed from)."""
    for stale in [*cache.glob(".*.tmp-*"), *(cache / "data").glob(".*.tmp-*")]:
        stale.unlink(missing_ok=True)
