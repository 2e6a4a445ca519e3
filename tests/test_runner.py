"""The trial runner against real subprocesses: small fake trainers that follow the contract.

A trial streams metrics into its exchange folder and ends by handing over a "model"; a stand-in evaluator (a
small script of this module, started the way the supervisor starts the real one) reads the job line, reads the
handed-over model (here a JSON file holding the number the trial wants) and writes the record the runner takes
val_bpb from. The sandboxed tests run real bubblewrap sandboxes and are skipped only where bwrap cannot run.
"""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
import tracemalloc
import uuid
from pathlib import Path
from types import SimpleNamespace

import pytest

from supervisor.trial import evaluation
from supervisor.trial.evaluation import EvaluatorSpec
from supervisor.trial.runner import (
    NO_HANDOVER,
    TrialOutcome,
    TrialSpec,
    is_secret_name,
    log_tail,
    parse_summary,
    read_log_end,
    run_trial,
    scrub_environment,
    summary_float,
    trial_environment,
)
from supervisor.trial.sandbox import Mount, SandboxPlan, plan, probe

pytestmark = pytest.mark.timeout(120)

# Every trial body starts with this: the stand-in for prepare.hand_over (write under another name, rename into place).
HAND_OVER = '''
import json as _json, os as _os


def hand_over(val_bpb, **extra):
    path = _os.environ["AUTORESEARCH_MODEL_OUT"]
    part = _os.path.join(_os.path.dirname(path), ".model.part")
    with open(part, "w") as fh:
        _json.dump({"val_bpb": val_bpb, **extra}, fh)
    _os.replace(part, path)
'''

# The stand-in evaluator: one JSON job line on stdin followed by the bytes of the validation tokens and the byte
# table, the record written atomically. What the handed-over "model" says under "evaluator" makes it misbehave
# the way a real evaluation can fail.
EVALUATOR = '''
import hashlib, json, os, sys, time

stdin = sys.stdin.buffer
line = stdin.readline()
if not line.strip():
    sys.exit(0)  # EOF: no evaluation needed
job = json.loads(line)
with open(job["model"], encoding="utf-8") as fh:
    model = json.load(fh)
mode = model.get("evaluator", "ok")
if mode == "deaf":  # alive, but never reads the data it is sent
    time.sleep(600)
val, table = stdin.read(job["val_size"]), stdin.read(job["token_bytes_size"])
if mode == "die":
    print("the stand-in evaluator fell over", flush=True)
    os._exit(3)
if mode == "hang":
    open(os.path.join(os.path.dirname(job["record"]), "evaluating"), "w").close()
    time.sleep(600)
if mode == "error":
    record = {"ok": False, "error": model["error"]}
else:
    record = {"ok": True, "val_bpb": model["val_bpb"], "job": job, "evaluator": "stand-in",
              "received": {"val": hashlib.sha256(val).hexdigest(), "token_bytes": hashlib.sha256(table).hexdigest()}}
with open(job["record"] + ".part", "w", encoding="utf-8") as fh:
    json.dump(record, fh)
os.replace(job["record"] + ".part", job["record"])
'''

# The stand-in cache's evaluation files: more validation bytes than a pipe holds (64 KiB), as in a real cache.
VAL_BYTES = bytes(range(256)) * 1024
TABLE_BYTES = b"\x93NUMPY stand-in byte table"


def stand_in_cache(tmp_path: Path) -> Path:
    cache = tmp_path / "cache"
    if not cache.exists():
        cache.mkdir()
        (cache / "val.bin").write_bytes(VAL_BYTES)
        (cache / "token_bytes.npy").write_bytes(TABLE_BYTES)
        (cache / "manifest.json").write_text(json.dumps({"version": 1, "val_tokens": "val.bin",
                                                         "token_bytes": "token_bytes.npy"}))
    return cache


def stand_in_evaluator(tmp_path: Path, out_dir: Path, **overrides) -> EvaluatorSpec:
    script = tmp_path / "harness" / "evaluate.py"
    script.parent.mkdir(parents=True, exist_ok=True)
    script.write_text(EVALUATOR, encoding="utf-8")
    fields = dict(command=[sys.executable, "-I", str(script)], env=scrub_environment(os.environ), cwd=tmp_path,
                  job_dir=out_dir, expected={"val.bin": "ab" * 32}, cache_dir=stand_in_cache(tmp_path), device="cpu",
                  timeout_s=120.0)
    fields.update(overrides)
    return EvaluatorSpec(**fields)


def make_spec(tmp_path: Path, body: str, **overrides) -> TrialSpec:
    """Write a fake trainer script (with hand_over defined) and a spec that runs it in tmp_path, evaluated by
    the stand-in evaluator."""
    script = tmp_path / "train.py"
    script.write_text(HAND_OVER + textwrap.dedent(body), encoding="utf-8")
    out = tmp_path / "out"
    fields = dict(
        command=[sys.executable, str(script)],
        cwd=tmp_path,
        log_path=out / "run.log",
        metrics_path=out / "metrics.jsonl",
        eval_record_path=out / "eval.json",
        budget_s=10.0,
        grace_s=5.0,
        seed=42,
        extra_env={},
        memory_limit_mb=None,
        evaluator=stand_in_evaluator(tmp_path, out),
    )
    fields.update(overrides)
    return TrialSpec(**fields)


def group_gone(pgid: int, timeout: float = 10.0) -> bool:
    """True once no live process is left in the group.

    os.killpg(pgid, 0) only raises ProcessLookupError after init has reaped the zombies, which
    this VM's init does lazily; a group of zombies is dead, so /proc states count too.
    """
    until = time.monotonic() + timeout
    while time.monotonic() < until:
        try:
            os.killpg(pgid, 0)
        except ProcessLookupError:
            return True
        if Path("/proc").is_dir() and not _live_members(pgid):
            return True
        time.sleep(0.05)
    return False


def _live_members(pgid: int) -> list[int]:
    live = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            raw = Path(f"/proc/{entry}/stat").read_bytes()
        except OSError:
            continue
        fields = raw[raw.rfind(b")") + 2 :].split()
        if int(fields[2]) == pgid and fields[0] not in (b"Z", b"X"):
            live.append(int(entry))
    return live


def pid_dead(pid: int, timeout: float = 10.0) -> bool:
    until = time.monotonic() + timeout
    while time.monotonic() < until:
        try:
            state = Path(f"/proc/{pid}/stat").read_bytes().rsplit(b")", 1)[1].split()[0]
        except FileNotFoundError:
            return True
        if state in (b"Z", b"X"):
            return True
        time.sleep(0.05)
    return False


def live_with_argument(marker: str) -> list[int]:
    """Live (not zombie) processes of this machine whose command line holds ``marker``."""
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            cmdline = Path(f"/proc/{entry}/cmdline").read_bytes()
            state = Path(f"/proc/{entry}/stat").read_bytes().rsplit(b")", 1)[1].split()[0]
        except OSError:
            continue
        if marker.encode() in cmdline and state not in (b"Z", b"X"):
            found.append(int(entry))
    return found


def gone_with_argument(marker: str, timeout: float = 10.0) -> bool:
    until = time.monotonic() + timeout
    while time.monotonic() < until:
        if not live_with_argument(marker):
            return True
        time.sleep(0.05)
    return False


def started_pids() -> tuple[list[int], object]:
    pids: list[int] = []
    return pids, pids.append


