"""trainer/prepare.py: cache building and repair, sources, tokenizer, dataloader, evaluate_bpb.

In-process (the harness is imported as trainer.prepare), on the CPU, on small corpora.
"""

from __future__ import annotations

import hashlib
import io
import json
import math
import random
import re
import shutil
import subprocess
import sys
import sysconfig
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

from trainer import prepare

TRAINER_DIR = Path(__file__).resolve().parent.parent / "trainer"


# ---------------------------------------------------------------------------------------------
# helpers
# ---------------------------------------------------------------------------------------------


def stdlib_texts(count: int, ascii_only: bool = False, skip: int = 0) -> list[str]:
    """Real text to build small corpora from: standard library modules between 2 and 20 kB."""
    root = Path(sysconfig.get_paths()["stdlib"])
    texts = []
    for path in sorted(root.glob("*.py")):
        text = path.read_text(encoding="utf-8", errors="replace")
        if 2_000 <= len(text) <= 20_000 and (text.isascii() or not ascii_only):
            texts.append(text)
    texts = texts[skip:]
    assert len(texts) >= count
    return texts[:count]


def file_hashes(cache: Path) -> dict[str, str]:
    return {n: prepare._sha256_file(cache / n) for n in prepare.load_manifest(cache)["files"]}


def run_main(argv: list[str], capsys) -> tuple[int, str]:
    rc = prepare.main(argv)
    out = capsys.readouterr()
    return rc, out.out + out.err


@pytest.fixture
def cache_copy(prepared_cache, tmp_path) -> Path:
    dest = tmp_path / "cache"
    shutil.copytree(prepared_cache, dest)
    return dest


# ---------------------------------------------------------------------------------------------
# the embedded corpus, no-op reruns, repairs
# ---------------------------------------------------------------------------------------------


def test_embedded_cache_files_and_manifest(prepared_cache):
    m = prepare.load_manifest(prepared_cache)
    assert m["profile"] == "small"
    assert m["max_seq_len"] == prepare.PROFILES["small"]["MAX_SEQ_LEN"]
    assert 256 < m["vocab_size"] <= prepare.PROFILES["small"]["VOCAB_SIZE"]
    assert m["eval_tokens"] % m["max_seq_len"] == 0 and 0 < m["eval_tokens"] <= prepare.PROFILES["small"]["EVAL_TOKENS"]
    assert m["source"] == {"kind": "embedded", "max_mb": 3.0}
    assert m["train_shards"] and m["val_shards"]
    for name in ["tokenizer.json", "token_bytes.npy", "train.bin", "val.bin", *m["train_shards"], *m["val_shards"]]:
        assert name in m["files"], name
        assert (prepared_cache / name).stat().st_size == m["files"][name]["size"]
    assert prepare.verify_cache(prepared_cache) == []
    # token files are uint16 streams that start with BOS; the text is about 3 MB
    train = np.fromfile(prepared_cache / "train.bin", dtype=np.uint16)
    assert len(train) == m["num_train_tokens"] and train[0] == m["bos_id"] and train.max() < m["vocab_size"]
    text_bytes = sum(len(t.encode()) for s in m["train_shards"] for t in pq.read_table(prepared_cache / s)["text"].to_pylist())
    assert 2e6 < text_bytes < 3.5e6
    # no temporary files left behind
    assert not list(prepared_cache.rglob("*.tmp-*")) and not list(prepared_cache.rglob("*.part"))


def test_second_run_is_a_noop(prepared_cache, capsys):
    before = {p: p.stat().st_mtime_ns for p in prepared_cache.rglob("*") if p.is_file()}
    rc, out = run_main(["--source", "embedded", "--profile", "small", "--max-mb", "3", "--cache", str(prepared_cache)],
                       capsys)
    assert rc == 0
    assert "nothing to do" in out
    assert {p: p.stat().st_mtime_ns for p in prepared_cache.rglob("*") if p.is_file()} == before
    # a bare rerun keeps the cached source instead of switching to the default cap
    rc, out = run_main(["--profile", "small", "--cache", str(prepared_cache)], capsys)
    assert rc == 0 and "nothing to do" in out


def test_missing_manifest_is_rebuilt_without_redoing_work(cache_copy, capsys):
    hashes = file_hashes(cache_copy)
    (cache_copy / "manifest.json").unlink()
    with pytest.raises(prepare.CacheNotReadyError, match="run `autoresearch prepare` first"):
        prepare.make_dataloader("train", 2, cache=cache_copy)
    rc, out = run_main(["--profile", "small", "--cache", str(cache_copy)], capsys)
    assert rc == 0
    assert out.count("up to date, kept") == 4  # text, tokenizer, tokens and the audit split were all intact
    assert file_hashes(cache_copy) == hashes


def test_truncated_token_file_is_repaired(cache_copy, capsys):
    hashes = file_hashes(cache_copy)
    path = cache_copy / "train.bin"
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    assert prepare.verify_cache(cache_copy, deep=False)  # detected without hashing
    rc, out = run_main(["--profile", "small", "--cache", str(cache_copy)], capsys)
    assert rc == 0
    assert "damaged" in out and "tokens: rebuilding" in out
    assert "tokenizer: up to date, kept" in out
    assert file_hashes(cache_copy) == hashes  # tokenization is deterministic
    assert prepare.verify_cache(cache_copy) == []


