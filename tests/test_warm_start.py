"""Warm start: a trial run in an interpreter started ahead behaves exactly as a cold one, or starts cold."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from supervisor.trial.environment import scrub_environment
from supervisor.trial.evaluation import EvaluatorSpec
from supervisor.trial.runner import TrialSpec, run_trial, trial_argv
from supervisor.trial.sandbox import Mount, plan, probe
from supervisor.trial.warm_start import (
    LATE_VARIABLES,
    WarmStarter,
    is_python_script,
    modules_to_preload,
    writes_environment,
)
from tests.loop_support import (
    PROJECT,
    CallbackAgent,
    edit,
    fake_config,
    journal,
    process_alive,
    trial,
)

pytestmark = pytest.mark.timeout(120)

# How a trial ends: it hands over its "model" (the stand-in harness's JSON) for the evaluator to measure.
HAND_OVER = """
def hand_over(val_bpb):
    import json, os
    path = os.environ["AUTORESEARCH_MODEL_OUT"]
    with open(path + ".part", "w") as fh:
        json.dump({"val_bpb": val_bpb}, fh)
    os.replace(path + ".part", path)
"""

# Prints what a script can see of how it was started; everything but the first line must match cold vs warm.
PROBE = """
import sys
preloaded = "decimal" in sys.modules   # before its own import: true only when started warm
import decimal
import json, os, resource
print(json.dumps({
    "preloaded": preloaded,
    "name": __name__,
    "file": __file__,
    "argv": sys.argv,
    "path0": sys.path[0],
    "cwd": os.getcwd(),
    "stdin": sys.stdin.read(),
    "env": {k: v for k, v in os.environ.items() if k.startswith("AUTORESEARCH_")},
    "home": os.environ.get("HOME"),
    "pythonunbuffered": os.environ.get("PYTHONUNBUFFERED"),
    "rlimit_as": resource.getrlimit(resource.RLIMIT_AS)[0],
    "pgid_is_pid": os.getpgid(0) == os.getpid(),
}), flush=True)
""" + HAND_OVER + """
hand_over(1.25)
print("---")
print("num_steps: 1")
"""


def write_trainer(root: Path, body: str) -> Path:
    (root / "trainer").mkdir(parents=True, exist_ok=True)
    script = root / "trainer" / "train.py"
    script.write_text(textwrap.dedent(body), encoding="utf-8")
    return script


# A stand-in evaluator: the job line, then the validation bytes on stdin; the "model" holds its number.
EVALUATOR = """
import json, os, sys
stdin = sys.stdin.buffer
line = stdin.readline()
if line.strip():
    job = json.loads(line)
    stdin.read(job["val_size"] + job["token_bytes_size"])
    with open(job["model"]) as fh:
        record = {"ok": True, "val_bpb": json.load(fh)["val_bpb"]}
    with open(job["record"] + ".part", "w") as fh:
        json.dump(record, fh)
    os.replace(job["record"] + ".part", job["record"])