# ---------------------------------------------------------------------------------------------
# Successful trials
# ---------------------------------------------------------------------------------------------


def test_streams_metrics_live_and_the_evaluator_measures_the_handed_over_model(tmp_path: Path) -> None:
    body = """
        import json, os, sys, time
        metrics = open(os.environ["AUTORESEARCH_METRICS"], "w")
        for step in range(20):
            line = json.dumps({"step": step, "loss": 5.0 - step * 0.1})
            if step == 7:
                # A line written in two halves: the runner must not parse the first half.
                metrics.write(line[:10]); metrics.flush(); time.sleep(0.25)
                metrics.write(line[10:] + "\\n")
                metrics.write("this is not json\\n")
                metrics.write("[1, 2, 3]\\n")
            else:
                metrics.write(line + "\\n")
            metrics.flush()
            time.sleep(0.05)
        # Still running: wait (up to a generous ceiling) until the supervisor has shown every record live.
        until = time.time() + 60
        while not os.path.exists("all_seen") and time.time() < until:
            time.sleep(0.05)
        print("seen live" if os.path.exists("all_seen") else "never seen live", flush=True)
        hand_over(1.2345)
        print("---")
        print("num_steps: 20")
    """
    spec = make_spec(tmp_path, body)
    seen: list[dict] = []

    def on_metric(metric: dict) -> None:
        seen.append(metric)
        if metric.get("step") == 19:
            (tmp_path / "all_seen").write_text("yes")

    outcome = run_trial(spec, on_metric=on_metric)

    assert outcome.status == "ok", outcome.reason
    assert outcome.reason == "ok"
    assert outcome.exit_code == 0
    assert outcome.val_bpb == pytest.approx(1.2345)
    assert outcome.val_bpb_source == "evaluator"
    assert outcome.eval_record is not None and outcome.eval_record["evaluator"] == "stand-in"
    # The evaluator got the supervisor's copy of the model, not the trial's file, and the run's checksums.
    job = outcome.eval_record["job"]
    assert job["model"] == str(spec.kept_model_path) and job["record"] == str(spec.evaluator.record_path)
    assert job["expected"] == {"val.bin": "ab" * 32} and job["device"] == "cpu"
    # The validation data reaches it over its stdin, after the job line, as the cache holds it.
    assert job["manifest"]["val_tokens"] == "val.bin" and job["val_size"] == len(VAL_BYTES)
    assert outcome.eval_record["received"] == {"val": hashlib.sha256(VAL_BYTES).hexdigest(),
                                               "token_bytes": hashlib.sha256(TABLE_BYTES).hexdigest()}
    assert json.loads(spec.kept_model_path.read_text()) == {"val_bpb": 1.2345}
    assert [m["step"] for m in seen] == list(range(20))
    assert [m["step"] for m in outcome.metrics] == list(range(20))
    assert "seen live" in outcome.log_tail  # every record reached the callback while the trial still ran
    assert outcome.summary == {"num_steps": "20"}
    assert not outcome.timed_out and not outcome.stopped
    assert outcome.handover_seconds is not None and 0 < outcome.handover_seconds <= outcome.wall_seconds
    assert outcome.evaluation_seconds is not None and outcome.evaluation_seconds >= 0
    assert not outcome.sandboxed and outcome.sandbox == "none: no sandbox was set up"


def test_metrics_are_re_encoded_into_the_trial_folder(tmp_path: Path) -> None:
    body = r"""
        import os
        with open(os.environ["AUTORESEARCH_METRICS"], "w") as m:
            m.write('{"step": 0, "loss": 4.5}\n')
            m.write('garbage that is not json\n')
            m.write('  {"step": 1,   "loss": 4.25, "note": "spaced out"}  \n')
            m.write('"a string"\n[1, 2]\n\n{"broken": \n')
            m.write('{"step": 2, "loss": NaN}\n')
            m.write('{"step": 3}')  # no final newline
        hand_over(1.0)
    """
    spec = make_spec(tmp_path, body)
    outcome = run_trial(spec)
    assert outcome.status == "ok", outcome.reason
    assert spec.offered_metrics_path.parent == spec.exchange == spec.log_path.parent / "exchange"
    assert [m["step"] for m in outcome.metrics] == [0, 1, 2, 3]
    lines = spec.metrics_path.read_text().splitlines()
    assert len(lines) == 4
    records = [json.loads(line) for line in lines]  # every line the supervisor wrote is one JSON object
    assert records[0] == {"step": 0, "loss": 4.5}
    assert records[1] == {"step": 1, "loss": 4.25, "note": "spaced out"}
    assert lines[1] == json.dumps(records[1])  # re-encoded, not the trial's bytes
    assert records[3] == {"step": 3}
    assert "garbage" not in spec.metrics_path.read_text()


def test_the_last_summary_block_wins_and_a_printed_val_bpb_is_ignored(tmp_path: Path) -> None:
    body = """
        print("---")
        print("val_bpb: 0.0001")
        print("num_steps: 999999")
        print("training continues...")
        hand_over(1.5)
        print("---")
        print("val_bpb: 0.25")
        print("device: cuda:0")
    """
    outcome = run_trial(make_spec(tmp_path, body))
    assert outcome.status == "ok", outcome.reason
    assert outcome.val_bpb == 1.5  # the evaluator's number, not the printed one
    assert outcome.val_bpb_source == "evaluator"
    assert outcome.summary == {"val_bpb": "0.25", "device": "cuda:0"}


def test_a_printed_val_bpb_without_a_hand_over_is_no_result(tmp_path: Path) -> None:
    outcome = run_trial(make_spec(tmp_path, 'print("---")\nprint("val_bpb: 0.9")\nprint("num_steps: 3")\n'))
    assert outcome.status == "crash"
    assert outcome.reason == NO_HANDOVER
    assert outcome.exit_code == 0
    assert outcome.val_bpb is None and outcome.val_bpb_source is None and outcome.eval_record is None
    assert outcome.summary == {"val_bpb": "0.9", "num_steps": "3"}  # kept for the journal, worth nothing


def test_no_hand_over_is_a_crash(tmp_path: Path) -> None:
    outcome = run_trial(make_spec(tmp_path, 'print("trained, forgot to hand over")\n'))
    assert outcome.status == "crash"
    assert outcome.reason == NO_HANDOVER
    assert "prepare.hand_over(model)" in outcome.reason
    assert outcome.exit_code == 0
    assert outcome.handover_seconds is None
    assert "forgot to hand over" in outcome.log_tail


def test_a_hand_over_without_a_summary_is_a_result(tmp_path: Path) -> None:
    outcome = run_trial(make_spec(tmp_path, "hand_over(1.125)\n"))
    assert outcome.status == "ok", outcome.reason
    assert outcome.val_bpb == 1.125
    assert outcome.summary == {}


def test_without_an_evaluator_a_trial_has_no_result(tmp_path: Path) -> None:
    spec = make_spec(tmp_path, 'hand_over(1.0)\nprint("---")\nprint("num_steps: 1")\n', evaluator=None)
    outcome = run_trial(spec)
    assert outcome.status == "crash"
    assert outcome.reason.startswith("no trusted evaluation was set up")
    assert outcome.val_bpb is None and outcome.val_bpb_source is None
    assert outcome.handover_seconds is not None
    assert spec.kept_model_path == spec.log_path.parent / "model.pt2"
    assert json.loads(spec.kept_model_path.read_text()) == {"val_bpb": 1.0}  # kept all the same


