"""Trials that misbehave, through the whole loop: each is recorded as what it was, and the night goes on."""

from __future__ import annotations

import time
from pathlib import Path

import git

from supervisor.agents.scripted import ScriptedAgent
from supervisor.run.loop import Supervisor
from supervisor.store.ledger import Ledger
from tests.loop_support import edit, fake_config, journal, process_alive, trial, write_script


def run_mode(tmp_path: Path, mode: str, **cfg) -> Ledger:
    """Baseline, then one trial with the stand-in trainer misbehaving as `mode`, then a clean one."""
    steps = [trial("baseline"), journal(1), edit('MODE = "ok"', f'MODE = "{mode}"'), trial(f"mode {mode}"),
             journal(2), edit("WIDTH = 32", "WIDTH = 64"), trial("a good change afterwards"), journal(3)]
    config = fake_config(tmp_path, **cfg)
    Supervisor(config, ScriptedAgent(write_script(tmp_path / "s.jsonl", steps))).run()
    ledger = Ledger(config.run_dir / "ledger.sqlite")
    # Whatever the middle trial did, the loop went on and the good change after it was kept.
    third = ledger.trial(3)
    assert third is not None and third.status == "keep", (third and third.decision)
    assert git.Repo(config.workspace).head.commit.hexsha == third.commit_sha
    assert (config.workspace / "trainer/prepare.py").exists()
    assert len((config.run_dir / "results.tsv").read_text().splitlines()) == 4
    return ledger


def test_children_that_ignore_sigterm_do_not_survive(tmp_path):
    ledger = run_mode(tmp_path, "forkignore", budget_s=1.0, grace_s=2.0)
    t = ledger.trial(2)
    assert t.status == "crash" and "deadline" in t.crash_reason
    # The children print their pids into the trial's log. In a sandbox those are pids of its own namespace:
    # then the namespace's death is the guarantee, and no process of the trial may be left at all.
    log = (tmp_path / "journals/t/trials/0002/log.txt").read_text()
    pids = [int(line.split()[-1]) for line in log.splitlines() if line.startswith("child pid ")]
    assert len(pids) == 2
    if t.sandbox == "bwrap":
        assert not process_alive(t.pid, group=True)  # the sandbox and everything in it
        return
    deadline = time.monotonic() + 5
    while not all(not process_alive(p) for p in pids) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert all(not process_alive(p) for p in pids)


def test_memory_hog_is_capped(tmp_path):
    ledger = run_mode(tmp_path, "memhog", memory_limit_mb=400)
    t = ledger.trial(2)
    assert t.status == "crash" and "MemoryError" in (t.crash_reason + t.log_tail)


def test_exit_zero_without_summary_is_a_crash(tmp_path):
    ledger = run_mode(tmp_path, "nosummary")
    # Exit 0 without handing over a model (and without a summary): no result, whatever the exit code says.
    t = ledger.trial(2)
    assert t.status == "crash" and t.crash_reason.startswith("no model was handed over")
    # A summary is only information: a trial that handed over its model and then exited silently is judged.
    steps = [edit('MODE = "ok"', 'MODE = "quiet"'), trial("hands over, prints nothing"), journal(1)]
    config = fake_config(tmp_path / "second")
    Supervisor(config, ScriptedAgent(write_script(tmp_path / "s2.jsonl", steps))).run()
    t = Ledger(config.run_dir / "ledger.sqlite").trial(1)
    assert t.status in ("keep", "discard") and t.val_bpb is not None


def test_trial_that_deletes_its_workspace_files(tmp_path):
    ledger = run_mode(tmp_path, "deleteself")
    t = ledger.trial(2)
    # In the sandbox the trainer folder is read-only: the attempt itself crashes the trial. Unsandboxed, the
    # harness is found changed after the trial, restored, and the number is void.
    assert t.status == "crash" and ("harness changed" in t.decision or "Read-only file system" in t.decision)


def test_flood_of_output(tmp_path):
    ledger = run_mode(tmp_path, "flood")
    t = ledger.trial(2)
    assert t.status in ("keep", "discard") and len(t.log_tail) < 100_000
    assert (tmp_path / "journals/t/trials/0002/log.txt").stat().st_size > 100 * 2**20


def test_output_flood_past_the_cap_is_killed(tmp_path):
    """Gigabytes of output would fill the disk overnight: past the cap the trial is killed and says why."""
    import shutil
    import sys

    from supervisor.trial.runner import TrialSpec, run_trial
    from tests.loop_support import FAKE_SOURCE

    work = tmp_path / "ws"
    shutil.copytree(FAKE_SOURCE, work)
    train = work / "trainer/train.py"
    train.write_text(train.read_text().replace('MODE = "ok"', 'MODE = "flood"').replace(
        "range(100 * 1024)", "range(10**7)"))  # ~10 GB if nothing stopped it
    out = tmp_path / "out"
    spec = TrialSpec(command=[sys.executable, "trainer/train.py"], cwd=work, log_path=out / "log.txt",
                     metrics_path=out / "metrics.jsonl", eval_record_path=out / "eval.json", budget_s=60,
                     grace_s=60, max_log_mb=20)
    outcome = run_trial(spec)
    assert outcome.status == "crash" and "more than 20 MB of output" in outcome.reason
    assert (out / "log.txt").stat().st_size < 400 * 2**20 and outcome.wall_seconds < 60
