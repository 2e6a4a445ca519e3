"""The metrics stream is bounded: whatever a trial writes into its metrics file, the supervisor's memory
stays flat (MetricsTail reads it a chunk at a time, MetricsBuffer keeps at most `capacity` records by
decimation, the newest always), and every record that comes out is small, flat and storable."""

from __future__ import annotations

import json
import math
import time
import tracemalloc
from pathlib import Path

import pytest

from supervisor.trial.process import (
    DEFAULT_KEPT_RECORDS,
    MAX_METRIC_LINE_BYTES,
    MAX_RECORD_KEYS,
    MAX_TEXT_VALUE_CHARS,
    MetricsBuffer,
    MetricsTail,
    clean_record,
)


def write_records(path: Path, count: int, start: int = 0, block: int = 50_000) -> None:
    """`count` small records {"step", "loss"} appended in chunks (as a trainer would, but fast)."""
    with open(path, "a", encoding="utf-8") as fh:
        for first in range(start, start + count, block):
            fh.write("".join(f'{{"step": {i}, "loss": 2.5}}\n' for i in range(first, min(first + block, start + count))))


def drain(path: Path, capacity: int = DEFAULT_KEPT_RECORDS) -> MetricsBuffer:
    tail, buffer = MetricsTail(path), MetricsBuffer(capacity)
    buffer.add(tail.records())  # while running: one chunk per poll
    buffer.add(tail.records(final=True))  # at the end: the rest
    return buffer


def test_two_million_records_are_kept_bounded_with_the_newest(tmp_path: Path):
    path = tmp_path / "metrics.jsonl"
    write_records(path, 2_000_000)
    with open(path, "a") as fh:
        fh.write('{"step": 2000000, "loss": 1.25, "last": true}')  # the newest, without a newline
    started = time.monotonic()
    buffer = drain(path)
    elapsed = time.monotonic() - started
    kept = buffer.records()
    assert buffer.seen == 2_000_001
    assert len(kept) == len(buffer) <= DEFAULT_KEPT_RECORDS
    assert len(kept) > DEFAULT_KEPT_RECORDS // 2  # decimation halves, never more
    assert buffer.dropped == buffer.seen - len(kept)
    assert kept[-1] == {"step": 2000000, "loss": 1.25, "last": True}
    assert kept[0]["step"] == 0
    steps = [r["step"] for r in kept[:-1]]
    assert all(b - a == buffer.stride for a, b in zip(steps, steps[1:], strict=False))  # evenly spread
    assert elapsed < 120, f"{elapsed:.1f} s for 2 million records"


def _peak_bytes(path: Path) -> int:
    tracemalloc.start()
    try:
        drain(path)
        return tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


def test_memory_is_flat_however_many_records(tmp_path: Path):
    small, large = tmp_path / "small.jsonl", tmp_path / "large.jsonl"
    write_records(small, 40_000)
    write_records(large, 160_000)
    peak_small, peak_large = _peak_bytes(small), _peak_bytes(large)
    # Four times the records, about the same memory: the buffer is full at 20,000 either way, and the
    # file is read a chunk (1 MB) at a time, the backlog at the end too (records(final=True) streams it
    # instead of gathering it in one list).
    assert peak_large < 40 * 2**20, f"{peak_large / 2**20:.1f} MB"
    assert peak_large < 1.5 * peak_small, (peak_small, peak_large)


def test_buffer_decimation_keeps_every_stride_and_the_newest():
    buffer = MetricsBuffer(capacity=8)
    for n in range(1, 200):
        buffer.add([{"step": n - 1}])
        kept = [r["step"] for r in buffer.records()]
        assert len(kept) <= 8 and kept[-1] == n - 1 and kept[0] == 0
        assert kept == sorted(set(kept))
        assert buffer.seen == n and buffer.dropped == n - len(kept)
    with pytest.raises(ValueError):
        MetricsBuffer(1)
    empty = MetricsBuffer()
    assert empty.records() == [] and len(empty) == 0 and empty.dropped == 0


def test_buffer_cleans_what_it_keeps():
    buffer = MetricsBuffer(capacity=4)
    buffer.add([{"step": 10**30, "loss": [1, 2], "note": "x" * 5000}])
    assert buffer.records() == [{"step": 1e30}]


def test_clean_record_bounds_a_record():
    assert clean_record({"step": 3, "loss": 2.5}) == {"step": 3, "loss": 2.5}
    nan = clean_record({"loss": math.nan, "lr": math.inf})
    assert math.isnan(nan["loss"]) and nan["lr"] == math.inf  # a diverging loss is information
    cleaned = clean_record({
        "step": 10**30,  # outside SQLite's 64 bits: a float
        "elapsed": 10**400,  # not even a float: dropped
        "loss": "2.5", "lr": True, "mfu": None,  # the contract's numbers must be numbers
        "nested": {"a": [1, 2, {"b": 3}]}, "list": [1, 2],
        "ok": True, "phase": "warmup", "long": "y" * (MAX_TEXT_VALUE_CHARS + 1),
        "bad\ud800key": 1, "bad_text": "a\udcffb", "k" * 65: 1,
    })
    assert cleaned == {"step": 1e30, "ok": True, "phase": "warmup"}
    wide = clean_record({f"k{i}": i for i in range(10_000)})
    assert len(wide) == MAX_RECORD_KEYS
    assert clean_record({"step": -(2**63), "x": 2**63 - 1}) == {"step": -(2**63), "x": 2**63 - 1}


def test_tail_skips_garbage_and_keeps_the_good_lines(tmp_path: Path):
    path = tmp_path / "metrics.jsonl"
    lines = [
        '{"step": 1}',
        "not json at all",
        "[" * 200_000,  # deep nesting: a RecursionError in the parser, not a crash
        '{"step": 2}, {"step": 99}',  # two values on one line
        "",
        "x" * (MAX_METRIC_LINE_BYTES + 10),  # over-long
        '{"step": 3, "huge": ' + "9" * 5000 + "}",  # more digits than Python converts
        '{"step": 4, "deep": [[1, [2]]], "obj": {"a": 1}}',  # kept, without its nested values
        "[1, 2, 3]",
        '{"step": 5, "loss": NaN}',
        b'{"step": 6, "bad": "\xff"}'.decode("latin-1"),  # not UTF-8 once encoded below
        '{"step": 7}',
    ]
    path.write_bytes(b"\n".join(line.encode("latin-1") if i == 10 else line.encode() for i, line in enumerate(lines)))
    records = MetricsTail(path).poll(final=True)
    steps = [r["step"] for r in records]
    assert steps == [1, 4, 5, 7]
    assert "deep" not in records[1] and math.isnan(records[2]["loss"])
    json.dumps(records)  # every record can be re-encoded


def test_tail_streams_across_polls(tmp_path: Path):
    path = tmp_path / "metrics.jsonl"
    tail = MetricsTail(path)
    assert tail.poll() == []
    path.write_text('{"step": 0}\n{"step": 1')
    assert tail.poll() == [{"step": 0}]
    with open(path, "a") as fh:
        fh.write('}\n{"step": 2}\n')
    assert tail.poll() == [{"step": 1}, {"step": 2}]
    path.write_text('{"step": 0}\n')  # truncated and rewritten: read again from the start
    assert tail.poll(final=True) == [{"step": 0}]