def test_stale_files_of_an_earlier_trial_are_not_seen(tmp_path: Path) -> None:
    spec = make_spec(tmp_path, "hand_over(2.0)\n")
    spec.exchange.mkdir(parents=True)
    spec.metrics_path.write_text('{"step": 1, "loss": 9.9}\n')
    spec.offered_metrics_path.write_text('{"step": 1, "loss": 9.9}\n')
    for stale in (spec.offered_model_path, spec.kept_model_path):
        stale.write_text('{"val_bpb": 0.1}')
    spec.evaluator.record_path.write_text('{"ok": true, "val_bpb": 0.1}')
    (spec.exchange / "leftover").mkdir()
    outcome = run_trial(spec)
    assert outcome.status == "ok", outcome.reason
    assert outcome.val_bpb == 2.0
    assert outcome.metrics == []
    assert not (spec.exchange / "leftover").exists()

    # A stale model in the exchange folder is no hand-over for the next trial.
    spec = make_spec(tmp_path, 'print("no hand-over this time")\n')
    spec.offered_model_path.write_text('{"val_bpb": 0.1}')
    outcome = run_trial(spec)
    assert outcome.status == "crash" and outcome.reason == NO_HANDOVER
    assert outcome.eval_record is None and not spec.kept_model_path.exists()


def test_last_metric_line_without_newline_is_read(tmp_path: Path) -> None:
    body = """
        import os
        open(os.environ["AUTORESEARCH_METRICS"], "w").write('{"step": 0}\\n{"step": 1}')
        hand_over(1.0)
    """
    outcome = run_trial(make_spec(tmp_path, body))
    assert [m["step"] for m in outcome.metrics] == [0, 1]


def test_a_failing_callback_does_not_break_the_trial(tmp_path: Path) -> None:
    body = """
        import os
        open(os.environ["AUTORESEARCH_METRICS"], "w").write('{"step": 0}\\n{"step": 1}\\n')
        hand_over(1.0)
    """

    def explode(_metric: dict) -> None:
        raise RuntimeError("UI bug")

    outcome = run_trial(make_spec(tmp_path, body), on_metric=explode)
    assert outcome.status == "ok"
    assert len(outcome.metrics) == 2


# ---------------------------------------------------------------------------------------------
# The hand-over
# ---------------------------------------------------------------------------------------------


