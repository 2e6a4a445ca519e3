"""The `autoresearch` command as a person uses it: real subprocesses, real signals, the stand-in trainer."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import git

from supervisor.store.ledger import Ledger
from tests.loop_support import FAKE_SOURCE, PROJECT, cli, process_alive, write_script


def _setup(tmp_path: Path, sleep: float = 0.05) -> tuple[Path, list[str]]:
    source = tmp_path / "source"
    shutil.copytree(FAKE_SOURCE, source)
    train = source / "trainer/train.py"
    train.write_text(train.read_text().replace("SLEEP = 0.05", f"SLEEP = {sleep}"))
    cache = tmp_path / "cache"
    cache.mkdir()
    (cache / "manifest.json").write_text(json.dumps({"profile": "small"}))
    common = ["--journals", str(tmp_path / "journals"), "--cache", str(cache)]
    return source, common


def _run_args(source: Path, common: list[str], tag: str, *extra: str) -> list[str]:
    return ["run", "--headless", "--tag", tag, "--trainer-dir", str(source), "--budget", "5", "--grace", "10",
            *common, *extra]


def test_run_and_status_json(tmp_path):
    source, common = _setup(tmp_path)
    result = cli(*_run_args(source, common, "a", "--max-trials", "3"))
    assert result.returncode == 0, result.stderr
    assert "trial 3" in result.stdout and "finished" in result.stderr
    status = cli("status", "--tag", "a", "--json", *common)
    data = json.loads(status.stdout)
    assert data["state"] == "finished" and len(data["trials"]) == 3
    assert all(t["journal"] for t in data["trials"])
    text = cli("status", "--tag", "a", *common)
    assert "3 trials" in text.stdout


def test_noise_command_and_default_noise_measurement(tmp_path):
    source, common = _setup(tmp_path)
    train = source / "trainer/train.py"
    train.write_text(train.read_text().replace("NOISE_SD = 0.0", "NOISE_SD = 0.01"))
    assert cli(*_run_args(source, common, "n", "--max-trials", "1")).returncode == 0
    first = json.loads(cli("status", "--tag", "n", "--json", *common).stdout)["noise"]
    assert len(first["values"]) == 3  # a run measures its floor first by default
    measured = cli("noise", "--tag", "n", "--repeats", "4", *common)
    assert measured.returncode == 0, measured.stderr
    assert "noise floor" in measured.stdout and "over 4 seeds" in measured.stdout
    status = json.loads(cli("status", "--tag", "n", "--json", *common).stdout)
    assert len(status["noise"]["values"]) == 4 and status["noise"]["values"] != first["values"][:4]
    assert status["open_triggers"][0]["kind"] == "noise"  # a new floor asks for a reflection
    too_few = cli("noise", "--tag", "n", "--repeats", "1", *common)
    assert too_few.returncode == 2 and "--repeats: must be at least 2" in too_few.stderr  # refused as it is read


def test_clear_errors(tmp_path):
    source, common = _setup(tmp_path)
    no_cache = cli("run", "--headless", "--tag", "x", "--trainer-dir", str(source), "--journals",
                   str(tmp_path / "j"), "--cache", str(tmp_path / "nothing"))
    assert no_cache.returncode == 1 and "autoresearch prepare" in no_cache.stderr
    assert "Traceback" not in no_cache.stderr
    bad_agent = cli(*_run_args(source, common, "y", "--agent", "gpt9"))
    assert bad_agent.returncode == 2 and "unknown agent" in bad_agent.stderr  # a wrong command line: exit 2
    bad_tag = cli(*_run_args(source, common, "no/slash"))
    assert bad_tag.returncode == 2 and "invalid tag" in bad_tag.stderr
    missing = cli("status", "--tag", "nope", *common)
    assert missing.returncode == 1 and "no run 'nope'" in missing.stderr
    bad_script = tmp_path / "bad.jsonl"
    bad_script.write_text('{"tool": "run_trial"}\nnot json\n')
    script = cli(*_run_args(source, common, "z", "--agent", f"script:{bad_script}"))
    assert script.returncode == 1 and "bad.jsonl:2" in script.stderr
    resume_missing = cli(*_run_args(source, common, "never", "--resume"))
    assert resume_missing.returncode == 1 and "no run 'never'" in resume_missing.stderr


def _wait(predicate, timeout=60.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if predicate():
                return True
        except Exception:
            pass
        time.sleep(0.1)
    return False


def _start(args: list[str]) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": str(PROJECT)}
    return subprocess.Popen([sys.executable, "-m", "supervisor.cli.main", *args], env=env, cwd=PROJECT,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)


def test_sigkill_mid_trial_then_resume_loses_nothing(tmp_path):
    source, common = _setup(tmp_path, sleep=0.3)  # each trial streams for ~3 s
    ledger_path = tmp_path / "journals/k/ledger.sqlite"
    proc = _start(_run_args(source, common, "k", "--max-trials", "4"))
    try:
        def second_trial_running() -> bool:
            ledger = Ledger(ledger_path)
            try:
                running = ledger.running_trials()
                return bool(running) and running[0].id == 2 and running[0].pid is not None
            finally:
                ledger.close()

        assert _wait(second_trial_running), "the second trial never started"
        time.sleep(0.5)
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=10)
    finally:
        if proc.poll() is None:
            proc.kill()
    ledger = Ledger(ledger_path)
    orphan = ledger.trial(2).pid
    finished_before = [(t.id, t.status, t.val_bpb) for t in ledger.finished_trials()]
    journals_before = len(ledger.journal_entries())
    ledger.close()
    assert finished_before and journals_before == 1

    resumed = cli(*_run_args(source, common, "k", "--max-trials", "4", "--resume"))
    assert resumed.returncode == 0, resumed.stderr
    assert not process_alive(orphan), "the orphaned trial of the killed supervisor is still running"
    ledger = Ledger(ledger_path)
    trials = ledger.trials()
    assert trials[1].status == "aborted" and "supervisor stopped" in trials[1].crash_reason
    finished = ledger.finished_trials()
    assert [(t.id, t.status, t.val_bpb) for t in finished][:len(finished_before)] == finished_before
    assert len(finished) == 4
    # Every finished trial: one ledger row, one results.tsv row, one journal entry.
    rows = (tmp_path / "journals/k/results.tsv").read_text().splitlines()[1:]
    assert sorted(r.split("\t")[0] for r in rows) == sorted(t.short_commit for t in finished)
    assert sorted(j.trial_id for j in ledger.journal_entries()) == [t.id for t in finished]
    # The branch head is the last keep.
    head = git.Repo(tmp_path / "journals/k/workspace").head.commit.hexsha
    assert head == ledger.best_keep().commit_sha
    transcript = (tmp_path / "journals/k/transcript.jsonl").read_text().splitlines()
    assert len(transcript) == len(ledger.turns())


def test_ctrl_c_stops_a_headless_run_cleanly_and_resume_goes_on(tmp_path):
    """SIGINT (Ctrl+C) mid-trial: a line that says how to go on, a clean stop with no traceback, and --resume
    finishes the night."""
    source, common = _setup(tmp_path, sleep=0.3)
    ledger_path = tmp_path / "journals/c/ledger.sqlite"
    proc = _start(_run_args(source, common, "c", "--max-trials", "3"))
    try:
        def a_trial_running() -> bool:
            if not ledger_path.exists():
                return False
            ledger = Ledger(ledger_path, readonly=True)
            try:
                return bool(ledger.running_trials())
            finally:
                ledger.close()

        assert _wait(a_trial_running), "no trial started"
        proc.send_signal(signal.SIGINT)
        _, stderr = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, stderr
    assert "SIGINT: stopping the run" in stderr and "--resume" in stderr and "Traceback" not in stderr
    status = json.loads(cli("status", "--tag", "c", "--json", *common).stdout)
    assert status["state"] == "stopped"
    resumed = cli(*_run_args(source, common, "c", "--max-trials", "3", "--resume"))
    assert resumed.returncode == 0, resumed.stderr
    assert "resumed run c: " in resumed.stdout + resumed.stderr
    assert json.loads(cli("status", "--tag", "c", "--json", *common).stdout)["state"] == "finished"


def test_second_supervisor_on_a_live_run_is_refused(tmp_path):
    # ~4 s a trial, ~20 s in all: the run must still be live when the second supervisor and the steering
    # arrive, each a fresh interpreter that takes seconds on a loaded machine.
    source, common = _setup(tmp_path, sleep=0.4)
    proc = _start(_run_args(source, common, "l", "--max-trials", "2"))
    try:
        assert _wait(lambda: (tmp_path / "journals/l/ledger.sqlite").exists()
                     and "pid" in (tmp_path / "journals/l/run.lock").read_text())
        second = cli(*_run_args(source, common, "l", "--resume"))
        assert second.returncode == 1 and "already being supervised" in second.stderr
        # Steering from another terminal reaches the live run.
        sent = cli("control", "--tag", "l", "steer", "try", "wider", "models", *common)
        assert sent.returncode == 0 and "sent steer" in sent.stdout
        proc.wait(timeout=120)
        assert proc.returncode == 0, proc.stderr.read()
    finally:
        if proc.poll() is None:
            proc.kill()
    ledger = Ledger(tmp_path / "journals/l/ledger.sqlite")
    assert ledger.steering()[0].message == "try wider models"


def test_control_when_nothing_runs_stores_steering(tmp_path):
    source, common = _setup(tmp_path)
    script = write_script(tmp_path / "s.jsonl", [{"tool": "get_results", "input": {}}])
    assert cli(*_run_args(source, common, "m", "--agent", f"script:{script}")).returncode == 0
    stored = cli("control", "--tag", "m", "steer", "look at the schedule", *common)
    assert stored.returncode == 0 and "delivered on --resume" in stored.stdout
    empty = cli("control", "--tag", "m", "steer", *common)
    assert empty.returncode == 1 and "needs a message" in empty.stderr
    stale = cli("control", "--tag", "m", "stop", *common)
    assert stale.returncode == 1 and "no supervisor is running 'm'" in stale.stderr and "--resume" in stale.stderr