"""


def stand_in_evaluator(root: Path, out: str) -> EvaluatorSpec:
    harness, cache = root / "harness", root / "cache"
    if not harness.exists():
        harness.mkdir()
        (harness / "evaluate.py").write_text(EVALUATOR)
        cache.mkdir()
        (cache / "manifest.json").write_text(json.dumps({"val_tokens": "val.bin", "token_bytes": "token_bytes.npy"}))
        (cache / "val.bin").write_bytes(b"\0\1" * 50_000)
        (cache / "token_bytes.npy").write_bytes(b"table")
    return EvaluatorSpec(command=[sys.executable, "-I", str(harness / "evaluate.py")], env=scrub_environment(os.environ),
                         cwd=root, job_dir=root / out, expected=None, cache_dir=cache, device="cpu")


def spec_for(root: Path, out: str, seed: int = 42, **overrides) -> TrialSpec:
    fields = dict(
        command=[sys.executable, "trainer/train.py"], cwd=root, log_path=root / out / "log.txt",
        metrics_path=root / out / "metrics.jsonl", eval_record_path=root / out / "eval.json", budget_s=5.0,
        grace_s=10.0, seed=seed, extra_env={"AUTORESEARCH_PROBE_FIXED": "same"},
        evaluator=stand_in_evaluator(root, out),
    )
    fields.update(overrides)
    return TrialSpec(**fields)


def probe_output(spec: TrialSpec) -> dict:
    return json.loads(spec.log_path.read_text().splitlines()[0])


def wait_gone(pid: int, timeout: float = 10.0) -> bool:
    until = time.monotonic() + timeout
    while time.monotonic() < until:
        if not process_alive(pid):
            return True
        time.sleep(0.05)
    return False


def test_which_commands_and_scripts_qualify(tmp_path: Path) -> None:
    assert is_python_script([sys.executable, "trainer/train.py"])
    assert is_python_script(["/usr/bin/python3.12", "train.py"])
    assert not is_python_script(["uv", "run", "train.py"])
    assert not is_python_script([sys.executable, "-u", "train.py"])
    assert not is_python_script(["bash", "train.py"])
    assert writes_environment('import os\nos.environ["CUDA_VISIBLE_DEVICES"] = "1"\n')
    assert writes_environment("os.environ.setdefault('OMP_NUM_THREADS', '4')")
    assert writes_environment("os.putenv('X', '1')")
    assert not writes_environment('seed = os.environ.get("AUTORESEARCH_SEED")\nif os.environ["X"] == "1": pass')

    script = write_trainer(tmp_path, """
        from __future__ import annotations
        import json, decimal.context as ctx
        import torch
        from torch.nn import functional as F
        from prepare import MAX_SEQ_LEN
        from . import sibling
        import helpers
        def late():
            import fractions
    """)
    (tmp_path / "trainer" / "prepare.py").write_text("MAX_SEQ_LEN = 1\n")
    (tmp_path / "trainer" / "helpers").mkdir()
    # Local modules (the harness above all) are read at hand-over, never ahead; torch brings its lazy dynamo and
    # what the hand-over at the end of the trial imports (torch.export and its serializer).
    assert modules_to_preload(script) == ["json", "decimal.context", "torch", "torch._dynamo", "torch.export",
                                          "torch._export.serde.serialize", "torch.nn"]
    script.write_text("def broken(:\n")
    assert modules_to_preload(script) == []


@pytest.mark.parametrize(("memory_limit_mb", "via_link"), [(None, False), (4096, False), (None, True)])
def test_a_warm_trial_sees_what_a_cold_one_sees(tmp_path: Path, memory_limit_mb: int | None, via_link: bool) -> None:
    write_trainer(tmp_path / "real", PROBE)
    if via_link:  # a run folder reached through a symbolic link: __file__ and sys.path[0] differ as in Python
        (tmp_path / "link").symlink_to(tmp_path / "real")
    tmp_path = tmp_path / ("link" if via_link else "real")
    cold_spec = spec_for(tmp_path, "cold", seed=7, memory_limit_mb=memory_limit_mb)
    cold = run_trial(cold_spec)

    warm = WarmStarter(tmp_path / "staging")
    warm.prepare(spec_for(tmp_path, "ignored", seed=42, memory_limit_mb=memory_limit_mb))
    waiting = warm.waiting_pid
    assert waiting is not None
    warm_spec = spec_for(tmp_path, "warm", seed=7, memory_limit_mb=memory_limit_mb)
    started: list[int] = []
    hot = run_trial(warm_spec, warm_start=warm, on_start=lambda pid: started.append(pid))
    assert (cold.status, cold.started_warm, hot.status, hot.started_warm) == ("ok", False, "ok", True), hot.reason
    assert hot.val_bpb == cold.val_bpb == 1.25 and hot.val_bpb_source == "evaluator"
    assert started == [waiting]  # the waiting process became the trial: its pid is what the ledger records
    assert warm.waiting_pid is None  # handed over, not kept

    seen_cold, seen_warm = probe_output(cold_spec), probe_output(warm_spec)
    assert (seen_cold.pop("preloaded"), seen_warm.pop("preloaded")) == (False, True)
    # Per-trial variables reach it at hand-over (seed 7, the warm trial's own paths), not the prepared ones.
    assert seen_warm["env"]["AUTORESEARCH_SEED"] == "7"
    assert seen_warm["env"]["AUTORESEARCH_METRICS"] == str(warm_spec.offered_metrics_path)
    assert seen_warm["env"]["AUTORESEARCH_MODEL_OUT"] == str(warm_spec.offered_model_path)
    assert "AUTORESEARCH_EVAL_RECORD" not in seen_warm["env"]
    seen_warm["env"]["AUTORESEARCH_METRICS"] = str(cold_spec.offered_metrics_path)
    seen_warm["env"]["AUTORESEARCH_MODEL_OUT"] = str(cold_spec.offered_model_path)
    assert seen_warm == seen_cold
    assert seen_cold["name"] == "__main__" and seen_cold["stdin"] == "" and seen_cold["pgid_is_pid"]
    if memory_limit_mb:
        assert seen_cold["rlimit_as"] == memory_limit_mb * 2**20
    assert not list((tmp_path / "staging").glob(".warm-*"))  # its staged log became the trial's


@pytest.mark.parametrize(("body", "reason"), [
    ("""
        import json
        def train():
            raise RuntimeError("shapes do not match")
        if __name__ == "__main__":
            train()
    """, "exit code 1: RuntimeError: shapes do not match"),
    ("import json\ndef broken(:\n    pass\n", "exit code 1: SyntaxError: invalid syntax"),
    ("import sys\nprint('FAIL: loss is nan at step 3')\nsys.exit(1)\n", "FAIL: loss is nan at step 3"),
])
def test_a_warm_trial_that_fails_reads_like_a_cold_one(tmp_path: Path, body: str, reason: str) -> None:
    write_trainer(tmp_path, body)
    cold_spec, warm_spec = spec_for(tmp_path, "cold"), spec_for(tmp_path, "warm")
    cold = run_trial(cold_spec)
    warm = WarmStarter(tmp_path / "staging")
    warm.prepare(warm_spec)
    hot = run_trial(warm_spec, warm_start=warm)
    assert hot.started_warm and hot.status == cold.status == "crash"
    assert (hot.reason, hot.exit_code) == (cold.reason, cold.exit_code)
    assert reason in hot.reason
    # The traceback starts at the script: no frames of the bootstrap or runpy.
    assert warm_spec.log_path.read_text() == cold_spec.log_path.read_text()


def test_a_script_that_writes_its_environment_starts_cold(tmp_path: Path) -> None:
    write_trainer(tmp_path, 'import os\nos.environ["OMP_NUM_THREADS"] = "1"\n' + PROBE)
    warm = WarmStarter(tmp_path / "staging")
    warm.prepare(spec_for(tmp_path, "x"))
    waiting = warm.waiting_pid
    outcome = run_trial(spec_for(tmp_path, "t"), warm_start=warm)
    assert outcome.status == "ok" and not outcome.started_warm
    assert waiting is not None and wait_gone(waiting)  # the unfit interpreter was killed, not leaked
    assert not list((tmp_path / "staging").glob(".warm-*"))


def test_changed_settings_start_cold_and_a_dead_interpreter_is_not_used(tmp_path: Path) -> None:
    write_trainer(tmp_path, PROBE)
    warm = WarmStarter(tmp_path / "staging")
    warm.prepare(spec_for(tmp_path, "x", extra_env={"AUTORESEARCH_PROBE_FIXED": "old"}))
    first = warm.waiting_pid
    outcome = run_trial(spec_for(tmp_path, "a"), warm_start=warm)
    assert not outcome.started_warm and outcome.status == "ok" and first is not None and wait_gone(first)

    warm.prepare(spec_for(tmp_path, "x"))
    second = warm.waiting_pid
    assert second is not None
    os.killpg(second, signal.SIGKILL)
    assert wait_gone(second)
    outcome = run_trial(spec_for(tmp_path, "b"), warm_start=warm)
    assert not outcome.started_warm and outcome.status == "ok"

    warm.prepare(spec_for(tmp_path, "x"))
    kept = warm.waiting_pid
    warm.prepare(spec_for(tmp_path, "y", seed=3))  # only per-trial values differ: the same one is kept
    assert warm.waiting_pid == kept
    warm.discard()
    assert kept is not None and wait_gone(kept)


def test_commands_other_than_python_script_are_never_warmed(tmp_path: Path) -> None:
    write_trainer(tmp_path, PROBE)
    warm = WarmStarter(tmp_path / "staging")
    warm.prepare(spec_for(tmp_path, "x", command=["/bin/sh", "-c", f"{sys.executable} trainer/train.py"]))
    assert warm.waiting_pid is None


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="parent-death signal is Linux only")
def test_a_waiting_interpreter_dies_with_its_supervisor(tmp_path: Path) -> None:
    write_trainer(tmp_path, PROBE)
    holder = subprocess.Popen(
        [sys.executable, "-c", textwrap.dedent(f"""
            import sys, time
            from pathlib import Path
            sys.path.insert(0, {str(PROJECT)!r})
            from supervisor.trial.warm_start import WarmStarter
            from tests.test_warm_start import spec_for
            warm = WarmStarter(Path({str(tmp_path)!r}) / "staging")
            warm.prepare(spec_for(Path({str(tmp_path)!r}), "x"))
            print(warm.waiting_pid, flush=True)
            time.sleep(600)
        """)], stdout=subprocess.PIPE, text=True, cwd=PROJECT)
    assert holder.stdout is not None
    waiting = int(holder.stdout.readline())
    assert process_alive(waiting)
    holder.kill()
    holder.wait()
    assert wait_gone(waiting, timeout=5)


def test_the_loop_starts_trials_warm_and_no_warm_start_turns_it_off(tmp_path: Path) -> None:
    from supervisor.run.loop import Supervisor

    def agent_script(ctx, n):
        turns = [[edit("LR = 0.02", "LR = 0.04"), trial("lr up")], [journal(1)],
                 [edit("WIDTH = 32", "WIDTH = 64"), trial("wider")], [journal(2)]]
        return turns[n - 1] if n <= len(turns) else None

    for warm_start in (True, False):
        seen: list[bool] = []

        def spy(spec, seen=seen, **kwargs):
            outcome = run_trial(spec, **kwargs)
            seen.append(outcome.started_warm)
            return outcome

        config = fake_config(tmp_path, tag=f"w{int(warm_start)}", budget_s=2.0, noise_repeats=2,
                             warm_start=warm_start)
        sup = Supervisor(config, CallbackAgent(agent_script), runner=spy)
        assert sup.run() == "finished"
        # Two noise repeats, then two trials: the run's start prepares the first interpreter, and every run
        # prepares the next one's.
        assert seen == [warm_start] * 4
        assert not list(config.run_dir.joinpath("trials").glob(".warm-*"))  # nothing left at the end


def test_compile_modules_are_preloaded_only_for_a_torch_script(tmp_path: Path) -> None:
    """After a trial that compiled, the next interpreter also imports the compile stack, but only for torch."""
    source = 'import sys\nahead = "fractions" in sys.modules\nimport torch\nprint(ahead)\n' + HAND_OVER + "hand_over(1.0)\n"
    write_trainer(tmp_path, source)
    warm = WarmStarter(tmp_path / "staging")
    warm.prepare(spec_for(tmp_path, "x"), also=("fractions",))
    spec = spec_for(tmp_path, "a")
    assert run_trial(spec, warm_start=warm).started_warm
    assert spec.log_path.read_text().splitlines()[0] == "True"

    write_trainer(tmp_path, source.replace("import torch\n", ""))
    warm.prepare(spec_for(tmp_path, "x"), also=("fractions",))
    spec = spec_for(tmp_path, "b")
    assert run_trial(spec, warm_start=warm).started_warm
    assert spec.log_path.read_text().splitlines()[0] == "False"


def test_the_loop_preloads_the_compile_stack_after_a_trial_that_compiled(tmp_path: Path) -> None:
    from supervisor.run.loop import Supervisor
    from supervisor.trial.warm_start import COMPILE_MODULES

    compiled = iter(["true", "false"])

    def runner(spec, **kwargs):
        outcome = run_trial(spec, **kwargs)
        outcome.summary["compiled"] = next(compiled)  # as train.py reports it
        return outcome

    def agent_script(ctx, n):
        turns = [[trial("baseline")], [journal(1)], [edit("LR = 0.02", "LR = 0.04"), trial("lr up")], [journal(2)]]
        return turns[n - 1] if n <= len(turns) else None

    sup = Supervisor(fake_config(tmp_path, budget_s=1.0), CallbackAgent(agent_script), runner=runner)
    assert sup._warm is not None
    asked: list[tuple[str, ...]] = []
    original = sup._warm.prepare

    def prepare(spec, also=()):
        asked.append(also)
        original(spec, also=also)

    sup._warm.prepare = prepare
    assert sup.run() == "finished"
    assert asked == [(), COMPILE_MODULES, ()]  # run start, after the compiled trial, after the eager one


def test_late_variables_are_the_per_trial_ones_and_the_key_is_the_whole_command_line(tmp_path: Path) -> None:
    assert set(LATE_VARIABLES) == {"AUTORESEARCH_TIME_BUDGET", "AUTORESEARCH_SEED", "AUTORESEARCH_METRICS",
                                   "AUTORESEARCH_MODEL_OUT"}
    write_trainer(tmp_path, PROBE)
    spec = spec_for(tmp_path, "x", memory_limit_mb=4096)
    # The memory cap is inside the command line a warm process is started with (and compared by).
    assert trial_argv(spec, spec.command)[-2:] == spec.command and "-I" in trial_argv(spec, spec.command)


def test_a_warm_start_works_inside_a_real_sandbox(tmp_path: Path) -> None:
    choice = probe()
    if not choice.active:
        pytest.skip(f"no sandbox on this machine: {choice.why_not}")
    assert choice.bwrap is not None
    write_trainer(tmp_path, PROBE)
    exchange = tmp_path / "exchange"
    exchange.mkdir()
    # As TrialSetup.trial_plan mounts them: the trainer's folder read-only under /trial, the exchange writable.
    sandbox = plan(choice.bwrap, [Mount(tmp_path / "trainer", "/trial/trainer"), Mount(exchange, "/out", writable=True)],
                   "/trial")

    def sandboxed(out: str, seed: int = 7) -> TrialSpec:
        return spec_for(tmp_path, out, seed=seed, exchange_dir=exchange, sandbox=sandbox, sandbox_label="bwrap")

    cold_spec = sandboxed("cold")
    cold = run_trial(cold_spec)
    assert cold.status == "ok" and cold.sandboxed and not cold.started_warm, (cold.reason, cold.log_tail)

    warm = WarmStarter(tmp_path / "staging")
    warm.prepare(sandboxed("ignored", seed=42))
    waiting = warm.waiting_pid
    assert waiting is not None
    warm_spec = sandboxed("warm")
    started: list[int] = []
    hot = run_trial(warm_spec, warm_start=warm, on_start=started.append)
    assert (hot.status, hot.started_warm, hot.sandboxed, hot.sandbox) == ("ok", True, True, "bwrap"), \
        (hot.reason, hot.log_tail)
    assert started == [waiting] and warm.waiting_pid is None
    assert hot.val_bpb == 1.25 and hot.val_bpb_source == "evaluator"

    seen_cold, seen_warm = probe_output(cold_spec), probe_output(warm_spec)
    assert (seen_cold.pop("preloaded"), seen_warm.pop("preloaded")) == (False, True)
    assert seen_warm == seen_cold  # the same exchange folder, so even the paths agree
    # What the trial saw is the sandbox's view: its own paths, its private home, the seed of this trial.
    assert seen_warm["file"] == "/trial/trainer/train.py" and seen_warm["cwd"] == "/trial"
    assert seen_warm["env"]["AUTORESEARCH_METRICS"] == "/out/metrics.jsonl"
    assert seen_warm["env"]["AUTORESEARCH_MODEL_OUT"] == "/out/model.pt2"
    assert seen_warm["env"]["AUTORESEARCH_SEED"] == "7"
    assert seen_warm["home"] == "/tmp/home"
    assert not list((tmp_path / "staging").glob(".warm-*"))