def test_a_hand_over_after_budget_and_grace_is_over_budget(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # The deadline kills a trial at budget + grace, so only a late look can see a late hand-over: the watch's
    # clock is moved 1000 s ahead, as if the supervisor had seen the file that long after the start.
    monkeypatch.setattr(evaluation, "time", SimpleNamespace(monotonic=lambda: time.monotonic() + 1000.0,
                                                           sleep=time.sleep))
    spec = make_spec(tmp_path, 'hand_over(0.5)\nprint("---")\nprint("num_steps: 1")\n', budget_s=10.0, grace_s=5.0)
    outcome = run_trial(spec)
    assert outcome.status == "crash"
    assert outcome.reason.startswith("over budget: it handed over its model 100")
    assert "the budget is 10 s plus a warm-up allowance of 5.0 s" in outcome.reason
    assert outcome.handover_seconds is not None and outcome.handover_seconds > 1000
    assert outcome.val_bpb is None and outcome.eval_record is None  # never evaluated
    assert not outcome.timed_out


def test_the_first_hand_over_wins(tmp_path: Path) -> None:
    body = """
        import json, os, time
        hand_over(1.5)
        # Wait until the supervisor has its copy, then hand over a better one: it must not count.
        kept, until = os.environ["AUTORESEARCH_TEST_KEPT"], time.time() + 60
        while time.time() < until:
            try:
                if json.load(open(kept)) == {"val_bpb": 1.5}:
                    break
            except (OSError, ValueError):
                pass
            time.sleep(0.02)
        hand_over(0.5)
        print("handed over twice", flush=True)
    """
    spec = make_spec(tmp_path, body)
    spec.extra_env["AUTORESEARCH_TEST_KEPT"] = str(spec.kept_model_path)
    outcome = run_trial(spec)
    assert outcome.status == "ok", outcome.reason
    assert "handed over twice" in outcome.log_tail
    assert json.loads(spec.offered_model_path.read_text()) == {"val_bpb": 0.5}  # the second one did land
    assert outcome.val_bpb == 1.5
    assert json.loads(spec.kept_model_path.read_text()) == {"val_bpb": 1.5}


def test_rewriting_the_handed_over_file_through_an_open_handle_changes_nothing(tmp_path: Path) -> None:
    body = """
        import json, os, time
        path = os.environ["AUTORESEARCH_MODEL_OUT"]
        part = path + ".part"
        handle = open(part, "w+")
        handle.write(json.dumps({"val_bpb": 1.5})); handle.flush()
        os.replace(part, path)  # handed over, and the handle is still open
        kept, until = os.environ["AUTORESEARCH_TEST_KEPT"], time.time() + 60
        while time.time() < until:
            try:
                if json.load(open(kept)) == {"val_bpb": 1.5}:
                    break
            except (OSError, ValueError):
                pass
            time.sleep(0.02)
        handle.seek(0); handle.truncate(); handle.write(json.dumps({"val_bpb": 0.25})); handle.close()
        print("rewrote it", flush=True)
    """
    spec = make_spec(tmp_path, body)
    spec.extra_env["AUTORESEARCH_TEST_KEPT"] = str(spec.kept_model_path)
    outcome = run_trial(spec)
    assert outcome.status == "ok", outcome.reason
    assert "rewrote it" in outcome.log_tail
    assert json.loads(spec.offered_model_path.read_text()) == {"val_bpb": 0.25}  # the trial's file did change
    assert outcome.val_bpb == 1.5


def test_a_trial_that_lingers_after_its_hand_over_is_stopped_and_still_counts(tmp_path: Path) -> None:
    body = """
        import time
        hand_over(1.25)
        print("---")
        print("num_steps: 7", flush=True)
        time.sleep(600)  # forgot to exit
    """
    spec = make_spec(tmp_path, body, budget_s=300.0, grace_s=60.0, handover_exit_s=1.0)
    pids, on_start = started_pids()
    outcome = run_trial(spec, on_start=on_start)
    assert outcome.status == "ok", outcome.reason
    assert outcome.reason == "ok"
    assert outcome.val_bpb == 1.25 and outcome.val_bpb_source == "evaluator"
    assert outcome.exit_code is not None and outcome.exit_code < 0  # it was stopped
    assert not outcome.timed_out and not outcome.stopped
    assert outcome.summary == {"num_steps": "7"}
    assert outcome.wall_seconds < 300  # long before its deadline
    assert group_gone(pids[0])


def test_a_crash_after_the_hand_over_is_a_crash(tmp_path: Path) -> None:
    outcome = run_trial(make_spec(tmp_path, 'hand_over(1.0)\nraise RuntimeError("after the hand-over")\n'))
    assert outcome.status == "crash"
    assert outcome.reason == "exit code 1: RuntimeError: after the hand-over"
    assert outcome.val_bpb is None and outcome.eval_record is None


@pytest.mark.parametrize("kind", ["directory", "symlink", "hardlink"])
def test_a_hand_over_that_is_not_a_plain_file_is_refused(tmp_path: Path, kind: str) -> None:
    body = f"""
        import os
        path = os.environ["AUTORESEARCH_MODEL_OUT"]
        other = os.path.join(os.path.dirname(path), "other")
        if {kind!r} == "directory":
            os.mkdir(path)
        else:
            open(other, "w").write('{{"val_bpb": 0.1}}')
            (os.symlink if {kind!r} == "symlink" else os.link)(other, path)
    """
    outcome = run_trial(make_spec(tmp_path, body))
    assert outcome.status == "crash"
    assert outcome.reason == "the handed-over model is not a regular file"
    assert outcome.eval_record is None


class _RacingOs:
    """``os`` as supervisor/trial/evaluation.py sees it, except that right after the watch's lstat of the
    handed-over model says "regular file", the file is swapped for a FIFO: a trial that wins that race."""

    def __init__(self, target: Path) -> None:
        self.target, self.swapped = str(target), False

    def __getattr__(self, name: str):
        return getattr(os, name)

    def lstat(self, path, *args, **kwargs):
        info = os.lstat(path, *args, **kwargs)
        if str(path) == self.target and not self.swapped:
            self.swapped = True
            os.unlink(path)
            os.mkfifo(path)
        return info


def test_a_fifo_swapped_in_after_the_check_does_not_stall_the_runner(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    spec = make_spec(tmp_path, 'hand_over(1.0)\nprint("handed over", flush=True)\n')
    racing = _RacingOs(spec.offered_model_path)
    monkeypatch.setattr(evaluation, "os", racing)
    done = threading.Event()
    rescues: list[float] = []

    def rescue() -> None:
        # Should the watch block on the FIFO, open its write end now and then so that run_trial returns.
        if done.wait(10):
            return
        while not done.is_set():
            try:
                os.close(os.open(spec.offered_model_path, os.O_WRONLY | os.O_NONBLOCK))
                rescues.append(time.monotonic())
            except OSError:
                pass
            time.sleep(0.2)

    helper = threading.Thread(target=rescue, daemon=True)
    helper.start()
    try:
        outcome = run_trial(spec)
    finally:
        done.set()
        helper.join()
    assert racing.swapped
    assert not rescues, "the watch blocked on the FIFO until someone opened its write end"
    assert outcome.status == "crash" and outcome.reason == "the handed-over model is not a regular file"


# ---------------------------------------------------------------------------------------------
# The evaluation
# ---------------------------------------------------------------------------------------------


def test_the_evaluators_error_record_is_the_reason(tmp_path: Path) -> None:
    body = 'hand_over(0.5, evaluator="error", error="causality check failed: the model looks ahead")\n'
    outcome = run_trial(make_spec(tmp_path, body))
    assert outcome.status == "crash"
    assert outcome.reason == "evaluation: causality check failed: the model looks ahead"
    assert outcome.val_bpb is None and outcome.val_bpb_source is None
    assert outcome.eval_record == {"ok": False, "error": "causality check failed: the model looks ahead"}
    assert outcome.handover_seconds is not None and outcome.exit_code == 0


def test_an_evaluator_that_dies_without_a_record_is_a_crash(tmp_path: Path) -> None:
    outcome = run_trial(make_spec(tmp_path, 'hand_over(0.5, evaluator="die")\n'))
    assert outcome.status == "crash"
    assert outcome.reason == "evaluation: the evaluator wrote no record (exit 3): the stand-in evaluator fell over"
    assert outcome.val_bpb is None


def test_an_evaluator_that_cannot_start_is_a_crash(tmp_path: Path) -> None:
    spec = make_spec(tmp_path, "hand_over(0.5)\n")
    spec.evaluator = stand_in_evaluator(tmp_path, spec.log_path.parent, command=[str(tmp_path / "no-such-python")])
    outcome = run_trial(spec)
    assert outcome.status == "crash"
    assert outcome.reason.startswith("evaluation: the evaluator could not start:")


@pytest.mark.parametrize(("value", "words"), [(float("nan"), "val_bpb is nan"), (float("inf"), "val_bpb is inf"),
                                              ("unknown", "val_bpb is 'unknown'"), (True, "val_bpb is True")])
def test_a_non_finite_number_from_the_evaluator_is_a_crash(tmp_path: Path, value: object, words: str) -> None:
    spec = make_spec(tmp_path, "import json, sys\nhand_over(json.loads(sys.argv[1]))\n")
    spec.command.append(json.dumps(value))
    outcome = run_trial(spec)
    assert outcome.status == "crash"
    assert outcome.reason == f"evaluation: {words}"
    assert outcome.val_bpb is None


def test_an_evaluation_that_takes_too_long_is_a_crash(tmp_path: Path) -> None:
    spec = make_spec(tmp_path, 'hand_over(0.5, evaluator="hang")\n')
    spec.evaluator.timeout_s = 1.0
    outcome = run_trial(spec)
    assert outcome.status == "crash"
    assert outcome.reason == "evaluation: the evaluation took longer than 1 s"


def test_an_evaluator_whose_cache_is_unreadable_is_a_crash(tmp_path: Path) -> None:
    spec = make_spec(tmp_path, "hand_over(0.5)\n")
    (spec.evaluator.cache_dir / "val.bin").unlink()
    outcome = run_trial(spec)
    assert outcome.status == "crash"
    assert outcome.reason.startswith("evaluation: the cache's evaluation files could not be read:")


def test_an_evaluator_that_does_not_read_its_job_times_out(tmp_path: Path) -> None:
    spec = make_spec(tmp_path, 'hand_over(0.5, evaluator="deaf")\n')
    spec.evaluator.timeout_s = 2.0
    script = str(tmp_path / "harness" / "evaluate.py")
    done = threading.Event()
    rescues: list[int] = []

    def rescue() -> None:
        # Should the runner block writing to the deaf evaluator, kill it so that run_trial returns.
        if done.wait(20):
            return
        for pid in live_with_argument(script):
            os.kill(pid, signal.SIGKILL)
            rescues.append(pid)

    helper = threading.Thread(target=rescue, daemon=True)
    helper.start()
    try:
        outcome = run_trial(spec)
    finally:
        done.set()
        helper.join()
    assert not rescues, "the runner blocked writing the job to an evaluator that did not read it"
    assert outcome.reason == "evaluation: the evaluation took longer than 2 s"


def test_stop_during_the_evaluation(tmp_path: Path) -> None:
    spec = make_spec(tmp_path, 'hand_over(0.5, evaluator="hang")\n')
    stop = threading.Event()
    evaluating = spec.evaluator.job_dir / "evaluating"

    def stop_when_evaluating() -> None:
        until = time.monotonic() + 60
        while not evaluating.exists() and time.monotonic() < until:
            time.sleep(0.05)
        stop.set()

    helper = threading.Thread(target=stop_when_evaluating, daemon=True)
    helper.start()
    outcome = run_trial(spec, stop_event=stop)
    helper.join()
    assert evaluating.exists()
    assert outcome.status == "crash" and outcome.stopped
    assert outcome.reason == "evaluation: stopped by the person"


# ---------------------------------------------------------------------------------------------
# Crashes
# ---------------------------------------------------------------------------------------------


def test_fail_line_is_the_reason(tmp_path: Path) -> None:
    body = """
        import sys
        for step in range(1, 4):
            print(f"step {step} loss 4.2")
        print("FAIL: loss is nan at step 3")
        sys.exit(1)
    """
    outcome = run_trial(make_spec(tmp_path, body))
    assert outcome.status == "crash"
    assert outcome.exit_code == 1
    assert outcome.reason == "FAIL: loss is nan at step 3"
    assert "step 1 loss 4.2" in outcome.log_tail
    assert outcome.log_tail.splitlines()[-1] == "FAIL: loss is nan at step 3"
    assert outcome.val_bpb is None


def test_traceback_gives_exit_code_and_exception(tmp_path: Path) -> None:
    outcome = run_trial(make_spec(tmp_path, 'raise RuntimeError("CUDA out of memory (fake)")\n'))
    assert outcome.status == "crash"
    assert outcome.reason == "exit code 1: RuntimeError: CUDA out of memory (fake)"
    assert "Traceback" in outcome.log_tail


def test_killed_by_a_signal(tmp_path: Path) -> None:
    outcome = run_trial(make_spec(tmp_path, "import os, signal\nos.kill(os.getpid(), signal.SIGKILL)\n"))
    assert outcome.status == "crash"
    assert outcome.exit_code == -9
    assert outcome.reason.startswith("killed by signal SIGKILL")
    assert not outcome.timed_out


def test_command_that_cannot_start(tmp_path: Path) -> None:
    spec = make_spec(tmp_path, "")
    spec.command = [str(tmp_path / "no-such-python")]
    outcome = run_trial(spec)
    assert outcome.status == "crash"
    assert outcome.reason.startswith("could not start:")
    assert outcome.exit_code is None
    assert "could not start" in spec.log_path.read_text()


def test_memory_limit_turns_a_runaway_allocation_into_a_crash(tmp_path: Path) -> None:
    body = """
        import resource
        print("limit", resource.getrlimit(resource.RLIMIT_AS)[0])
        blob = bytearray(2 * 1024 ** 3)
        hand_over(1.0)
    """
    outcome = run_trial(make_spec(tmp_path, body, memory_limit_mb=256))
    assert outcome.status == "crash"
    assert "MemoryError" in outcome.reason
    assert f"limit {256 * 1024 * 1024}" in outcome.log_tail


# ---------------------------------------------------------------------------------------------
# Deadline, stop, flood, orphans
# ---------------------------------------------------------------------------------------------


def test_hanging_trial_is_killed_at_the_deadline_with_its_whole_group(tmp_path: Path) -> None:
    body = """
        import subprocess, sys, time
        child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"])
        print("training...", flush=True)
        time.sleep(600)
    """
    spec = make_spec(tmp_path, body, budget_s=2.0, grace_s=1.0)
    pids, on_start = started_pids()
    outcome = run_trial(spec, on_start=on_start)
    assert outcome.status == "crash"
    assert outcome.timed_out and not outcome.stopped
    assert outcome.reason == "killed at deadline (budget 2s + grace 1s) without handing over a model"
    assert 2.9 < outcome.wall_seconds < 60.0
    assert "training..." in outcome.log_tail
    assert group_gone(pids[0])


def test_trial_that_ignores_sigterm_is_sigkilled(tmp_path: Path) -> None:
    body = """
        import signal, time
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        print("ignoring SIGTERM", flush=True)
        time.sleep(600)
    """
    spec = make_spec(tmp_path, body, budget_s=2.0, grace_s=1.0, term_timeout_s=0.5)
    pids, on_start = started_pids()
    outcome = run_trial(spec, on_start=on_start)
    assert "ignoring SIGTERM" in outcome.log_tail
    assert outcome.timed_out
    assert outcome.exit_code == -9
    assert outcome.wall_seconds < 60.0
    assert group_gone(pids[0])


def test_child_ignoring_sigterm_dies_after_a_clean_exit(tmp_path: Path) -> None:
    body = """
        import os, signal, time
        pid = os.fork()
        if pid == 0:
            signal.signal(signal.SIGTERM, signal.SIG_IGN)
            time.sleep(600)
            os._exit(0)
        open("child_pid", "w").write(str(pid))
        hand_over(1.0)
    """
    pids, on_start = started_pids()
    outcome = run_trial(make_spec(tmp_path, body), on_start=on_start)
    assert outcome.status == "ok", outcome.reason
    assert pid_dead(int((tmp_path / "child_pid").read_text()))
    assert group_gone(pids[0])


@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="descendant tracking needs /proc")
def test_child_that_left_the_session_is_killed_too(tmp_path: Path) -> None:
    body = """
        import json, os, time
        pid = os.fork()
        if pid == 0:
            os.setsid()
            time.sleep(600)
            os._exit(0)
        open("child_pid", "w").write(str(pid))
        # Keep running until the supervisor has watched the child for a while (it says so through the
        # metrics callback), then exit and leave the child behind.
        metrics = open(os.environ["AUTORESEARCH_METRICS"], "w")
        until, step = time.time() + 60, 0
        while not os.path.exists("watched") and time.time() < until:
            metrics.write(json.dumps({"step": step}) + "\\n"); metrics.flush()
            step += 1
            time.sleep(0.05)
        hand_over(1.0)
    """
    first_seen: list[float] = []

    def on_metric(_metric: dict) -> None:
        now = time.monotonic()
        first_seen[:] = first_seen or [now]
        if now - first_seen[0] > 2.5:  # the runner snapshots the trial's descendants every second
            (tmp_path / "watched").write_text("yes")

    outcome = run_trial(make_spec(tmp_path, body), on_metric=on_metric)
    assert outcome.status == "ok", outcome.reason
    assert (tmp_path / "watched").exists()
    assert pid_dead(int((tmp_path / "child_pid").read_text()))


def test_stop_event_stops_a_running_trial(tmp_path: Path) -> None:
    body = """
        import os, time
        open(os.environ["AUTORESEARCH_METRICS"], "w").write('{"step": 1}\\n')
        print("training...", flush=True)
        time.sleep(600)
    """
    spec = make_spec(tmp_path, body, budget_s=300.0, grace_s=60.0)
    stop = threading.Event()
    pids, on_start = started_pids()
    outcome = run_trial(spec, stop_event=stop, on_start=on_start, on_metric=lambda _m: stop.set())
    assert outcome.status == "crash"
    assert outcome.stopped and not outcome.timed_out
    assert outcome.reason == "stopped by the person"
    assert outcome.wall_seconds < 300.0
    assert outcome.eval_record is None
    assert group_gone(pids[0])


def test_stop_event_already_set_starts_nothing(tmp_path: Path) -> None:
    spec = make_spec(tmp_path, 'open("started", "w").write("yes")\n')
    stop = threading.Event()
    stop.set()
    outcome = run_trial(spec, stop_event=stop)
    assert outcome.stopped
    assert outcome.reason == "stopped by the person"
    assert not (tmp_path / "started").exists()


def test_a_flood_of_output_is_killed(tmp_path: Path) -> None:
    body = """
        import sys, time
        chunk = "x" * 1023 + "\\n"
        for _ in range(20 * 1024):  # 20 MB
            sys.stdout.write(chunk)
        sys.stdout.flush()
        time.sleep(600)
    """
    spec = make_spec(tmp_path, body, budget_s=300.0, grace_s=60.0, max_log_mb=1.0)
    pids, on_start = started_pids()
    outcome = run_trial(spec, on_start=on_start)
    assert outcome.status == "crash"
    assert outcome.reason == "killed: it wrote more than 1 MB of output (its log is kept)"
    assert not outcome.timed_out and not outcome.stopped
    assert spec.log_path.stat().st_size > 2**20
    assert group_gone(pids[0])


def test_huge_output_stays_on_disk_and_the_tail_is_right(tmp_path: Path) -> None:
    body = """
        import sys
        chunk = "".join(f"noise line {i:08d} " + "x" * 80 + "\\n" for i in range(1000))
        for _ in range(500):  # about 50 MB
            sys.stdout.write(chunk)
        for i in range(100):
            print(f"final line {i}")
        hand_over(1.75)
        print("---")
        print("num_steps: 20")
    """
    spec = make_spec(tmp_path, body)
    tracemalloc.start()
    try:
        outcome = run_trial(spec)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert spec.log_path.stat().st_size > 45 * 1024 * 1024
    assert peak < 8 * 1024 * 1024, f"runner allocated {peak / 2**20:.1f} MB"
    assert outcome.status == "ok", outcome.reason
    assert outcome.val_bpb == 1.75
    tail = outcome.log_tail.splitlines()
    assert len(tail) == 60
    assert tail[-1] == "num_steps: 20"
    assert tail[-3] == "final line 99"
    assert tail[0] == "final line 42"


def test_a_fifo_as_the_metrics_file_does_not_stall_the_runner(tmp_path: Path) -> None:
    body = """
        import os, time
        os.mkfifo(os.environ["AUTORESEARCH_METRICS"])
        time.sleep(600)
    """
    spec = make_spec(tmp_path, body, budget_s=1.0, grace_s=1.0)
    done = threading.Event()
    rescues: list[float] = []

    def rescue() -> None:
        # Should the runner block on the FIFO, open its write end now and then so that run_trial returns.
        if done.wait(10):
            return
        while not done.is_set():
            try:
                os.close(os.open(spec.offered_metrics_path, os.O_WRONLY | os.O_NONBLOCK))
                rescues.append(time.monotonic())
            except OSError:
                pass
            time.sleep(0.2)

    helper = threading.Thread(target=rescue, daemon=True)
    helper.start()
    try:
        outcome = run_trial(spec)
    finally:
        done.set()
        helper.join()
    assert outcome.timed_out
    assert not rescues, "the runner blocked on the FIFO until someone opened its write end"


# ---------------------------------------------------------------------------------------------
# Environment
# ---------------------------------------------------------------------------------------------


def test_trial_environment_has_no_secrets_and_has_the_contract(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    secrets = {
        "ANTHROPIC_API_KEY": "sk-ant-api03-abcdefghijklmnopqrstuvwxyz",
        "OPENAI_API_KEY": "sk-proj-abcdefghijklmnopqrstuvwxyz",
        "OPENAI_BASE_URL": "http://127.0.0.1:9/v1",
        "GITHUB_TOKEN": "ghp_abcdefghijklmnopqrstuvwxyz0123456789",
        "HF_TOKEN": "hf_abcdefghijklmnopqrstuvwxyz0123456789",
        "MY_SERVICE_TOKEN": "x",
        "AWS_SECRET_ACCESS_KEY": "y",
        "AWS_ACCESS_KEY_ID": "AKIAABCDEFGHIJKLMNOP",
        "DB_PASSWORD": "hunter2",
        "INNOCENT_LOOKING": "sk-abcdefghijklmnopqrstuvwxyz012345",
        "PIP_INDEX_URL": "https://user:s3cret@pypi.example.com/simple",
    }
    for name, value in secrets.items():
        monkeypatch.setenv(name, value)
    monkeypatch.setenv("TOKENIZERS_PARALLELISM", "false")
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "0")
    monkeypatch.setenv("AUTORESEARCH_SEED", "999")  # the spec wins over an inherited value
    monkeypatch.setenv("AUTORESEARCH_EVAL_RECORD", "/tmp/forged.json")  # gone from the contract
    body = """
        import json, os
        json.dump(dict(os.environ), open("env.json", "w"))
        hand_over(1.0)
    """
    spec = make_spec(
        tmp_path,
        body,
        budget_s=7.0,
        seed=123,
        extra_env={
            "AUTORESEARCH_CACHE": str(tmp_path / "cache"),
            "AUTORESEARCH_DEVICE": "cpu",
            "LEAKED_API_KEY": "oops",
        },
    )
    outcome = run_trial(spec)
    assert outcome.status == "ok", outcome.reason
    env = json.loads((tmp_path / "env.json").read_text())
    for name in secrets:
        assert name not in env
    assert "LEAKED_API_KEY" not in env
    assert not [name for name in env if "TOKEN" in name.upper() and name != "TOKENIZERS_PARALLELISM"]
    assert not [value for value in env.values() if "sk-" in value or "s3cret" in value]
    assert env["AUTORESEARCH_TIME_BUDGET"] == "7"
    assert env["AUTORESEARCH_SEED"] == "123"
    assert env["AUTORESEARCH_METRICS"] == str(spec.offered_metrics_path) == str(tmp_path / "out/exchange/metrics.jsonl")
    assert env["AUTORESEARCH_MODEL_OUT"] == str(spec.offered_model_path) == str(tmp_path / "out/exchange/model.pt2")
    assert "AUTORESEARCH_EVAL_RECORD" not in env or env["AUTORESEARCH_EVAL_RECORD"] == "/tmp/forged.json"
    assert env["AUTORESEARCH_CACHE"] == str(tmp_path / "cache")
    assert env["AUTORESEARCH_DEVICE"] == "cpu"
    assert env["PYTHONUNBUFFERED"] == "1"
    assert env["TOKENIZERS_PARALLELISM"] == "false"
    assert env["CUDA_VISIBLE_DEVICES"] == "0"
    assert env["PATH"] == os.environ["PATH"]
    assert env["HOME"] == os.environ["HOME"]


def test_trial_environment_in_a_sandbox_names_the_paths_the_trial_sees(tmp_path: Path) -> None:
    exchange, cache = tmp_path / "exchange", tmp_path / "cache"
    sandbox = SandboxPlan("bwrap", (Mount(tmp_path / "code", "/trial"), Mount(exchange, "/out", writable=True),
                                    Mount(cache / "train.bin", "/cache/train.bin")), "/trial",
                          {"AUTORESEARCH_CACHE": "/cache"})
    spec = make_spec(tmp_path, "", exchange_dir=exchange, sandbox=sandbox, sandbox_label="bwrap",
                     extra_env={"AUTORESEARCH_CACHE": str(cache), "TRITON_CACHE_DIR": str(tmp_path / "elsewhere")})
    env = trial_environment(spec, base={"PATH": "/usr/bin", "HOME": "/root"})
    assert env["AUTORESEARCH_METRICS"] == "/out/metrics.jsonl"
    assert env["AUTORESEARCH_MODEL_OUT"] == "/out/model.pt2"
    assert env["AUTORESEARCH_CACHE"] == "/cache"
    assert "TRITON_CACHE_DIR" not in env  # a host path the trial cannot see is not handed to it
    assert env["HOME"] == env["TMPDIR"] == "/tmp/home"
    assert spec.seen(exchange / "x") == "/out/x"
    with pytest.raises(ValueError, match="not visible"):
        spec.seen(tmp_path / "out" / "run.log")


def test_fractional_budget_is_passed_as_written(tmp_path: Path) -> None:
    spec = make_spec(tmp_path, "", budget_s=2.5)
    assert trial_environment(spec, base={})["AUTORESEARCH_TIME_BUDGET"] == "2.5"
    spec.budget_s = 300
    assert trial_environment(spec, base={})["AUTORESEARCH_TIME_BUDGET"] == "300"


def test_scrub_environment_keeps_what_a_trainer_needs() -> None:
    keep = {
        "PATH": "/usr/bin",
        "HOME": "/home/me",
        "LANG": "C.UTF-8",
        "LC_ALL": "C.UTF-8",
        "PWD": "/work",
        "CUDA_VISIBLE_DEVICES": "0,1",
        "HIP_VISIBLE_DEVICES": "0",
        "PYTHONPATH": "/src",
        "LD_LIBRARY_PATH": "/usr/local/cuda/lib64",
        "VIRTUAL_ENV": "/venv",
        "TOKENIZERS_PARALLELISM": "false",
        "PYTORCH_CUDA_ALLOC_CONF": "expandable_segments:True",
        "OMP_NUM_THREADS": "4",
        "TMPDIR": "/tmp",
        "AUTORESEARCH_CACHE": "/cache",
    }
    drop = {
        "ANTHROPIC_API_KEY": "a",
        "ANTHROPIC_BASE_URL": "b",
        "OPENAI_ORG_ID": "c",
        "aws_session_token": "d",
        "AWS_PROFILE": "e",
        "AZURE_OPENAI_ENDPOINT": "f",
        "GOOGLE_APPLICATION_CREDENTIALS": "/creds.json",
        "HF_TOKEN": "g",
        "HUGGING_FACE_HUB_TOKEN": "h",
        "GH_TOKEN": "i",
        "GITLAB_PAT": "j",
        "SSH_AUTH_SOCK": "/tmp/agent",
        "DBUS_SESSION_BUS_ADDRESS": "unix:path=/x",
        "MYSQL_PWD": "k",
        "SENTRY_DSN": "l",
        "SOME_COOKIE_JAR": "m",
        "SLACK_WEBHOOK_URL": "n",
        "NETRC": "/home/me/.netrc",
        "WANDB_API_KEY": "o",
        "RANDOM_NAME": "xoxb-1234567890-abcdef",
        "DATABASE_URL": "postgres://admin:pw@db:5432/x",
        "HTTPS_PROXY": "http://user:pass@proxy:3128",
        # An allowlist: what a trainer does not need is dropped too (a trial has no network to proxy).
        "http_proxy": "http://proxy.example.com:3128",
        "SOME_UNKNOWN_TOOL_SETTING": "1",
    }
    scrubbed = scrub_environment({**keep, **drop})
    assert scrubbed == keep
    assert all(not is_secret_name(name) for name in keep)


# ---------------------------------------------------------------------------------------------
# A real sandbox (bubblewrap)
# ---------------------------------------------------------------------------------------------


def bwrap_or_skip() -> str:
    choice = probe()
    if not choice.active:
        pytest.skip(f"no sandbox on this machine: {choice.why_not}")
    assert choice.bwrap is not None
    return choice.bwrap


def sandboxed_spec(tmp_path: Path, body: str, **overrides) -> TrialSpec:
    """A trial whose code folder is read-only at /trial and whose exchange folder is writable at /out, as
    TrialSetup.trial_plan mounts them; the evaluator runs outside, as a stand-in."""
    bwrap = bwrap_or_skip()
    code, exchange = tmp_path / "code", tmp_path / "exchange"
    code.mkdir()
    exchange.mkdir()
    (code / "train.py").write_text(HAND_OVER + textwrap.dedent(body), encoding="utf-8")
    sandbox = plan(bwrap, [Mount(code, "/trial"), Mount(exchange, "/out", writable=True)], "/trial")
    return make_spec(tmp_path, "", command=[sys.executable, "train.py"], cwd=code, exchange_dir=exchange,
                     sandbox=sandbox, sandbox_label="bwrap", **overrides)


SANDBOX_CHECKS = """
    import errno, json, os, socket, time

    checks = {"pid": os.getpid(), "ppid": os.getppid()}
    # /proc: only this namespace's processes, and nothing of the host's (the marker process runs there).
    pids = sorted(int(p) for p in os.listdir("/proc") if p.isdigit())
    checks["pids"] = pids
    leaked = []
    for pid in pids:
        for name in ("cmdline", "environ"):
            try:
                if os.environ["AUTORESEARCH_TEST_MARKER"].encode() + b"-host" in open(f"/proc/{pid}/{name}", "rb").read():
                    leaked.append(pid)
            except OSError:
                pass
    checks["marker_seen"] = leaked
    checks["host_pid_visible"] = os.path.exists(f"/proc/{os.environ['AUTORESEARCH_TEST_HOST_PID']}")
    # No network.
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.settimeout(20)
    began = time.monotonic()
    try:
        sock.connect(("10.255.255.1", 80))
        checks["connect"] = "connected"
    except OSError as exc:
        checks["connect"] = errno.errorcode.get(exc.errno, str(exc.errno))
    checks["connect_seconds"] = time.monotonic() - began
    # Writes: only the exchange folder (and the private /tmp) take them.
    writes = {}
    for path in ["/trial/evil.py", "/evil", os.environ["AUTORESEARCH_TEST_OUTSIDE"], os.environ["AUTORESEARCH_TEST_LOG_DIR"] + "/evil",
                 "/out/ok.txt", "/tmp/private-" + os.environ["AUTORESEARCH_TEST_MARKER"]]:
        try:
            with open(path, "w") as fh:
                fh.write("written from the sandbox")
            writes[path] = "ok"
        except OSError as exc:
            writes[path] = errno.errorcode.get(exc.errno, str(exc.errno))
    checks["writes"] = writes
    checks["host_log_dir_visible"] = os.path.exists(os.environ["AUTORESEARCH_TEST_LOG_DIR"])
    checks["env"] = {k: v for k, v in os.environ.items() if k.startswith("AUTORESEARCH_")}
    with open("/out/checks.json", "w") as fh:
        json.dump(checks, fh)
    hand_over(1.0)
"""


def test_a_sandboxed_trial_sees_only_itself_has_no_network_and_writes_only_its_exchange(tmp_path: Path) -> None:
    marker = f"mk-{uuid.uuid4().hex[:12]}"  # short runs: a long hex blob would be scrubbed as a key
    spec = sandboxed_spec(tmp_path, SANDBOX_CHECKS)
    outside = tmp_path / "outside.txt"
    spec.extra_env.update(AUTORESEARCH_TEST_MARKER=marker, AUTORESEARCH_TEST_HOST_PID=str(os.getpid()),
                          AUTORESEARCH_TEST_OUTSIDE=str(outside), AUTORESEARCH_TEST_LOG_DIR=str(spec.log_path.parent))
    # A host process whose command line and environment hold the marker: the trial must not find it.
    host = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)", f"{marker}-host"],
                            env={**os.environ, "HOST_SECRET": f"{marker}-host"})
    try:
        outcome = run_trial(spec)
    finally:
        host.kill()
        host.wait()
    assert outcome.status == "ok", (outcome.reason, outcome.log_tail)
    assert outcome.sandboxed and outcome.sandbox == "bwrap"
    assert outcome.val_bpb == 1.0
    checks = json.loads((spec.exchange / "checks.json").read_text())
    assert checks["marker_seen"] == []
    assert len(checks["pids"]) <= 4 and checks["pid"] in checks["pids"] and checks["pid"] < 10
    assert checks["ppid"] not in (0, os.getpid())
    assert not checks["host_pid_visible"] or os.getpid() < 10
    assert checks["connect"] == "ENETUNREACH", checks
    assert checks["connect_seconds"] < 10  # refused at once, not a timeout
    writes = checks["writes"]
    assert writes["/out/ok.txt"] == "ok" and (spec.exchange / "ok.txt").read_text() == "written from the sandbox"
    assert writes["/trial/evil.py"] == "EROFS" and not (tmp_path / "code" / "evil.py").exists()
    assert writes["/evil"] == "EROFS"
    assert writes[str(outside)] in ("ENOENT", "EROFS") and not outside.exists()
    assert writes[str(spec.log_path.parent) + "/evil"] in ("ENOENT", "EROFS")
    assert not (spec.log_path.parent / "evil").exists()
    assert not checks["host_log_dir_visible"]  # the run's own folder is not there at all
    assert not Path(f"/tmp/private-{marker}").exists()  # its /tmp is its own
    assert checks["env"]["AUTORESEARCH_METRICS"] == "/out/metrics.jsonl"
    assert checks["env"]["AUTORESEARCH_MODEL_OUT"] == "/out/model.pt2"