def test_corrupted_shard_and_missing_manifest_are_repaired(cache_copy, capsys):
    hashes = file_hashes(cache_copy)
    m = prepare.load_manifest(cache_copy)
    shard = cache_copy / m["val_shards"][0]
    raw = bytearray(shard.read_bytes())
    raw[len(raw) // 2] ^= 0xFF  # same size, different content: only the sha256 notices
    shard.write_bytes(bytes(raw))
    (cache_copy / "manifest.json").unlink()
    (cache_copy / "token_bytes.npy").unlink()
    rc, out = run_main(["--profile", "small", "--cache", str(cache_copy)], capsys)
    assert rc == 0
    assert "text: rebuilding (data/val_00000.parquet does not match its sha256)" in out
    assert prepare.verify_cache(cache_copy) == []
    assert file_hashes(cache_copy) == hashes  # the corpus and everything after it came out the same


def test_other_profile_rebuilds(cache_copy, capsys):
    rc, out = run_main(["--profile", "full", "--cache", str(cache_copy)], capsys)
    assert rc == 0
    assert "prepared with profile 'small'; rebuilding for profile 'full'" in out
    assert "text: up to date, kept" in out  # the corpus does not depend on the profile
    m = prepare.load_manifest(cache_copy)
    assert m["profile"] == "full" and m["max_seq_len"] == 2048
    assert prepare.PROFILES["small"]["VOCAB_SIZE"] < m["vocab_size"] <= prepare.PROFILES["full"]["VOCAB_SIZE"]


def test_cli_runs_as_a_script_and_reports_errors(tmp_path):
    proc = subprocess.run([sys.executable, str(TRAINER_DIR / "prepare.py"), "--source", str(tmp_path / "nope"),
                           "--cache", str(tmp_path / "c")], capture_output=True, text=True)
    assert proc.returncode == 1
    assert "prepare: error:" in proc.stderr and "existing folder" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_time_budget(monkeypatch):
    monkeypatch.delenv("AUTORESEARCH_TIME_BUDGET", raising=False)
    assert prepare.time_budget() == prepare.TIME_BUDGET == 300
    monkeypatch.setenv("AUTORESEARCH_TIME_BUDGET", "12.5")
    assert prepare.time_budget() == 12.5
    monkeypatch.setenv("AUTORESEARCH_TIME_BUDGET", "0")
    assert prepare.time_budget() == 0.0
    for bad in ["abc", "-1", "nan", "inf", "5s"]:
        monkeypatch.setenv("AUTORESEARCH_TIME_BUDGET", bad)
        with pytest.raises(ValueError, match="AUTORESEARCH_TIME_BUDGET must be a number of seconds"):
            prepare.time_budget()


# ---------------------------------------------------------------------------------------------
# a local folder source
# ---------------------------------------------------------------------------------------------


def test_local_folder_source(tmp_path, capsys):
    texts = stdlib_texts(36)
    folder = tmp_path / "corpus"
    (folder / "sub").mkdir(parents=True)
    for i, text in enumerate(texts[:12]):
        (folder / "sub" / f"doc{i:02d}.txt").write_text(text, encoding="utf-8")
    with open(folder / "docs.jsonl", "w", encoding="utf-8") as f:
        for text in texts[12:24]:
            f.write(json.dumps({"text": text, "id": 1}) + "\n")
    pq.write_table(pa.table({"text": texts[24:], "n": list(range(12))}), folder / "docs.parquet")
    (folder / "ignored.csv").write_text("text\nnot a document\n")
    (folder / ".hidden").mkdir()
    (folder / ".hidden" / "x.txt").write_text("hidden, not a document")

    cache = tmp_path / "cache"
    rc, out = run_main(["--source", str(folder), "--profile", "small", "--cache", str(cache)], capsys)
    assert rc == 0, out
    m = prepare.load_manifest(cache)
    assert m["source"]["kind"] == "local" and m["source"]["path"] == str(folder.resolve())

    train_docs = [t for s in m["train_shards"] for t in pq.read_table(cache / s)["text"].to_pylist()]
    val_docs = [t for s in m["val_shards"] for t in pq.read_table(cache / s)["text"].to_pylist()]
    assert train_docs and val_docs
    assert sorted(train_docs + val_docs) == sorted(texts)  # every document from all three formats, once

    # the token stream decodes back to the documents, BOS before each one
    tok = prepare.get_tokenizer(cache)
    ids = np.fromfile(cache / "val.bin", dtype=np.uint16).tolist()
    assert ids[0] == m["bos_id"]
    docs, current = [], []
    for i in ids[1:] + [m["bos_id"]]:
        if i == m["bos_id"]:
            docs.append(tok.decode(current, skip_special_tokens=False))
            current = []
        else:
            current.append(i)
    assert docs == val_docs

    # a second run is a no-op; a bad jsonl line is a clear error
    rc, out = run_main(["--source", str(folder), "--profile", "small", "--cache", str(cache)], capsys)
    assert rc == 0 and "nothing to do" in out
    (folder / "bad.jsonl").write_text('{"text": "fine"}\n{"title": "no text"}\n')
    rc, out = run_main(["--source", str(folder), "--profile", "small", "--cache", str(tmp_path / "c2")], capsys)
    assert rc == 1 and "bad.jsonl:2" in out and "'text'" in out


# ---------------------------------------------------------------------------------------------
# the download source, against a loopback HTTP server
# ---------------------------------------------------------------------------------------------


class ShardServer:
    """Serves in-memory files over HTTP on 127.0.0.1, with Range support and injectable faults."""

    def __init__(self, files: dict[str, bytes]):
        self.files = files
        self.requests: list[tuple[str, str | None]] = []
        self.cut_once: set[str] = set()  # send half the body, then close (once per name)
        self.lie_length: set[str] = set()  # announce 100 more bytes than there are
        self.etags: dict[str, str] = {}  # X-Linked-Etag header to send
        self.redirect_etags: dict[str, str] = {}  # redirect "r/NAME" to "NAME", with this X-Linked-Etag
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):
                pass

            def do_GET(self):
                name = self.path.lstrip("/")
                rng = self.headers.get("Range")
                server.requests.append((name, rng))
                if name.startswith("r/") and name[2:] in server.redirect_etags:
                    self.send_response(302)
                    self.send_header("Location", "/" + name[2:])
                    self.send_header("X-Linked-Etag", f'"{server.redirect_etags[name[2:]]}"')
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                data = server.files.get(name)
                if data is None:
                    self.send_response(404)
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                total = len(data) + (100 if name in server.lie_length else 0)
                start = int(re.fullmatch(r"bytes=(\d+)-", rng).group(1)) if rng else 0
                if start >= total:
                    self.send_response(416)
                    self.send_header("Content-Range", f"bytes */{total}")
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                body = data[start:]
                if name in server.cut_once:
                    server.cut_once.discard(name)
                    body = body[: len(body) // 2]
                self.send_response(206 if rng else 200)
                self.send_header("Content-Length", str(total - start))
                if rng:
                    self.send_header("Content-Range", f"bytes {start}-{total - 1}/{total}")
                if name in server.etags:
                    self.send_header("X-Linked-Etag", f'"{server.etags[name]}"')
                self.send_header("Connection", "close")
                self.end_headers()
                self.wfile.write(body)
                self.wfile.flush()
                self.close_connection = True

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()
        self.url_template = f"http://127.0.0.1:{self.httpd.server_address[1]}/shard_{{index:05d}}.parquet"

    def close(self):
        self.httpd.shutdown()
        self.httpd.server_close()


def parquet_bytes(texts: list[str], tmp_path: Path, name: str) -> bytes:
    path = tmp_path / name
    pq.write_table(pa.table({"text": texts}), path)
    return path.read_bytes()


@pytest.fixture
def shard_server(tmp_path, monkeypatch):
    """Three parquet shards (two train, one validation) of real text, served on loopback."""
    monkeypatch.setattr(prepare, "DOWNLOAD_BACKOFF", 0.0)
    texts = stdlib_texts(30)
    files = {f"shard_{i:05d}.parquet": parquet_bytes(texts[i * 10:(i + 1) * 10], tmp_path, f"s{i}.parquet")
             for i in range(3)}
    server = ShardServer(files)
    yield server
    server.close()


def test_download_source(shard_server, tmp_path, capsys):
    name1 = "shard_00001.parquet"
    shard_server.etags[name1] = hashlib.sha256(shard_server.files[name1]).hexdigest()
    cache = tmp_path / "cache"
    argv = ["--source", shard_server.url_template, "--num-shards", "3", "--profile", "small", "--cache", str(cache)]
    rc, out = run_main(argv, capsys)
    assert rc == 0, out
    m = prepare.load_manifest(cache)
    assert m["source"] == {"kind": "download", "url_template": shard_server.url_template, "num_shards": 3}
    assert m["train_shards"] == ["data/shard_00000.parquet", "data/shard_00001.parquet"]
    assert m["val_shards"] == ["data/shard_00002.parquet"]
    for i in range(3):
        name = f"shard_{i:05d}.parquet"
        assert (cache / "data" / name).read_bytes() == shard_server.files[name]
    assert len(shard_server.requests) == 3
    rc, out = run_main(argv, capsys)
    assert rc == 0 and "nothing to do" in out and len(shard_server.requests) == 3


def test_download_resumes_a_partial_file_with_range(shard_server, tmp_path, monkeypatch, capsys):
    cache = tmp_path / "cache"
    argv = ["--source", shard_server.url_template, "--num-shards", "3", "--profile", "small", "--cache", str(cache)]
    name = "shard_00001.parquet"
    size = len(shard_server.files[name])
    shard_server.cut_once.add(name)
    monkeypatch.setattr(prepare, "DOWNLOAD_RETRIES", 1)
    rc, out = run_main(argv, capsys)  # the connection drops half way; no retries allowed: fails
    assert rc == 1
    assert f"received {size // 2} of the {size} bytes" in out
    part = cache / "data" / (name + ".part")
    assert part.stat().st_size == size // 2
    assert not (cache / "manifest.json").exists()

    monkeypatch.setattr(prepare, "DOWNLOAD_RETRIES", 3)
    rc, out = run_main(argv, capsys)  # resumes where it stopped
    assert rc == 0, out
    assert (name, f"bytes={size // 2}-") in shard_server.requests
    assert (cache / "data" / name).read_bytes() == shard_server.files[name]
    assert not part.exists()
    assert [r for r in shard_server.requests if r[0] == "shard_00000.parquet"] == [("shard_00000.parquet", None)]

    # within one run, a dropped connection is retried and resumed too
    shard_server.requests.clear()
    path = prepare.download_file(shard_server.url_template.format(index=2), tmp_path / "x.parquet")
    assert path.read_bytes() == shard_server.files["shard_00002.parquet"]
    shard_server.cut_once.add("shard_00002.parquet")
    prepare.download_file(shard_server.url_template.format(index=2), tmp_path / "y.parquet")
    assert (tmp_path / "y.parquet").read_bytes() == shard_server.files["shard_00002.parquet"]
    assert shard_server.requests[-1][1] is not None  # the second request was a Range request


def test_download_size_mismatch_is_an_error(shard_server, tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(prepare, "DOWNLOAD_RETRIES", 2)
    shard_server.lie_length.add("shard_00002.parquet")
    size = len(shard_server.files["shard_00002.parquet"])
    rc, out = run_main(["--source", shard_server.url_template, "--num-shards", "3", "--cache", str(tmp_path / "c")],
                       capsys)
    assert rc == 1
    assert "could not download" in out and "shard_00002.parquet" in out
    assert f"received {size} of the {size + 100} bytes" in out
    assert not (tmp_path / "c" / "data" / "shard_00002.parquet").exists()


def test_download_checksum_mismatch_and_http_errors(shard_server, tmp_path):
    shard_server.etags["shard_00000.parquet"] = "0" * 64
    with pytest.raises(prepare.DownloadError, match="sha256 mismatch"):
        prepare.download_file(shard_server.url_template.format(index=0), tmp_path / "a.parquet")
    assert not (tmp_path / "a.parquet").exists() and not (tmp_path / "a.parquet.part").exists()
    # a checksum announced on a redirect (as Hugging Face does for large files) is checked too
    base = shard_server.url_template.rsplit("/", 1)[0]
    good = hashlib.sha256(shard_server.files["shard_00001.parquet"]).hexdigest()
    shard_server.redirect_etags = {"shard_00001.parquet": good, "shard_00002.parquet": "f" * 64}
    prepare.download_file(f"{base}/r/shard_00001.parquet", tmp_path / "r1.parquet")
    assert (tmp_path / "r1.parquet").read_bytes() == shard_server.files["shard_00001.parquet"]
    with pytest.raises(prepare.DownloadError, match="sha256 mismatch"):
        prepare.download_file(f"{base}/r/shard_00002.parquet", tmp_path / "r2.parquet")
    n = len(shard_server.requests)
    with pytest.raises(prepare.DownloadError, match="HTTP 404"):
        prepare.download_file(shard_server.url_template.format(index=7), tmp_path / "b.parquet")
    assert len(shard_server.requests) == n + 1  # not retried
    with pytest.raises(prepare.PrepareError, match="at least 2"):
        prepare.prepare(source=shard_server.url_template, num_shards=1, cache=tmp_path / "c", profile="small")


# ---------------------------------------------------------------------------------------------
# tokenizer, dataloader, evaluate_bpb
# ---------------------------------------------------------------------------------------------


def test_tokenizer_round_trips_arbitrary_unicode(prepared_cache):
    tok = prepare.get_tokenizer(prepared_cache)
    token_bytes = np.load(prepared_cache / "token_bytes.npy")
    rng = random.Random(0)
    ranges = [(0x20, 0x7E), (0x00, 0x1F), (0xA0, 0x24F), (0x370, 0x3FF), (0x400, 0x4FF), (0x590, 0x6FF),
              (0x900, 0x97F), (0x3040, 0x30FF), (0x4E00, 0x9FFF), (0xAC00, 0xD7A3), (0xE000, 0xF8FF),
              (0x1F300, 0x1FAFF), (0x10000, 0x10FFFF)]
    samples = [
        "",
        "def f(x):\n\treturn x ** 2  # ok\r\n",
        "naïve café, Ελληνικά, русский, 日本語, 한국어, עברית, العربية, हिन्दी",
        "emoji 👩‍👩‍👧‍👦 🇫🇷 e\u0301 \u200b\ufeff zero\x00byte",
        "a literal <|bos|> is text, not a separator",
        "   leading and trailing spaces   \n\n\n",
    ]
    for _ in range(50):
        lo, hi = rng.choice(ranges)
        samples.append("".join(chr(rng.randint(lo, hi)) for _ in range(rng.randint(1, 60))))
    bos = tok.token_to_id(prepare.BOS_TOKEN)
    for text in samples:
        ids = tok.encode(text).ids
        assert tok.decode(ids, skip_special_tokens=False) == text
        assert bos not in ids
        assert int(token_bytes[ids].sum()) == len(text.encode("utf-8"))
    assert token_bytes[bos] == 0


def test_dataloader_shapes_and_determinism(prepared_cache):
    m = prepare.load_manifest(prepared_cache)
    a = prepare.make_dataloader("train", 4, 64, seed=1, cache=prepared_cache)
    b = prepare.make_dataloader("train", 4, 64, seed=1, cache=prepared_cache)
    c = prepare.make_dataloader("train", 4, 64, seed=2, cache=prepared_cache)
    for _ in range(3):
        (xa, ya), (xb, yb), (xc, _) = next(a), next(b), next(c)
        assert xa.shape == ya.shape == (4, 64) and xa.dtype == ya.dtype == torch.int64
        assert torch.equal(xa, xb) and torch.equal(ya, yb)
        assert not torch.equal(xa, xc)
        assert torch.equal(xa[:, 1:], ya[:, :-1])  # targets are the inputs shifted by one
        assert int(xa.max()) < m["vocab_size"]
    x, _ = next(prepare.make_dataloader("train", 2, cache=prepared_cache))
    assert x.shape == (2, m["max_seq_len"])

    # validation: fixed order, seed ignored, consecutive windows of the stream
    v1 = prepare.make_dataloader("val", 3, 32, seed=1, cache=prepared_cache)
    v2 = prepare.make_dataloader("val", 3, 32, seed=99, cache=prepared_cache)
    x1, y1 = next(v1)
    x2, _ = next(v2)
    assert torch.equal(x1, x2)
    val = np.fromfile(prepared_cache / "val.bin", dtype=np.uint16).astype(np.int64)
    assert torch.equal(x1[1], torch.from_numpy(val[32:64])) and torch.equal(y1[1], torch.from_numpy(val[33:65]))
    with pytest.raises(ValueError, match="split"):
        prepare.make_dataloader("test", 2, cache=prepared_cache)


def test_train_windows_are_not_repeated_within_an_epoch():
    tokens = np.arange(10_000, dtype=np.uint16)  # a token's value is its position: rows show where they start
    T = 50
    loader = prepare.DataLoader(tokens, 7, T, "cpu", seed=0, shuffle=True)
    starts = []
    for _ in range(20):  # 140 rows, fewer than one epoch's 198 or 199 windows
        x, y = next(loader)
        assert torch.equal(x + 1, y)  # consecutive tokens
        starts.extend(x[:, 0].tolist())
    assert loader.epoch == 1
    assert len(set(starts)) == len(starts)  # no window twice
    assert len({s % T for s in starts}) == 1  # one random offset per epoch, windows T apart
    assert starts != sorted(starts)  # shuffled
    again = prepare.DataLoader(tokens, 7, T, "cpu", seed=0, shuffle=True)
    assert next(again)[0][:, 0].tolist() == starts[:7]  # deterministic given the seed

    # a stream shorter than one batch wraps around into further epochs
    tiny = prepare.DataLoader(np.arange(120, dtype=np.uint16), 7, T, "cpu", seed=0, shuffle=True)
    x, _ = next(tiny)
    assert x.shape == (7, T) and tiny.epoch >= 3


@pytest.fixture(scope="module")
def ascii_cache(tmp_path_factory) -> Path:
    """A small cache from ASCII-only documents, where every token's text is whole characters."""
    base = tmp_path_factory.mktemp("ascii")
    folder = base / "corpus"
    folder.mkdir()
    for i, text in enumerate(stdlib_texts(40, ascii_only=True)):
        (folder / f"doc{i:02d}.txt").write_text(text)
    prepare.prepare(source=str(folder), profile="small", cache=base / "cache")
    return base / "cache"


class FixedLogits(torch.nn.Module):
    """A 'language model' that predicts the same distribution at every position: logits (B, T, V)."""

    def __init__(self, vocab_size: int, seed: int):
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        self.logits = torch.nn.Parameter(torch.randn(vocab_size, generator=g) * 3)
        self.calls = []

    def forward(self, idx):
        assert not torch.is_grad_enabled()
        self.calls.append(tuple(idx.shape))
        return self.logits.expand(*idx.shape, -1)


def test_evaluate_bpb_matches_a_hand_computation(ascii_cache):
    m = prepare.load_manifest(ascii_cache)
    tok = prepare.get_tokenizer(ascii_cache)
    V, T, n = m["vocab_size"], m["max_seq_len"], m["eval_tokens"]
    model = FixedLogits(V, seed=0)

    # by hand: the first n targets of the validation stream, their loss under the fixed
    # distribution, and their length in bytes from decoding each token on its own (ASCII text, so
    # every token is whole characters); BOS targets count in neither sum.
    logp = torch.log_softmax(model.logits.detach().double(), 0).numpy()
    stream = np.fromfile(ascii_cache / "val.bin", dtype=np.uint16)[: n + 1].astype(np.int64)
    nats = nbytes = 0.0
    for t in stream[1:]:
        if t == m["bos_id"]:
            continue
        nats += -logp[t]
        nbytes += len(tok.decode([int(t)]).encode("utf-8"))
    expected = nats / (math.log(2) * nbytes)
    scored = int((stream[1:] != m["bos_id"]).sum())

    for batch_size in (1, 3, 64):
        got = prepare.evaluate_bpb(model, batch_size, cache=ascii_cache)
        assert got["val_bpb"] == pytest.approx(expected, rel=1e-6)
        assert got["nats"] == pytest.approx(nats, rel=1e-6)
        assert got["tokens"] == n and got["bytes"] == nbytes and got["scored_tokens"] == scored
        assert (got["seq_len"], got["batch_size"]) == (T, batch_size)
        assert all(shape == (batch_size, T) for shape in model.calls)  # the last batch is padded, not shorter
        model.calls.clear()

    # the tokens, the byte table and the manifest can be handed in (the evaluator passes the copies it verified
    # and reads no cache at all)
    val = np.fromfile(ascii_cache / "val.bin", dtype=np.uint16)
    table = np.load(ascii_cache / "token_bytes.npy")
    again = prepare.evaluate_bpb(model, 16, tokens=val, token_bytes=table, manifest=m)
    assert again["val_bpb"] == pytest.approx(expected, rel=1e-6)

    # a uniform model scores log2(V) bits per token, divided by the bytes per token
    uniform = FixedLogits(V, seed=0)
    with torch.no_grad():
        uniform.logits.zero_()
    got = prepare.evaluate_bpb(uniform, 16, cache=ascii_cache)
    assert got["val_bpb"] == pytest.approx(scored * math.log2(V) / nbytes, rel=1e-6)


def test_evaluate_bpb_computes_the_cross_entropy_itself(ascii_cache):
    """Logits wider than the vocabulary are fine; the loss is the harness's log-softmax over all of them."""
    V = prepare.load_manifest(ascii_cache)["vocab_size"]
    model = FixedLogits(V, seed=1)
    wide = FixedLogits(V + 7, seed=1)
    with torch.no_grad():
        wide.logits[:V] = model.logits
        wide.logits[V:] = -1e4  # extra columns with (almost) no probability: the same distribution
    a = prepare.evaluate_bpb(model, 8, cache=ascii_cache)["val_bpb"]
    b = prepare.evaluate_bpb(wide, 8, cache=ascii_cache)["val_bpb"]
    assert b == pytest.approx(a, rel=1e-6)


@pytest.mark.parametrize(("make", "words"), [
    (lambda idx, V: torch.zeros(*idx.shape), "shape"),  # a loss per token, not logits
    (lambda idx, V: torch.zeros(*idx.shape, V - 1), "shape"),  # narrower than the vocabulary
    (lambda idx, V: torch.zeros(idx.shape[0], 3, V), "shape"),
    (lambda idx, V: torch.zeros(()), "shape"),
    (lambda idx, V: "logits", "got str"),
    (lambda idx, V: torch.full((*idx.shape, V), float("nan")), "not all finite"),
])
def test_evaluate_bpb_rejects_what_are_not_logits(ascii_cache, make, words):
    V = prepare.load_manifest(ascii_cache)["vocab_size"]
    with pytest.raises(prepare.EvaluationError, match=words):
        prepare.evaluate_bpb(lambda idx: make(idx, V), 4, cache=ascii_cache)


def test_functions_that_need_data_say_run_prepare_first(tmp_path):
    with pytest.raises(prepare.CacheNotReadyError, match="run `autoresearch prepare` first"):
        prepare.make_dataloader("train", 2, cache=tmp_path)
    with pytest.raises(prepare.CacheNotReadyError, match="run `autoresearch prepare` first"):
        prepare.evaluate_bpb(lambda idx: idx, 2, cache=tmp_path)
    assert prepare.verify_cache(tmp_path)


# ---------------------------------------------------------------------------------------------
# the training view: a trial's cache has no validation tokens
# ---------------------------------------------------------------------------------------------


@pytest.fixture
def training_view(ascii_cache, tmp_path) -> Path:
    """The cache as a trial sees it (TrialSetup.trial_plan): manifest, train tokens, tokenizer, byte table."""
    view = tmp_path / "view"
    view.mkdir()
    m = prepare.load_manifest(ascii_cache)
    for name in ("manifest.json", m["train_tokens"], m["tokenizer"], m["token_bytes"]):
        shutil.copy2(ascii_cache / name, view / name)
    return view


def test_the_training_view_trains_and_has_no_validation_split(training_view):
    opened = prepare._open_cache(training_view)
    assert opened["val"] is None and opened["train"] is not None
    x, y = next(prepare.make_dataloader("train", 2, 32, cache=training_view))
    assert x.shape == y.shape == (2, 32)
    assert prepare.get_token_bytes(cache=training_view).shape[0] == prepare.load_manifest(training_view)["vocab_size"]
    with pytest.raises(ValueError, match="validation split is not available to a trial.*hand_over"):
        prepare.make_dataloader("val", 2, cache=training_view)
    with pytest.raises(ValueError, match="validation tokens are not in this cache view"):
        prepare.evaluate_bpb(lambda idx: idx, 2, cache=training_view)
    # a damaged training file is still caught
    (training_view / "train.bin").write_bytes(b"\0\0")
    prepare._OPEN_CACHES.clear()
    with pytest.raises(prepare.CacheNotReadyError, match="train.bin is missing or has the wrong size"):
        prepare.make_dataloader("train", 2, cache=training_view)


# ---------------------------------------------------------------------------------------------
# hand_over: the end of a trial
# ---------------------------------------------------------------------------------------------


class TinyLM(torch.nn.Module):
    """A small honest model: each position's logits depend on its own token only (a bigram model)."""

    def __init__(self, vocab_size: int, seed: int = 0, dim: int = 16):
        super().__init__()
        torch.manual_seed(seed)
        self.emb = torch.nn.Embedding(vocab_size, dim)
        self.head = torch.nn.Linear(dim, vocab_size)

    def forward(self, idx, targets=None):
        return self.head(self.emb(idx))


class LooksAhead(TinyLM):
    """Cheats: adds a big one-hot of the NEXT token to every position's logits (attention without a mask)."""

    def forward(self, idx, targets=None):
        upcoming = torch.cat([idx[:, 1:], idx[:, -1:]], dim=1)
        return super().forward(idx) + 20.0 * torch.nn.functional.one_hot(upcoming, self.head.out_features).float()


class MixesRows(TinyLM):
    """Each row's logits depend on the other rows of its batch (a mean over the batch dimension)."""

    def forward(self, idx, targets=None):
        h = self.emb(idx)
        return self.head(h + 4.0 * h.mean(0, keepdim=True))


class KeepsState(TinyLM):
    """Its logits change from one call to the next (a buffer it updates on every call)."""

    def __init__(self, vocab_size: int):
        super().__init__(vocab_size)
        self.register_buffer("calls", torch.zeros(()))

    def forward(self, idx, targets=None):
        self.calls.add_(1.0)
        return super().forward(idx) + self.calls


class ItemControlFlow(TinyLM):
    """Python control flow on a tensor's value: torch.export cannot trace it."""

    def forward(self, idx, targets=None):
        logits = super().forward(idx)
        if logits.mean().item() > 0:
            return logits * 2
        return logits


def handed_over(model: torch.nn.Module, cache: Path, out: Path) -> Path:
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("AUTORESEARCH_CACHE", str(cache))
        mp.setenv(prepare.MODEL_OUT_ENV, str(out))
        path = prepare.hand_over(model)
    assert path == out
    return path


@pytest.fixture(scope="module")
def exported(ascii_cache, tmp_path_factory) -> dict[str, tuple[torch.nn.Module, Path]]:
    """Tiny models of every kind, handed over once for the module's tests: name -> (model, file)."""
    V = prepare.load_manifest(ascii_cache)["vocab_size"]
    folder = tmp_path_factory.mktemp("exported")
    models = {"honest": TinyLM(V), "looks_ahead": LooksAhead(V), "mixes_rows": MixesRows(V),
              "keeps_state": KeepsState(V)}
    return {name: (model, handed_over(model, ascii_cache, folder / f"{name}.pt2")) for name, model in models.items()}


def test_hand_over_writes_a_program_that_computes_the_models_logits(ascii_cache, exported):
    model, path = exported["honest"]
    assert not [p for p in path.parent.iterdir() if p.name.endswith(".part")]  # written aside, renamed into place
    program = torch.export.load(str(path))
    m = prepare.load_manifest(ascii_cache)
    idx = torch.randint(0, m["vocab_size"], (prepare.EVAL_BATCH_SIZE, m["max_seq_len"]))
    with torch.no_grad():
        assert torch.allclose(program.module()(idx), model(idx), atol=1e-5)
    assert len(program.graph_signature.user_inputs) == 1


def test_hand_over_restores_the_training_mode_and_needs_a_supervisor(ascii_cache, tmp_path, monkeypatch):
    V = prepare.load_manifest(ascii_cache)["vocab_size"]
    model = TinyLM(V)
    model.train()
    handed_over(model, ascii_cache, tmp_path / "model.pt2")
    assert model.training
    monkeypatch.setenv("AUTORESEARCH_CACHE", str(ascii_cache))
    for unset in (None, "", "   "):
        if unset is None:
            monkeypatch.delenv(prepare.MODEL_OUT_ENV, raising=False)
        else:
            monkeypatch.setenv(prepare.MODEL_OUT_ENV, unset)
        assert prepare.hand_over(model) is None  # run by hand, without a supervisor: nothing to do


def test_hand_over_explains_a_model_torch_export_cannot_trace(ascii_cache, tmp_path):
    V = prepare.load_manifest(ascii_cache)["vocab_size"]
    out = tmp_path / "model.pt2"
    with pytest.raises(prepare.HandOverError) as caught:
        handed_over(ItemControlFlow(V), ascii_cache, out)
    message = str(caught.value)
    assert "could not be exported for the supervisor's evaluation (torch.export)" in message
    assert "no .item()" in message and "forward(idx) -> logits" in message
    assert not out.exists() and not list(tmp_path.iterdir())


def test_hand_over_refuses_a_model_that_returns_no_logits(ascii_cache, tmp_path):
    class ReturnsLoss(TinyLM):
        def forward(self, idx, targets=None):
            return super().forward(idx).logsumexp(-1)  # (B, T)

    V, T = prepare.load_manifest(ascii_cache)["vocab_size"], prepare.load_manifest(ascii_cache)["max_seq_len"]
    with pytest.raises(prepare.HandOverError, match=rf"must return logits of shape \(batch, {T}, >= {V}\)"):
        handed_over(ReturnsLoss(V), ascii_cache, tmp_path / "model.pt2")
    assert not (tmp_path / "model.pt2").exists()


# ---------------------------------------------------------------------------------------------
# the evaluator: evaluate_handed_over and serve_evaluation
# ---------------------------------------------------------------------------------------------


def evaluation_inputs(cache: Path) -> tuple[dict, bytes, bytes]:
    """What the supervisor sends the evaluator: the manifest and the bytes of the two evaluation files."""
    m = prepare.load_manifest(cache)
    return m, (cache / m["val_tokens"]).read_bytes(), (cache / m["token_bytes"]).read_bytes()


def recorded(cache: Path) -> dict[str, str]:
    """The evaluation files' sha256s as a run records them when it starts."""
    m = prepare.load_manifest(cache)
    return {name: m["files"][name]["sha256"] for name in (m["val_tokens"], m["token_bytes"])}


def evaluate(path: Path, cache: Path, expected: dict | None = None, val_data: bytes | None = None,
             manifest: dict | None = None) -> dict:
    m, val, table = evaluation_inputs(cache)
    return prepare.evaluate_handed_over(path, "cpu", expected, m if manifest is None else manifest,
                                        val if val_data is None else val_data, table)


def test_the_record_of_an_honest_model(ascii_cache, exported):
    model, path = exported["honest"]
    m = prepare.load_manifest(ascii_cache)
    record = evaluate(path, ascii_cache, recorded(ascii_cache))
    model.eval()
    in_process = prepare.evaluate_bpb(model, prepare.EVAL_BATCH_SIZE, cache=ascii_cache)
    assert record["val_bpb"] == pytest.approx(in_process["val_bpb"], rel=1e-5)
    assert (record["tokens"], record["bytes"], record["scored_tokens"]) == \
        (in_process["tokens"], in_process["bytes"], in_process["scored_tokens"])
    assert 2 < record["val_bpb"] < 20  # an untrained bigram model: about log2(V) bits per few bytes
    assert record["rows_checked"] == prepare.EVAL_BATCH_SIZE
    assert record["causality_deviation"] <= prepare.CHECK_TOLERANCE and record["repeat_deviation"] == 0
    assert record["artifact_sha256"] == hashlib.sha256(path.read_bytes()).hexdigest()
    assert record["val_tokens_sha256"] == m["files"]["val.bin"]["sha256"]
    assert record["evaluator"] == "exported program" and record["profile"] == "small"
    assert record["vocab_size"] == m["vocab_size"]


def test_a_model_that_looks_ahead_fails_the_causality_check(ascii_cache, exported):
    model, path = exported["looks_ahead"]
    model.eval()
    honest = prepare.evaluate_bpb(exported["honest"][0].eval(), prepare.EVAL_BATCH_SIZE, cache=ascii_cache)
    cheat = prepare.evaluate_bpb(model, prepare.EVAL_BATCH_SIZE, cache=ascii_cache)
    assert cheat["val_bpb"] < honest["val_bpb"] / 5  # what it would get if nobody checked
    with pytest.raises(prepare.EvaluationError, match="causality check failed.*looks ahead"):
        evaluate(path, ascii_cache)


def test_a_model_that_mixes_the_rows_of_its_batch_fails(ascii_cache, exported):
    with pytest.raises(prepare.EvaluationError, match="causality check failed.*other rows of the batch"):
        evaluate(exported["mixes_rows"][1], ascii_cache)


def test_a_model_that_keeps_state_between_calls_fails(ascii_cache, exported):
    # Refused before it runs (a program that updates its buffers is no pure function), or by the repeat check.
    with pytest.raises(prepare.EvaluationError, match="check failed|in place|updates its own buffers"):
        evaluate(exported["keeps_state"][1], ascii_cache)


def test_changed_validation_data_is_refused(ascii_cache, exported):
    path = exported["honest"][1]
    expected = recorded(ascii_cache)
    assert evaluate(path, ascii_cache, expected)["val_bpb"] > 0
    # the run recorded other checksums than the cache now has
    for name in expected:
        with pytest.raises(prepare.EvaluationError, match=rf"{re.escape(name)} does not match its recorded "
                                                          r"sha256: the validation data changed"):
            evaluate(path, ascii_cache, {**expected, name: "0" * 64})
    # the manifest names a validation file the run did not start with
    with pytest.raises(prepare.EvaluationError, match="the cache was redirected"):
        evaluate(path, ascii_cache, {"other.bin": expected["val.bin"]})
    # val.bin itself changed (same size: only the sha256 tells), with or without the run's checksums
    m, val, _ = evaluation_inputs(ascii_cache)
    changed = bytearray(val)
    changed[100:102] = changed[102:104]
    assert bytes(changed) != val
    for expect in (None, expected):
        with pytest.raises(prepare.EvaluationError, match="val.bin does not match its recorded sha256: the "
                                                          "validation data changed"):
            evaluate(path, ascii_cache, expect, val_data=bytes(changed))
    # a manifest of another format
    with pytest.raises(prepare.EvaluationError, match="manifest version"):
        evaluate(path, ascii_cache, expected, manifest={**m, "version": 99})


@pytest.mark.parametrize(("kind", "words"), [
    ("missing", r"no model was handed over \(No such file or directory\)"),
    pytest.param("directory", "the handed-over model is not a regular file"),
    ("symlink", "no model was handed over"),
    ("garbage", "the handed-over model (could not be loaded|is not a torch.export archive)"),
    ("empty", "the handed-over model (could not be loaded|is not a torch.export archive)"),
])
def test_a_model_file_that_is_not_a_program_is_a_clear_error(ascii_cache, exported, tmp_path, kind, words):
    path = tmp_path / "model.pt2"
    if kind == "directory":
        path.mkdir()
    elif kind == "symlink":
        path.symlink_to(exported["honest"][1])  # the evaluator reads the supervisor's plain copy, never a link
    elif kind == "garbage":
        path.write_bytes(b"PK\x03\x04 not a program" * 10)
    elif kind == "empty":
        path.write_bytes(b"")
    with pytest.raises(prepare.EvaluationError, match=words):
        evaluate(path, ascii_cache)


def test_serve_evaluation_writes_a_record_either_way(ascii_cache, exported, tmp_path):
    m, val, table = evaluation_inputs(ascii_cache)
    expected = recorded(ascii_cache)

    def serve(model: Path, expected=None, val_data: bytes = val, sizes: tuple[int, int] | None = None) -> dict:
        record = tmp_path / "eval.json"
        record.unlink(missing_ok=True)
        val_size, table_size = sizes or (len(val_data), len(table))
        job = {"model": str(model), "record": str(record), "expected": expected, "device": "cpu", "manifest": m,
               "val_size": val_size, "token_bytes_size": table_size}
        stream = io.BytesIO((json.dumps(job) + "\n").encode() + val_data + table)
        assert prepare.serve_evaluation(stream) == 0
        assert not [p for p in tmp_path.iterdir() if p.name != "eval.json"]  # written atomically
        return json.loads(record.read_text())

    good = serve(exported["honest"][1], expected)
    assert good["ok"] is True and math.isfinite(good["val_bpb"]) and good["rows_checked"] == prepare.EVAL_BATCH_SIZE
    assert good["val_bpb"] == pytest.approx(evaluate(exported["honest"][1], ascii_cache)["val_bpb"], rel=1e-6)
    bad = serve(exported["looks_ahead"][1], expected)
    assert bad["ok"] is False and bad["error"].startswith("causality check failed")
    changed = serve(exported["honest"][1], {**expected, "val.bin": "0" * 64})
    assert changed == {"ok": False, "error": "val.bin does not match its recorded sha256: the validation data changed"}
    missing = serve(tmp_path / "nothing.pt2", expected)
    assert missing["ok"] is False and missing["error"].startswith("no model was handed over")
    short = serve(exported["honest"][1], expected, sizes=(len(val) + len(table) + 10, 0))
    assert short["ok"] is False and "bytes early" in short["error"]
    # EOF instead of a job: the trial needed no evaluation, nothing is written
    (tmp_path / "eval.json").unlink()
    assert prepare.serve_evaluation(io.BytesIO(b"")) == 0
    assert not list(tmp_path.iterdir())
