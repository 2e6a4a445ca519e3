"""The trial runner against real subprocesses: small fake trainers that follow the contract."""

from __future__ import annotations

import json
import os
import sys
import textwrap
import threading
import time
import tracemalloc
from pathlib import Path

import pytest

from supervisor.trial.runner import (
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

pytestmark = pytest.mark.timeout(60)

SUMMARY = """
print("---")
print("val_bpb:          {val}")
print("training_seconds: 1.0")
print("peak_vram_mb:     unknown")
print("num_steps:        20")
"""


def make_spec(tmp_path: Path, body: str, **overrides) -> TrialSpec:
    """Write a fake trainer script and a spec that runs it in tmp_path."""
    script = tmp_path / "train.py"
    script.write_text(textwrap.dedent(body), encoding="utf-8")
    fields = dict(
        command=[sys.executable, str(script)],
        cwd=tmp_path,
        log_path=tmp_path / "out" / "run.log",
        metrics_path=tmp_path / "out" / "metrics.jsonl",
        eval_record_path=tmp_path / "out" / "eval.json",
        budget_s=10.0,
        grace_s=5.0,
        seed=42,
        extra_env={},
        memory_limit_mb=None,
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


# ---------------------------------------------------------------------------------------------
# Successful trials
# ---------------------------------------------------------------------------------------------


def test_streams_metrics_live_and_uses_the_eval_record(tmp_path: Path) -> None:
    body = """
        import json, os, sys, time
        metrics = open(os.environ["AUTORESEARCH_METRICS"], "w")
        for step in range(20):
            line = json.dumps({"step": step, "loss": 5.0 - step * 0.1, "written": time.time()})
            if step == 7:
                # A line written in two halves: the runner must not parse the first half.
                metrics.write(line[:10]); metrics.flush(); time.sleep(0.25)
                metrics.write(line[10:] + "\\n")
                metrics.write("this is not json\\n")
                metrics.write("[1, 2, 3]\\n")
            else:
                metrics.write(line + "\\n")
            metrics.flush()
            time.sleep(0.1)
        time.sleep(0.5)
        with open(os.environ["AUTORESEARCH_EVAL_RECORD"], "w") as f:
            json.dump({"val_bpb": 1.2345, "eval_tokens": 1000}, f)
        print("---")
        print("val_bpb: 1.2345")
        print("num_steps: 20")
        with open("exit_time", "w") as f:
            f.write(repr(time.time()))
    """
    spec = make_spec(tmp_path, body)
    seen: list[tuple[float, dict]] = []
    outcome = run_trial(spec, on_metric=lambda m: seen.append((time.time(), m)))

    assert outcome.status == "ok", outcome.reason
    assert outcome.reason == "ok"
    assert outcome.exit_code == 0
    assert outcome.val_bpb == pytest.approx(1.2345)
    assert outcome.val_bpb_source == "eval_record"
    assert outcome.eval_record == {"val_bpb": 1.2345, "eval_tokens": 1000}
    assert [m["step"] for _, m in seen] == list(range(20))
    assert [m["step"] for m in outcome.metrics] == list(range(20))
    # Seen live: each record arrived soon after it was written, and all of them before the
    # trainer even finished.
    exit_time = float((tmp_path / "exit_time").read_text())
    assert all(received < exit_time for received, _ in seen)
    assert max(received - m["written"] for received, m in seen) < 1.0
    assert outcome.summary["num_steps"] == "20"
    assert not outcome.timed_out and not outcome.stopped
    assert 2.0 < outcome.wall_seconds < 10.0


def test_last_summary_block_wins_over_a_forged_one(tmp_path: Path) -> None:
    body = """
        print("---")
        print("val_bpb: 0.0001")
        print("num_steps: 999999")
        print("training continues...")
        print("---")
        print("val_bpb: 1.5")
        print("device: cuda:0")
    """
    outcome = run_trial(make_spec(tmp_path, body))
    assert outcome.status == "ok"
    assert outcome.val_bpb == 1.5
    assert outcome.val_bpb_source == "summary"
    assert outcome.summary == {"val_bpb": "1.5", "device": "cuda:0"}


def test_eval_record_beats_the_printed_val_bpb(tmp_path: Path) -> None:
    body = """
        import json, os
        json.dump({"val_bpb": 1.25}, open(os.environ["AUTORESEARCH_EVAL_RECORD"], "w"))
        print("---")
        print("val_bpb: 0.5")
    """
    outcome = run_trial(make_spec(tmp_path, body))
    assert outcome.status == "ok"
    assert outcome.val_bpb == 1.25
    assert outcome.summary["val_bpb"] == "0.5"


def test_nan_in_the_eval_record_is_not_rescued_by_a_printed_number(tmp_path: Path) -> None:
    body = """
        import os
        open(os.environ["AUTORESEARCH_EVAL_RECORD"], "w").write('{"val_bpb": NaN}')
        print("---")
        print("val_bpb: 0.9")
    """
    outcome = run_trial(make_spec(tmp_path, body))
    assert outcome.status == "crash"
    assert outcome.reason.startswith("val_bpb is nan")
    assert outcome.val_bpb is None


def test_unreadable_eval_record_falls_back_to_the_summary(tmp_path: Path) -> None:
    body = """
        import os
        open(os.environ["AUTORESEARCH_EVAL_RECORD"], "w").write('{"val_bpb": 1.1')  # torn write
        print("---")
        print("val_bpb: 0.9")
    """
    outcome = run_trial(make_spec(tmp_path, body))
    assert outcome.status == "ok"
    assert outcome.val_bpb == 0.9
    assert outcome.val_bpb_source == "summary"


def test_stale_files_of_an_earlier_trial_are_not_seen(tmp_path: Path) -> None:
    spec = make_spec(tmp_path, 'print("---")\nprint("val_bpb: 2.0")\n')
    spec.metrics_path.parent.mkdir(parents=True)
    spec.metrics_path.write_text('{"step": 1, "loss": 9.9}\n')
    spec.eval_record_path.write_text('{"val_bpb": 0.1}')
    outcome = run_trial(spec)
    assert outcome.status == "ok"
    assert outcome.val_bpb == 2.0
    assert outcome.metrics == []
    assert outcome.eval_record is None


def test_last_metric_line_without_newline_is_read(tmp_path: Path) -> None:
    body = """
        import os
        open(os.environ["AUTORESEARCH_METRICS"], "w").write('{"step": 0}\\n{"step": 1}')
        print("---")
        print("val_bpb: 1.0")
    """
    outcome = run_trial(make_spec(tmp_path, body))
    assert [m["step"] for m in outcome.metrics] == [0, 1]


def test_a_failing_callback_does_not_break_the_trial(tmp_path: Path) -> None:
    body = """
        import os
        open(os.environ["AUTORESEARCH_METRICS"], "w").write('{"step": 0}\\n{"step": 1}\\n')
        print("---")
        print("val_bpb: 1.0")
    """

    def explode(_metric: dict) -> None:
        raise RuntimeError("UI bug")

    outcome = run_trial(make_spec(tmp_path, body), on_metric=explode)
    assert outcome.status == "ok"
    assert len(outcome.metrics) == 2


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


def test_exit_zero_without_summary(tmp_path: Path) -> None:
    outcome = run_trial(make_spec(tmp_path, 'print("trained, forgot to report")\n'))
    assert outcome.status == "crash"
    assert outcome.reason == "no summary"
    assert outcome.exit_code == 0
    assert "forgot to report" in outcome.log_tail


@pytest.mark.parametrize(
    ("printed", "reason"),
    [("nan", "val_bpb is nan"), ("unknown", "val_bpb is unknown"), ("inf", "val_bpb is inf")],
)
def test_non_finite_val_bpb(tmp_path: Path, printed: str, reason: str) -> None:
    outcome = run_trial(make_spec(tmp_path, f'print("---")\nprint("val_bpb: {printed}")\n'))
    assert outcome.status == "crash"
    assert outcome.reason == reason
    assert outcome.val_bpb is None


def test_summary_without_val_bpb(tmp_path: Path) -> None:
    outcome = run_trial(make_spec(tmp_path, 'print("---")\nprint("num_steps: 3")\n'))
    assert outcome.status == "crash"
    assert outcome.reason == "no val_bpb in summary"


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
        print("---")
        print("val_bpb: 1.0")
    """
    outcome = run_trial(make_spec(tmp_path, body, memory_limit_mb=256))
    assert outcome.status == "crash"
    assert "MemoryError" in outcome.reason
    assert f"limit {256 * 1024 * 1024}" in outcome.log_tail


# ---------------------------------------------------------------------------------------------
# Deadline, stop, orphans
# ---------------------------------------------------------------------------------------------


def test_hanging_trial_is_killed_at_the_deadline_with_its_whole_group(tmp_path: Path) -> None:
    body = """
        import os, subprocess, sys, time
        child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"])
        open("pgid", "w").write(str(os.getpgid(0)))
        print("training...", flush=True)
        time.sleep(600)
    """
    spec = make_spec(tmp_path, body, budget_s=1.0, grace_s=1.0)
    outcome = run_trial(spec)
    assert outcome.status == "crash"
    assert outcome.timed_out and not outcome.stopped
    assert outcome.reason == "killed at deadline (budget 1s + grace 1s)"
    assert 1.9 < outcome.wall_seconds < 6.0
    assert "training..." in outcome.log_tail
    assert group_gone(int((tmp_path / "pgid").read_text()))


def test_trial_that_ignores_sigterm_is_sigkilled(tmp_path: Path) -> None:
    body = """
        import os, signal, time
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        open("pgid", "w").write(str(os.getpgid(0)))
        time.sleep(600)
    """
    spec = make_spec(tmp_path, body, budget_s=0.5, grace_s=0.5, term_timeout_s=0.5)
    outcome = run_trial(spec)
    assert outcome.timed_out
    assert outcome.exit_code == -9
    assert outcome.wall_seconds < 5.0
    assert group_gone(int((tmp_path / "pgid").read_text()))


def test_child_ignoring_sigterm_dies_after_a_clean_exit(tmp_path: Path) -> None:
    body = """
        import os, signal, time
        pid = os.fork()
        if pid == 0:
            signal.signal(signal.SIGTERM, signal.SIG_IGN)
            time.sleep(600)
            os._exit(0)
        open("child_pid", "w").write(str(pid))
        open("pgid", "w").write(str(os.getpgid(0)))
        print("---")
        print("val_bpb: 1.0")
    """
    outcome = run_trial(make_spec(tmp_path, body))
    assert outcome.status == "ok"
    assert pid_dead(int((tmp_path / "child_pid").read_text()))
    assert group_gone(int((tmp_path / "pgid").read_text()))


@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="descendant tracking needs /proc")
def test_child_that_left_the_session_is_killed_too(tmp_path: Path) -> None:
    body = """
        import os, time
        pid = os.fork()
        if pid == 0:
            os.setsid()
            time.sleep(600)
            os._exit(0)
        open("child_pid", "w").write(str(pid))
        time.sleep(1.5)  # long enough for the runner to have seen the child
        print("---")
        print("val_bpb: 1.0")
    """
    outcome = run_trial(make_spec(tmp_path, body))
    assert outcome.status == "ok"
    assert pid_dead(int((tmp_path / "child_pid").read_text()))


def test_stop_event_stops_a_running_trial(tmp_path: Path) -> None:
    body = """
        import os, time
        open("pgid", "w").write(str(os.getpgid(0)))
        print("training...", flush=True)
        time.sleep(600)
    """
    spec = make_spec(tmp_path, body, budget_s=60.0, grace_s=60.0)
    stop = threading.Event()
    timer = threading.Timer(0.7, stop.set)
    timer.start()
    try:
        outcome = run_trial(spec, stop_event=stop)
    finally:
        timer.cancel()
    assert outcome.status == "crash"
    assert outcome.stopped and not outcome.timed_out
    assert outcome.reason == "stopped by the person"
    assert outcome.wall_seconds < 4.0
    assert group_gone(int((tmp_path / "pgid").read_text()))


def test_stop_event_already_set_starts_nothing(tmp_path: Path) -> None:
    spec = make_spec(tmp_path, 'open("started", "w").write("yes")\n')
    stop = threading.Event()
    stop.set()
    outcome = run_trial(spec, stop_event=stop)
    assert outcome.stopped
    assert outcome.reason == "stopped by the person"
    assert not (tmp_path / "started").exists()


def test_huge_output_stays_on_disk_and_the_tail_is_right(tmp_path: Path) -> None:
    body = """
        import sys
        chunk = "".join(f"noise line {i:08d} " + "x" * 80 + "\\n" for i in range(1000))
        for _ in range(500):  # about 50 MB
            sys.stdout.write(chunk)
        for i in range(100):
            print(f"final line {i}")
        print("---")
        print("val_bpb: 1.75")
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
    assert outcome.status == "ok"
    assert outcome.val_bpb == 1.75
    tail = outcome.log_tail.splitlines()
    assert len(tail) == 60
    assert tail[-1] == "val_bpb: 1.75"
    assert tail[-3] == "final line 99"
    assert tail[0] == "final line 42"


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
    body = """
        import json, os
        json.dump(dict(os.environ), open("env.json", "w"))
        print("---")
        print("val_bpb: 1.0")
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
    assert env["AUTORESEARCH_METRICS"] == str(spec.metrics_path)
    assert env["AUTORESEARCH_EVAL_RECORD"] == str(spec.eval_record_path)
    assert env["AUTORESEARCH_CACHE"] == str(tmp_path / "cache")
    assert env["AUTORESEARCH_DEVICE"] == "cpu"
    assert env["PYTHONUNBUFFERED"] == "1"
    assert env["TOKENIZERS_PARALLELISM"] == "false"
    assert env["CUDA_VISIBLE_DEVICES"] == "0"
    assert env["PATH"] == os.environ["PATH"]
    assert env["HOME"] == os.environ["HOME"]


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
        "http_proxy": "http://proxy.example.com:3128",
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
    }
    scrubbed = scrub_environment({**keep, **drop})
    assert scrubbed == keep
    assert all(not is_secret_name(name) for name in keep)


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