def test_a_double_forked_setsid_child_of_a_sandboxed_trial_is_gone_when_it_returns(tmp_path: Path) -> None:
    marker = f"escapee-{uuid.uuid4().hex[:12]}"
    body = """
        import os, sys, time
        pid = os.fork()
        if pid == 0:
            os.setsid()
            if os.fork() == 0:
                code = "import os, time; open('/out/child.started', 'w').write(str(os.getpid())); time.sleep(600)"
                os.execv(sys.executable, [sys.executable, "-c", code, os.environ["AUTORESEARCH_TEST_CHILD_MARKER"]])
            os._exit(0)
        os.waitpid(pid, 0)
        until = time.time() + 60
        while not os.path.exists("/out/child.started") and time.time() < until:
            time.sleep(0.05)
        hand_over(1.0)  # and exit at once, leaving the grandchild behind
    """
    spec = sandboxed_spec(tmp_path, body)
    spec.extra_env["AUTORESEARCH_TEST_CHILD_MARKER"] = marker
    try:
        outcome = run_trial(spec)
        assert outcome.status == "ok", (outcome.reason, outcome.log_tail)
        assert outcome.sandboxed
        assert (spec.exchange / "child.started").exists()  # the escapee did run, detached from the trial
        assert gone_with_argument(marker), live_with_argument(marker)
    finally:
        for pid in live_with_argument(marker):  # never leave one behind, even when the test fails
            os.kill(pid, signal.SIGKILL)


