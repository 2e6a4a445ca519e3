"""A full disk while the ledger and journal are written, and a corrupted or truncated ledger on start."""

from __future__ import annotations

import multiprocessing
import os
import resource
import signal
from pathlib import Path

from supervisor.agents.offline import OfflineAgent
from supervisor.run.loop import Supervisor, SupervisorError
from supervisor.store.ledger import Ledger
from supervisor.trial.platform_info import platform_info
from tests.faults.test_kill_points import check_invariants, config_for, fast_source
from tests.loop_support import cli

CTX = multiprocessing.get_context("fork")


def _full_disk_child(tmp_path: Path, source: Path, out: Path) -> None:
    sup = Supervisor(config_for(tmp_path, source), OfflineAgent())
    # The ledger may not grow past its size now plus a few pages: what a nearly full disk looks like to
    # SQLite. (Without SIGXFSZ ignored, the kernel would kill the process instead of failing the write.)
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    biggest = max(p.stat().st_size for p in sup.paths.run_dir.glob("ledger.sqlite*"))
    resource.setrlimit(resource.RLIMIT_FSIZE, (biggest + 48 * 1024, resource.RLIM_INFINITY))
    try:
        sup.run()
        message = "finished without hitting the limit"
    except SupervisorError as exc:
        message = f"error: {exc}"
    except BaseException as exc:
        message = f"unexpected {type(exc).__name__}: {exc}"
    out.write_text(message)
    os._exit(0)


def test_full_disk_stops_cleanly_and_resume_loses_nothing(tmp_path):
    platform_info()
    source = fast_source(tmp_path)
    out = tmp_path / "child-message.txt"
    proc = CTX.Process(target=_full_disk_child, args=(tmp_path, source, out))
    proc.start()
    proc.join(120)
    message = out.read_text()
    # SQLite reports a write past the limit as "disk I/O error" (a real full disk: "database or disk is full").
    assert message.startswith(("error: the disk is full", "error: writing the run's files failed")), message
    assert "Every finished trial and journal entry is safe" in message and "--resume --tag t" in message
    ledger = Ledger(config_for(tmp_path, source).run_dir / "ledger.sqlite")
    finished_before = [(t.id, t.status, t.val_bpb) for t in ledger.finished_trials()]
    ledger.close()
    assert len(finished_before) < 6
    Supervisor(config_for(tmp_path, source), OfflineAgent(), resume=True).run()
    check_invariants(tmp_path, source)
    ledger = Ledger(config_for(tmp_path, source).run_dir / "ledger.sqlite")
    assert [(t.id, t.status, t.val_bpb) for t in ledger.finished_trials()][:len(finished_before)] == finished_before


def _make_run(tmp_path: Path) -> Path:
    source = fast_source(tmp_path)
    Supervisor(config_for(tmp_path, source), OfflineAgent()).run()
    return config_for(tmp_path, source).run_dir / "ledger.sqlite"


def test_truncated_ledger_gives_a_clear_message_and_is_left_untouched(tmp_path):
    ledger = _make_run(tmp_path)
    for leftover in ledger.parent.glob("ledger.sqlite-*"):
        leftover.unlink()  # a clean close checkpointed the WAL; what is left is the main file
    data = ledger.read_bytes()
    ledger.write_bytes(data[: len(data) // 2])
    damaged = ledger.read_bytes()
    journals = ["--journals", str(tmp_path / "journals")]
    status = cli("status", "--tag", "t", *journals)
    assert status.returncode == 1 and "Traceback" not in status.stderr
    assert "cannot be read" in status.stderr and ".recover" in status.stderr and "results.tsv" in status.stderr
    resume = cli("run", "--headless", "--tag", "t", "--resume", *journals, "--cache", str(tmp_path / "cache"))
    assert resume.returncode == 1 and "cannot be read" in resume.stderr
    assert ledger.read_bytes() == damaged  # nothing was "repaired" silently
    assert (ledger.parent / "results.tsv").read_text().count("\n") == 7  # the human-readable copy survives


def test_garbage_ledger_gives_a_clear_message(tmp_path):
    ledger = _make_run(tmp_path)
    for leftover in ledger.parent.glob("ledger.sqlite-*"):
        leftover.unlink()
    ledger.write_bytes(b"this is not a database" * 100)
    status = cli("status", "--tag", "t", "--json", "--journals", str(tmp_path / "journals"))
    assert status.returncode == 1 and "cannot be read" in status.stderr