def test_a_sandboxed_trial_cannot_read_host_files_through_a_link_in_its_exchange(tmp_path: Path) -> None:
    secret = tmp_path / "host-only" / "secret.jsonl"
    secret.parent.mkdir()
    secret.write_text('{"secret": "hunter2"}\n')
    body = """
        import os
        assert not os.path.exists(os.environ["AUTORESEARCH_TEST_HOST_FILE"])  # the trial cannot see it itself
        os.symlink(os.environ["AUTORESEARCH_TEST_HOST_FILE"], os.environ["AUTORESEARCH_METRICS"])
        hand_over(1.0)
    """
    spec = sandboxed_spec(tmp_path, body)
    spec.extra_env["AUTORESEARCH_TEST_HOST_FILE"] = str(secret)
    outcome = run_trial(spec)
    assert outcome.status == "ok", (outcome.reason, outcome.log_tail)
    assert not [m for m in outcome.metrics if "secret" in m]
    assert "hunter2" not in (spec.metrics_path.read_text() if spec.metrics_path.exists() else "")


# ---------------------------------------------------------------------------------------------
# Parsing helpers
# ---------------------------------------------------------------------------------------------


def test_parse_summary_edge_cases() -> None:
    assert parse_summary("") == {}
    assert parse_summary("val_bpb: 1.0\n") == {}  # no separator, no summary
    assert parse_summary("---\n") == {}
    assert parse_summary("----\nval_bpb: 1.0\n") == {}  # four dashes is not the separator
    assert parse_summary("---  \r\nval_bpb: 1.0\r\n") == {"val_bpb": "1.0"}
    text = "\n".join(
        [
            "---",
            "val_bpb: 0.1",
            "step 10 | loss 3.2",
            "---",
            "val_bpb:          0.997900",
            "device: cuda:0",
            "peak_vram_mb: unknown",
            "empty:",
            "not a summary line",
            "Traceback (most recent call last):",
            '  File "train.py", line 3, in <module>',
            "num_steps: 10",
            "num_steps: 12",
        ]
    )
    assert parse_summary(text) == {
        "val_bpb": "0.997900",
        "device": "cuda:0",
        "peak_vram_mb": "unknown",
        "empty": "",
        "num_steps": "12",
    }


def test_summary_float() -> None:
    summary = {
        "a": "1.25",
        "b": " 12 ",
        "c": "unknown",
        "d": "nan",
        "e": "inf",
        "f": "38.5%",
        "g": "abc",
        "h": "",
        "i": "1e-3",
        "j": "-inf",
        "k": "12.0 MB",
    }
    assert summary_float(summary, "a") == 1.25
    assert summary_float(summary, "b") == 12.0
    assert summary_float(summary, "c") is None
    assert summary_float(summary, "d") is None
    assert summary_float(summary, "e") is None
    assert summary_float(summary, "f") == 38.5
    assert summary_float(summary, "g") is None
    assert summary_float(summary, "h") is None
    assert summary_float(summary, "i") == 0.001
    assert summary_float(summary, "j") is None
    assert summary_float(summary, "k") == 12.0
    assert summary_float(summary, "missing") is None


def test_read_log_end_starts_at_a_line_boundary(tmp_path: Path) -> None:
    log = tmp_path / "run.log"
    log.write_bytes(b"".join(b"line %05d\n" % i for i in range(20000)) + b"\xff\xfe bad bytes\n")
    text = read_log_end(log, max_bytes=1000)
    lines = text.splitlines()
    assert lines[0].startswith("line ")
    assert len(lines[0]) == len("line 00000")
    assert lines[-2] == "line 19999"
    assert lines[-1].endswith("bad bytes")
    assert read_log_end(tmp_path / "missing.log") == ""
    assert log_tail("a\nb\nc", lines=2) == "b\nc"


def test_outcome_is_a_plain_dataclass() -> None:
    outcome = TrialOutcome(
        status="ok",
        reason="ok",
        exit_code=0,
        summary={},
        val_bpb=1.0,
        metrics=[],
        log_tail="",
        wall_seconds=1.0,
        timed_out=False,
        stopped=False,
    )
    assert outcome.val_bpb_source is None and outcome.eval_record is None
    assert not outcome.sandboxed and outcome.handover_seconds is None and not outcome.started_warm
