"""One command that checks everything a GPU night depends on, inside a hard time budget (issue 18).

    python benchmarks/gpu_check.py [--out DIR] [--deadline 510] [--tiny] [--steps 1,2,3a,...] [--cache DIR]
                                   [--work DIR] [--budget 40] [--eager-budget 25] [--run-budget 15]
                                   [--sweep-budget 15] [--sweep-sizes 16,64,128,32] [--cpu-compile]

Steps, in order (each one's findings are a row of the table; every raw log goes to gpu_check.log):

  1   `autoresearch doctor --json` with every check real: compile, max-autotune, bf16, each SDPA kernel,
      FlexAttention, the peak FLOP/s MFU is measured against.
  2   the bf16 matmul ceiling (8192^3, CUDA events), so MFU reads against what this GPU really does too.
  3a  the full-profile data cache from the embedded corpus (no network).
  3b  the trainer, compiled, for --budget s: steps, tokens/s, MFU, peak VRAM, start-up/compile/eval seconds.
  3c  the same, eager, for --eager-budget s.
  3d  a headless `autoresearch run` (offline agent, 2 trials, --noise-repeats 0): the non-training time per
      trial against upstream's 25.8 s on an H100, with a watcher counting the live metric rows.
  4   a DEVICE_BATCH_SIZE sweep (--sweep-budget s each, larger sizes skipped when memory says they won't
      fit), the best by measured tokens/s, and the recommendation.
  5   the sandbox and trusted evaluator with the GPU passed through (records "not landed" until they exist).
  6   telemetry: NVML through the UI's own telemetry_sample(), sampled all along; the metric stream of 3d.

The whole run stops by --deadline seconds (default 510, under the device tool's 9 minutes): a step starts
only when the time it needs is left, and runs with a timeout that ends before the deadline; a step that
would overrun is skipped and says so. Every subprocess runs in its own process group with a timeout, and
the table is rewritten after each step, so a Ctrl-C, a SIGTERM or a kill still leaves what was measured.

Output in --out (default $OUT, else ./gpu_check_out): gpu_check.md (the table), gpu_check.json (every
number), gpu_check.log (each step's raw stdout and stderr). Three files, as the device tool brings back at
most eight. Caches, run folders and train.py copies live in --work (a temporary folder by default).

--tiny shrinks every step to run on a CPU in a few minutes (small profile, seconds of budget, a
256^3 matmul, batch sizes 4,8): GPU-only findings say "skipped: no CUDA", and the flow (timeouts,
parsing, the table) is exercised. tests/test_gpu_check.py runs it.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import importlib.util
import json
import os
import re
import shutil
import signal
import statistics
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

BENCH_DIR = Path(__file__).resolve().parent
REPO_ROOT = BENCH_DIR.parent
sys.path.insert(0, str(BENCH_DIR))
sys.path.insert(0, str(REPO_ROOT))  # the device machine runs this from a plain copy, no install

from trainer_common import Bounded, run_bounded, run_trial_bounded  # noqa: E402

from supervisor.trial.platform_info import platform_info, telemetry_sample  # noqa: E402

# Upstream autoresearch's README, one H100: total_seconds 325.9 - training_seconds 300.1 outside training.
UPSTREAM_NON_TRAINING_S = 25.8
OK, FAIL, TIMEOUT, SKIPPED, NOT_LANDED = "ok", "fail", "timeout", "skipped", "not landed"
RESERVE_S = 8.0  # kept back from every step for the steps after it that cost nothing and the final write
LOG_CAP = 1_000_000  # characters of one stream kept in gpu_check.log (the device tool's cap is 16 MiB a file)
STEP_IDS = ("1", "2", "3a", "3b", "3c", "3d", "4", "5", "6")
# The doctor checks that decide whether the GPU side works (the data cache is step 3a's business).
GPU_CHECKS = ("torch", "gpu", "bf16", "torch.compile", "max-autotune", "attention", "mfu", "telemetry")
# Where the sandbox and the trusted evaluator will live; step 5 looks for them (none has landed yet).
SANDBOX_MODULES = ("supervisor.trial.sandbox",)
DOCTOR_AGAIN_S = 60.0  # kept from doctor --autotune for a run without it, should max-autotune hang
CLI = [sys.executable, "-c", "import sys; from supervisor.cli.main import main; sys.exit(main())"]


@dataclass(frozen=True)
class Settings:
    """Sizes and per-step time caps (seconds) of one mode."""

    profile: str
    prepare_max_mb: float | None
    budget: float  # compiled trial
    eager_budget: float
    run_budget: float  # each trial of the headless run
    run_trials: int
    sweep_budget: float
    sweep_sizes: tuple[int, ...]
    matmul_size: int
    matmul_iters: int
    doctor_compile: bool
    doctor_autotune: bool
    doctor_cap: float
    prepare_cap: float
    trial_extra: float  # start-up + compile + eval allowance on top of a trial's budget, at most
    trial_need: float  # ... and at least (below this a trial is not started)


# Sweep order: 16 is step 3b's run; 64 and 128 (upstream's) before 32, so that a sweep the deadline cuts
# short has measured the sizes most likely to win.
FULL = Settings(profile="full", prepare_max_mb=None, budget=40, eager_budget=25, run_budget=15, run_trials=2,
                sweep_budget=15, sweep_sizes=(16, 64, 128, 32), matmul_size=8192, matmul_iters=50,
                doctor_compile=True, doctor_autotune=True, doctor_cap=170, prepare_cap=150, trial_extra=150,
                trial_need=40)
# The CPU's torch.compile check alone takes ~50 s on the 2-core build machine: --tiny leaves it out.
TINY = Settings(profile="small", prepare_max_mb=1, budget=3, eager_budget=3, run_budget=2, run_trials=2,
                sweep_budget=2, sweep_sizes=(4, 8), matmul_size=256, matmul_iters=5, doctor_compile=False,
                doctor_autotune=False, doctor_cap=90, prepare_cap=120, trial_extra=90, trial_need=10)


@dataclass
class StepResult:
    step: str
    title: str
    status: str
    result: str
    seconds: float = 0.0
    data: dict[str, Any] = field(default_factory=dict)


# ---- telemetry, sampled the whole time through the UI's own function ----------------------------------
class TelemetrySampler:
    """telemetry_sample() once a second in a thread, each sample tagged with the step that was running."""

    def __init__(self, every_s: float = 1.0) -> None:
        self.every_s = every_s
        self.label = "start"
        self.samples: list[dict[str, Any]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="telemetry", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)

    def _loop(self) -> None:
        while not self._stop.is_set():
            sample = telemetry_sample()
            sample["step"] = self.label
            self.samples.append(sample)
            self._stop.wait(self.every_s)


# ---- the run's shared state ------------------------------------------------------------------------------
class Context:
    def __init__(self, args: argparse.Namespace, settings: Settings, out_dir: Path, work_dir: Path) -> None:
        self.args = args
        self.s = settings
        self.out_dir = out_dir
        self.work = work_dir
        self.logs = work_dir / "logs"
        self.cache: Path = args.cache or work_dir / f"cache-{settings.profile}"
        self.started = time.monotonic()
        self.started_wall = time.strftime("%Y-%m-%d %H:%M:%S %Z")
        self.deadline = self.started + args.deadline
        self.device = "cpu"
        self.platform: dict[str, str] = {}
        self.results: list[StepResult] = []
        self.shared: dict[str, Any] = {}  # what later steps read: the ceiling, trial 3b, the headless run
        self.sampler = TelemetrySampler()
        self.state = "running"
        self.log_path = out_dir / "gpu_check.log"

    def left(self) -> float:
        return self.deadline - time.monotonic()

    def allot(self, need: float, cap: float) -> float | None:
        """The timeout for a step that needs at least `need` s and may take `cap`; None: not enough time left."""
        available = self.left() - RESERVE_S
        return None if available < need else min(cap, available)

    def no_time(self, need: float) -> str:
        return f"deadline: needs >= {need:.0f} s, {max(self.left() - RESERVE_S, 0):.0f} s left"

    def env(self) -> dict[str, str]:
        """The environment of every command: this checkout importable, output unbuffered, compile caches in
        the work folder (cold at the start, as on a fresh machine, shared between this run's trials)."""
        env = {k: v for k, v in os.environ.items() if not k.startswith("AUTORESEARCH_")}
        env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO_ROOT), env.get("PYTHONPATH", "")) if p)
        env.update(PYTHONUNBUFFERED="1", TORCHINDUCTOR_CACHE_DIR=str(self.work / "inductor-cache"),
                   TRITON_CACHE_DIR=str(self.work / "triton-cache"))
        return env

    def compile_env(self) -> dict[str, str]:
        env = self.env()
        return {k: env[k] for k in ("TORCHINDUCTOR_CACHE_DIR", "TRITON_CACHE_DIR", "PYTHONPATH")}

    def log(self, name: str, cmd: str, done: Bounded | None, note: str = "",
            metrics: list[dict[str, Any]] | None = None) -> None:
        """Append one command's raw output to gpu_check.log (at once, so a kill keeps it)."""
        with open(self.log_path, "a", errors="replace") as handle:
            handle.write(f"\n===== {name}: {cmd}\n")
            if note:
                handle.write(f"{note}\n")
            if done is not None:
                handle.write(f"exit {done.returncode}{' (timed out)' if done.timed_out else ''}, "
                             f"{done.seconds:.1f} s\n")
                for label, text in (("stdout", done.stdout), ("stderr", done.stderr)):
                    cut = f" (last {LOG_CAP:,} of {len(text):,} characters)" if len(text) > LOG_CAP else ""
                    handle.write(f"----- {label}{cut}\n{text[-LOG_CAP:]}\n")
            if metrics:  # the trainer's per-step records: step-time spread, warm-up, VRAM growth
                text = "\n".join(json.dumps(m) for m in metrics)
                handle.write(f"----- metrics.jsonl ({len(metrics)} records)\n{text[-LOG_CAP:]}\n")


# ---- small helpers ---------------------------------------------------------------------------------------
def _num(value: Any) -> float | None:
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return number if number == number else None  # NaN is no number here


def _fmt(value: float | None, spec: str = ".1f", unit: str = "") -> str:
    return "n/a" if value is None else f"{format(value, spec)}{unit}"


def _last_json(text: str) -> dict[str, Any] | None:
    for line in reversed(text.splitlines()):
        with contextlib.suppress(ValueError):
            data = json.loads(line)
            if isinstance(data, dict):
                return data
    return None


def _failure_line(done_stdout: str, done_stderr: str) -> str:
    """The line that says why a command failed: a `FAIL:` line, else the last line of stderr or stdout."""
    lines = (done_stdout + "\n" + done_stderr).splitlines()
    for line in lines:
        if line.startswith("FAIL:"):
            return line[:300]
    tail = [line for line in done_stderr.splitlines() if line.strip()] or [x for x in lines if x.strip()]
    return tail[-1][:300] if tail else "no output"


def _json_of(text: str) -> dict[str, Any] | None:
    """The JSON object a command printed (doctor --json prints one, over several lines)."""
    start = text.find("{")
    if start < 0:
        return None
    with contextlib.suppress(ValueError):
        data = json.loads(text[start:])
        return data if isinstance(data, dict) else None
    return _last_json(text)


# ---- step 1: doctor ---------------------------------------------------------------------------------------
def _doctor_command(ctx: Context, autotune: bool) -> list[str]:
    cmd = CLI + ["doctor", "--json", "--device", ctx.device, "--cache", str(ctx.cache),
                 "--journals", str(ctx.work / "journals")]
    if not ctx.s.doctor_compile:
        cmd.append("--no-compile")
    if autotune:
        cmd.append("--autotune")
    return cmd


def step_doctor(ctx: Context) -> StepResult:
    timeout = ctx.allot(20, ctx.s.doctor_cap)
    if timeout is None:
        return StepResult("1", "doctor", SKIPPED, ctx.no_time(20))
    autotune = ctx.s.doctor_autotune and ctx.device == "cuda"
    start = time.monotonic()
    # doctor prints its JSON at the end, so a hung max-autotune would take every other check with it: its
    # run stops AGAIN_S early, time enough for a second run without it.
    first = max(timeout - DOCTOR_AGAIN_S, 20.0) if autotune else timeout
    done = run_bounded(_doctor_command(ctx, autotune), timeout=first, log_dir=ctx.logs, name="1-doctor",
                       env=ctx.env(), cwd=REPO_ROOT)
    ctx.log("1 doctor", "autoresearch doctor --json" + (" --autotune" if autotune else ""), done)
    note = ""
    if done.timed_out and autotune:
        rest = ctx.allot(15, DOCTOR_AGAIN_S)
        if rest is not None:
            note = f"max-autotune: the run with it timed out after {done.seconds:.0f} s; "
            done = run_bounded(_doctor_command(ctx, False), timeout=rest, log_dir=ctx.logs, name="1-doctor-again",
                               env=ctx.env(), cwd=REPO_ROOT)
            ctx.log("1 doctor (again, without --autotune)", "autoresearch doctor --json", done)
    report = _json_of(done.stdout)
    checks: list[dict[str, Any]] = list(report.get("checks", [])) if report else []
    if not checks:
        status = TIMEOUT if done.timed_out else FAIL
        return StepResult("1", "doctor", status, note + _failure_line(done.stdout, done.stderr),
                          time.monotonic() - start)
    failed = [c["name"] for c in checks if c.get("status") == FAIL and c.get("name") in GPU_CHECKS]
    by_name = {c.get("name"): c for c in checks}
    parts = [f"{name} {by_name[name]['status']}" for name in GPU_CHECKS if name in by_name]
    if "attention" in by_name:
        parts.append(by_name["attention"]["detail"])
    if "mfu" in by_name:
        parts.append(by_name["mfu"]["detail"])
    if not ctx.s.doctor_compile:
        parts.append("compile check left out (--tiny: ~50 s on a CPU)")
    return StepResult("1", "doctor", FAIL if failed else OK, note + "; ".join(parts), time.monotonic() - start,
                      {"checks": checks, "failed": failed})


# ---- step 2: the matmul ceiling -------------------------------------------------------------------------
# Runs in its own process: the check itself never holds a CUDA context (or its memory) while trials run.
MATMUL_SCRIPT = r"""
import json, sys, time
sys.path.insert(0, sys.argv[1])
size, iters = int(sys.argv[2]), int(sys.argv[3])
import torch
if torch.cuda.is_available():
    from trainer_gpu import datasheet_peak, matmul_ceiling
    r = matmul_ceiling(size, iters)
    peak = datasheet_peak(r["device_name"])
    r["datasheet_tflops"] = peak / 1e12 if peak else None
else:  # the --tiny flow check: fp32 on the CPU, timed with the wall clock
    a, b = torch.randn(size, size), torch.randn(size, size)
    a @ b
    t0 = time.perf_counter()
    for _ in range(iters):
        a @ b
    seconds = time.perf_counter() - t0
    r = {"size": size, "dtype": "float32", "tflops": 2 * size**3 * iters / seconds / 1e12, "device_name": "cpu",
         "datasheet_tflops": None}
r["iters"] = iters
print(json.dumps(r))
"""


def step_matmul(ctx: Context) -> StepResult:
    timeout = ctx.allot(10, 60)
    if timeout is None:
        return StepResult("2", "bf16 matmul ceiling", SKIPPED, ctx.no_time(10))
    size, iters = ctx.s.matmul_size, ctx.s.matmul_iters
    done = run_bounded([sys.executable, "-c", MATMUL_SCRIPT, str(BENCH_DIR), str(size), str(iters)],
                       timeout=timeout, log_dir=ctx.logs, name="2-matmul", env=ctx.env(), cwd=REPO_ROOT)
    ctx.log("2 matmul ceiling", f"matmul {size}^3 x {iters}", done)
    r = _last_json(done.stdout)
    if done.returncode != 0 or r is None:
        return StepResult("2", "bf16 matmul ceiling", TIMEOUT if done.timed_out else FAIL,
                          _failure_line(done.stdout, done.stderr), done.seconds)
    tflops = float(r["tflops"])
    if ctx.device != "cuda":
        return StepResult("2", "bf16 matmul ceiling", SKIPPED,
                          f"no CUDA (flow check: CPU fp32 {size}^3 x {iters}: {tflops * 1000:.1f} GFLOP/s)",
                          done.seconds, r)
    ctx.shared["ceiling_tflops"] = tflops
    ctx.shared["datasheet_tflops"] = r.get("datasheet_tflops")
    sheet = _num(r.get("datasheet_tflops"))
    versus = f"; datasheet {sheet:.0f} TFLOP/s, {100 * tflops / sheet:.0f}% of it" if sheet else "; no datasheet peak"
    return StepResult("2", "bf16 matmul ceiling", OK,
                      f"{tflops:.1f} TFLOP/s ({size}^3 bf16, {iters} products after 5 warm-ups, CUDA events){versus}",
                      done.seconds, r)


# ---- step 3a: the data -------------------------------------------------------------------------------------
def _manifest(cache: Path) -> dict[str, Any] | None:
    with contextlib.suppress(OSError, ValueError):
        return json.loads((cache / "manifest.json").read_text())
    return None


def step_prepare(ctx: Context) -> StepResult:
    title = f"prepare ({ctx.s.profile} profile)"
    manifest = _manifest(ctx.cache)
    if manifest and manifest.get("profile") == ctx.s.profile:
        ctx.shared["cache_ready"] = True
        return StepResult("3a", title, OK, f"reused {ctx.cache}: {_describe_manifest(manifest)}", 0.0, manifest)
    if manifest:
        return StepResult("3a", title, FAIL, f"{ctx.cache} holds a {manifest.get('profile')!r} cache: pass another "
                                             f"--cache (this check never rebuilds someone's cache)")
    timeout = ctx.allot(20, ctx.s.prepare_cap)
    if timeout is None:
        return StepResult("3a", title, SKIPPED, ctx.no_time(20))
    options = ["--profile", ctx.s.profile, "--source", "embedded", "--cache", str(ctx.cache)]
    if ctx.s.prepare_max_mb:
        options += ["--max-mb", str(ctx.s.prepare_max_mb)]
    done = run_bounded(CLI + ["prepare", *options], timeout=timeout, log_dir=ctx.logs, name="3a-prepare",
                       env=ctx.env(), cwd=REPO_ROOT)
    ctx.log("3a prepare", "autoresearch prepare " + " ".join(options), done)
    how = "autoresearch prepare"
    if done.returncode == 2 and "usage:" in done.stderr:
        # The CLI did not take the options (an older `autoresearch prepare` dropped them): the same code, direct.
        left = ctx.allot(20, timeout - done.seconds)
        if left is None:
            return StepResult("3a", title, SKIPPED, ctx.no_time(20))
        how = "python trainer/prepare.py (autoresearch prepare refused the options)"
        done = run_bounded([sys.executable, str(REPO_ROOT / "trainer" / "prepare.py"), *options], timeout=left,
                           log_dir=ctx.logs, name="3a-prepare-direct", env=ctx.env(), cwd=REPO_ROOT)
        ctx.log("3a prepare (direct)", "python trainer/prepare.py " + " ".join(options), done)
    manifest = _manifest(ctx.cache)
    if done.returncode != 0 or manifest is None:
        return StepResult("3a", title, TIMEOUT if done.timed_out else FAIL, _failure_line(done.stdout, done.stderr),
                          done.seconds)
    ctx.shared["cache_ready"] = True
    return StepResult("3a", title, OK, f"{how}: {_describe_manifest(manifest)}", done.seconds, manifest)


def _describe_manifest(m: dict[str, Any]) -> str:
    source = m.get("source", {})
    kind = source.get("kind", "?") if isinstance(source, dict) else source
    return (f"vocab {m.get('vocab_size')}, seq {m.get('max_seq_len')}, {m.get('num_train_tokens', 0):,} train "
            f"tokens, eval on {m.get('eval_tokens', 0):,} tokens, source {kind}")


# ---- steps 3b and 3c: the trainer, compiled and eager --------------------------------------------------------
BATCH_LINE = re.compile(r"batch (\d+) tokens = (\d+) x (\d+) x (\d+)")


def trainer_figures(r: dict[str, Any], ceiling: float | None, datasheet: float | None) -> dict[str, Any]:
    """The numbers of one trial: its summary lines, start-up (what the trainer spent outside training,
    compile and the hand-over of its model), the median single-step tokens/s after the third step, and MFU
    re-read against the measured matmul ceiling."""
    f: dict[str, Any] = {key: _num(r.get(key)) for key in (
        "training_seconds", "total_seconds", "compile_seconds", "handover_seconds", "peak_vram_mb",
        "mfu_percent", "num_steps", "tokens_per_s", "num_params_M")}
    f["compiled"] = r.get("compiled")
    f["wall_seconds"] = r.get("wall_seconds")
    parts = [f[k] for k in ("total_seconds", "training_seconds", "compile_seconds", "handover_seconds")]
    f["startup_seconds"] = round(parts[0] - sum(parts[1:]), 1) if None not in parts else None  # type: ignore[operator]
    steps = [m["tokens_per_s"] for m in r.get("metrics", [])[3:] if m.get("tokens_per_s")]
    f["median_step_tokens_per_s"] = statistics.median(steps) if steps else None
    f["metric_rows"] = len(r.get("metrics", []))
    mfu = f["mfu_percent"]
    f["mfu_of_measured_percent"] = round(mfu * datasheet / ceiling, 2) if mfu and datasheet and ceiling else None
    match = BATCH_LINE.search(r.get("stderr", ""))
    f["device_batch_size"] = int(match.group(3)) if match else None
    f["grad_accum"] = int(match.group(2)) if match else None
    return f


def _trial_status(r: dict[str, Any]) -> tuple[str, str]:
    """(status, why) of a bounded trial run."""
    if r.get("timed_out"):
        return TIMEOUT, f"timed out after {r.get('wall_seconds')} s"
    text = r.get("stdout", "") + r.get("stderr", "")
    if "out of GPU memory" in text or "OutOfMemoryError" in text:
        return "OOM", "out of GPU memory"
    if r.get("returncode") != 0 or _num(r.get("tokens_per_s")) is None:
        return FAIL, _failure_line(r.get("stdout", ""), r.get("stderr", ""))
    return OK, ""


def _describe_trial(f: dict[str, Any]) -> str:
    vram = f["peak_vram_mb"]
    return (f"{_fmt(f['num_steps'], '.0f')} steps, {_fmt(f['tokens_per_s'], ',.0f')} tok/s, "
            f"MFU {_fmt(f['mfu_percent'], '.2f', '%')} ({_fmt(f['mfu_of_measured_percent'], '.2f', '%')} of measured), "
            f"peak VRAM {_fmt(vram / 1024 if vram else None, '.1f', ' GiB')}, start-up "
            f"{_fmt(f['startup_seconds'], '.1f', ' s')}, compile + warm-up {_fmt(f['compile_seconds'], '.1f', ' s')}, hand-over "
            f"{_fmt(f['handover_seconds'], '.1f', ' s')}")


def run_trainer(ctx: Context, step: str, name: str, budget: float, overrides: dict[str, str]) -> StepResult:
    title = f"trainer {name} ({budget:g} s, {ctx.s.profile} profile)"
    if not ctx.shared.get("cache_ready"):
        return StepResult(step, title, SKIPPED, "no data cache (step 3a)")
    need = budget + ctx.s.trial_need
    timeout = ctx.allot(need, budget + ctx.s.trial_extra)
    if timeout is None:
        return StepResult(step, title, SKIPPED, ctx.no_time(need))
    r = run_trial_bounded(ctx.cache, budget, ctx.device, timeout=timeout, log_dir=ctx.logs,
                          name=f"{step}-{name.replace(' ', '-')}", overrides=overrides, extra_env=ctx.compile_env())
    ctx.log(f"{step} trainer {name}", f"train.py with {overrides}, budget {budget:g} s, device {ctx.device}",
            Bounded(r["returncode"], r["timed_out"], r["wall_seconds"], r["stdout"], r["stderr"]), metrics=r["metrics"])
    status, why = _trial_status(r)
    figures = trainer_figures(r, ctx.shared.get("ceiling_tflops"), _num(ctx.shared.get("datasheet_tflops")))
    ctx.shared[f"trial_{step}"] = {"status": status, "figures": figures, "overrides": overrides}
    result = _describe_trial(figures) if status == OK else why
    return StepResult(step, title, status, result, r["wall_seconds"], figures)


def step_compiled(ctx: Context) -> StepResult:
    if ctx.device != "cuda" and not ctx.args.cpu_compile:
        return StepResult("3b", f"trainer compiled ({ctx.s.profile} profile)", SKIPPED,
                          "no CUDA (compile is off on the CPU; --cpu-compile runs it here)")
    return run_trainer(ctx, "3b", "compiled", ctx.s.budget, {"COMPILE": "True"})


def step_eager(ctx: Context) -> StepResult:
    return run_trainer(ctx, "3c", "eager", ctx.s.eager_budget, {"COMPILE": "False"})


# ---- step 3d: the supervisor's non-training time, and the live metric stream -----------------------------
class LedgerWatcher:
    """Counts, twice a second, the metric rows the run's ledger holds for each trial while it is running:
    the rows the UI would have drawn live (it reads the same table)."""

    def __init__(self, ledger_path: Path) -> None:
        self.path = ledger_path
        self.live: dict[int, int] = {}  # trial id -> most rows seen while it ran
        self.first_row_s: dict[int, float] = {}  # trial id -> seconds from its start to its first row
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="ledger-watch", daemon=True)

    def __enter__(self) -> LedgerWatcher:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=5)

    def _loop(self) -> None:
        while not self._stop.wait(0.5):
            if self.path.exists():
                with contextlib.suppress(Exception):  # not created yet, locked, mid-write: next tick
                    self._poll()

    def _poll(self) -> None:
        from supervisor.store.ledger import Ledger

        ledger = Ledger(self.path, readonly=True)
        try:
            for trial in ledger.running_trials():
                count = ledger.metric_count(trial.id)
                self.live[trial.id] = max(self.live.get(trial.id, 0), count)
                if count and trial.id not in self.first_row_s and trial.started:
                    self.first_row_s[trial.id] = round(time.time() - trial.started, 1)
        finally:
            ledger.close()


def _run_trials(ledger_path: Path, watcher: LedgerWatcher) -> list[dict[str, Any]]:
    from supervisor.store.ledger import Ledger

    ledger = Ledger(ledger_path, readonly=True)
    try:
        trials = ledger.trials()
        rows = []
        for i, t in enumerate(trials):
            total, training = _num(t.summary.get("total_seconds")), t.training_seconds
            later = trials[i + 1].started if i + 1 < len(trials) else None
            rows.append({
                "trial": t.id, "status": t.status, "training_seconds": training, "wall_seconds": t.wall_seconds,
                "trainer_non_training_s": round(total - training, 1) if total and training else None,
                "process_non_training_s": round(t.wall_seconds - training, 1) if t.wall_seconds and training else None,
                "cycle_non_training_s": round(later - t.started - training, 1) if later and t.started and training
                else None,
                "compile_seconds": _num(t.summary.get("compile_seconds")), "num_steps": t.num_steps,
                "metric_rows": ledger.metric_count(t.id), "metric_rows_live": watcher.live.get(t.id, 0),
                "first_row_after_s": watcher.first_row_s.get(t.id), "tokens_per_s": t.tokens_per_s,
                "crash_reason": (t.crash_reason or "")[:200],
            })
        return rows
    finally:
        ledger.close()


def step_supervisor(ctx: Context) -> StepResult:
    n, budget = ctx.s.run_trials, ctx.s.run_budget
    title = f"supervisor: headless run, offline agent, {n} trials of {budget:g} s"
    if not ctx.shared.get("cache_ready"):
        return StepResult("3d", title, SKIPPED, "no data cache (step 3a)")
    if shutil.which("git") is None:
        return StepResult("3d", title, FAIL, "git is not on PATH: the supervisor commits every trial")
    need = n * (budget + ctx.s.trial_need)
    timeout = ctx.allot(need, n * (budget + ctx.s.trial_extra))
    if timeout is None:
        return StepResult("3d", title, SKIPPED, ctx.no_time(need))
    tag = f"gpucheck-{time.strftime('%Y%m%d-%H%M%S')}"
    journals = ctx.work / "journals"
    cmd = CLI + ["run", "--headless", "--agent", "offline", "--tag", tag, "--journals", str(journals), "--cache",
                 str(ctx.cache), "--budget", f"{budget:g}", "--max-trials", str(n), "--noise-repeats", "0",
                 "--device", ctx.device, "--grace", f"{ctx.s.trial_extra:g}"]
    # --grace: the default (60 s at short budgets) is less than a cold compile plus evaluation may take.
    with LedgerWatcher(journals / tag / "ledger.sqlite") as watcher:
        done = run_bounded(cmd, timeout=timeout, log_dir=ctx.logs, name="3d-run", env=ctx.env(), cwd=REPO_ROOT,
                           grace=20.0)
    ctx.log("3d headless run", " ".join(["autoresearch", *cmd[3:]]), done)
    rows: list[dict[str, Any]] = []
    with contextlib.suppress(Exception):  # no ledger: the run failed before its first trial
        rows = _run_trials(journals / tag / "ledger.sqlite", watcher)
    printed = sum(1 for line in done.stdout.splitlines() if re.search(r"\bstep \d+ · ", line))
    ctx.shared["stream"] = {"trials": rows, "console_metric_lines": printed}
    finished = [r for r in rows if r["trainer_non_training_s"] is not None]
    if not finished:
        why = "; ".join(f"trial {r['trial']} {r['status']}: {r['crash_reason'] or ''}" for r in rows)
        return StepResult("3d", title, TIMEOUT if done.timed_out else FAIL,
                          why or _failure_line(done.stdout, done.stderr), done.seconds, {"trials": rows})
    mean = statistics.fmean(r["trainer_non_training_s"] for r in finished)
    per = ", ".join(f"#{r['trial']} {r['trainer_non_training_s']:.1f} s (process {_fmt(r['process_non_training_s'])}"
                    f" s, compile + warm-up {_fmt(r['compile_seconds'])} s)" for r in finished)
    cycles = [r["cycle_non_training_s"] for r in finished if r["cycle_non_training_s"] is not None]
    cycle = f"; trial start to next trial start minus training {cycles[0]:.1f} s" if cycles else ""
    status = OK if done.returncode == 0 else (TIMEOUT if done.timed_out else FAIL)
    return StepResult("3d", title, status,
                      f"non-training time per trial {mean:.1f} s (trainer's total - training) vs upstream's "
                      f"{UPSTREAM_NON_TRAINING_S} s on an H100 ({mean / UPSTREAM_NON_TRAINING_S:.2f}x): {per}{cycle}",
                      done.seconds, {"trials": rows, "mean_non_training_s": mean, "tag": tag})


# ---- step 4: DEVICE_BATCH_SIZE sweep ----------------------------------------------------------------------
def _predicted_oom(size: int, done: list[dict[str, Any]], total_mb: float | None) -> str | None:
    """Why `size` would not fit, from the peak VRAM of the sizes measured so far (a line through the last
    two: activations grow with the batch, the weights and optimizer state do not), or None."""
    points = sorted((r["size"], r["peak_vram_mb"]) for r in done if r.get("peak_vram_mb"))
    if not total_mb or not points or size <= points[-1][0]:
        return None
    if len(points) == 1:
        (b0, m0), slope = points[0], points[0][1] / points[0][0]  # all of it scales: an overestimate
    else:
        (b1, m1), (b0, m0) = points[-2], points[-1]
        slope = (m0 - m1) / (b0 - b1)
    predicted = m0 + slope * (size - b0)
    if predicted > 0.95 * total_mb:
        return f"predicted {predicted / 1024:.0f} GiB of {total_mb / 1024:.0f} GiB would not fit"
    return None


def _vram_total_mb(ctx: Context) -> float | None:
    for sample in reversed(ctx.sampler.samples):
        if sample.get("vram_total_mb"):
            return float(sample["vram_total_mb"])
    return None


def _sweep_one(ctx: Context, size: int, default: int | None, rows: list[dict[str, Any]]) -> dict[str, Any]:
    reused = ctx.shared.get("trial_3b")
    if size == default and reused and reused["status"] == OK and ctx.device == "cuda":
        # The compiled trial of step 3b is this size already: the same run, a longer budget, no second copy.
        return {"size": size, "status": OK, "note": "step 3b's run", **reused["figures"]}
    if any(r["status"] == "OOM" and r["size"] < size for r in rows):
        return {"size": size, "status": SKIPPED, "note": "a smaller size ran out of memory"}
    why = _predicted_oom(size, [r for r in rows if r["status"] == OK], _vram_total_mb(ctx))
    if why:
        return {"size": size, "status": SKIPPED, "note": why}
    budget = ctx.s.sweep_budget
    timeout = ctx.allot(budget + ctx.s.trial_need, budget + ctx.s.trial_extra)
    if timeout is None:
        return {"size": size, "status": SKIPPED, "note": ctx.no_time(budget + ctx.s.trial_need)}
    r = run_trial_bounded(ctx.cache, budget, ctx.device, timeout=timeout, log_dir=ctx.logs, name=f"4-batch{size}",
                          overrides={"DEVICE_BATCH_SIZE": str(size)}, extra_env=ctx.compile_env())
    ctx.log(f"4 batch {size}", f"train.py with DEVICE_BATCH_SIZE = {size}, budget {budget:g} s",
            Bounded(r["returncode"], r["timed_out"], r["wall_seconds"], r["stdout"], r["stderr"]), metrics=r["metrics"])
    status, why = _trial_status(r)
    figures = trainer_figures(r, ctx.shared.get("ceiling_tflops"), _num(ctx.shared.get("datasheet_tflops")))
    return {"size": size, "status": status, "note": why, **figures}


def _default_batch(ctx: Context) -> int | None:
    for step in ("trial_3b", "trial_3c"):
        trial = ctx.shared.get(step)
        if trial and trial["figures"].get("device_batch_size"):
            return int(trial["figures"]["device_batch_size"])
    source = (REPO_ROOT / "trainer" / "train.py").read_text()
    match = re.search(rf'^DEVICE_BATCH_SIZE = \{{[^}}]*"{ctx.s.profile}": (\d+)', source, flags=re.M)
    return int(match.group(1)) if match else None


def step_sweep(ctx: Context) -> StepResult:
    sizes = list(ctx.args.sweep_sizes or ctx.s.sweep_sizes)  # in the order given
    title = f"DEVICE_BATCH_SIZE sweep ({', '.join(map(str, sizes))}; {ctx.s.sweep_budget:g} s each)"
    if not ctx.shared.get("cache_ready"):
        return StepResult("4", title, SKIPPED, "no data cache (step 3a)")
    default = _default_batch(ctx)
    start = time.monotonic()
    rows: list[dict[str, Any]] = []
    for size in sizes:
        rows.append(_sweep_one(ctx, size, default, rows))
    measured = [r for r in rows if r["status"] == OK and r.get("tokens_per_s")]
    data = {"rows": rows, "default": default}
    if not measured:
        return StepResult("4", title, FAIL if any(r["status"] != SKIPPED for r in rows) else SKIPPED,
                          "no size measured: " + "; ".join(f"{r['size']}: {r['note']}" for r in rows),
                          time.monotonic() - start, data)
    best = max(measured, key=lambda r: r["tokens_per_s"])
    base = next((r for r in measured if r["size"] == default), None)
    gain = f", {best['tokens_per_s'] / base['tokens_per_s'] - 1:+.1%} over the default {default}" if base else ""
    advice = (f"keep DEVICE_BATCH_SIZE {best['size']} for the {ctx.s.profile} profile" if best["size"] == default
              else f"recommend DEVICE_BATCH_SIZE {best['size']} for the {ctx.s.profile} profile (now {default})")
    data.update(best=best["size"], recommendation=advice)
    others = "; ".join(f"{r['size']}: {_fmt(r.get('tokens_per_s'), ',.0f')} tok/s" if r["status"] == OK
                       else f"{r['size']}: {r['note'] or r['status']}" for r in rows)
    return StepResult("4", title, OK, f"best {best['size']} at {best['tokens_per_s']:,.0f} tok/s{gain}: {advice} "
                                      f"({others})", time.monotonic() - start, data)


# ---- step 5: sandbox and trusted evaluator ----------------------------------------------------------------
def step_sandbox(ctx: Context) -> StepResult:
    """The sandbox with the GPU passed through, and the hand-over path on it: supervisor.trial.sandbox.self_check
    runs, in bubblewrap (AUTORESEARCH_BWRAP may name a carried binary), a CUDA matmul, a bf16 torch.export of a
    small causal model, its load with pickle closed, and the repeat and causality deviations."""
    title = "sandbox + trusted evaluator, GPU passed through"
    found = [name for name in SANDBOX_MODULES if importlib.util.find_spec(name) is not None]
    if not found:
        return StepResult("5", title, NOT_LANDED, f"none of {', '.join(SANDBOX_MODULES)} exists yet")
    timeout = ctx.allot(10, 120)
    if timeout is None:
        return StepResult("5", title, SKIPPED, ctx.no_time(10))
    script = ("import importlib, json, sys\nout = {}\nfor name in sys.argv[2:]:\n"
              "    check = getattr(importlib.import_module(name), 'self_check', None)\n"
              "    out[name] = check(sys.argv[1]) if check else 'no self_check(device)'\nprint(json.dumps(out))\n")
    done = run_bounded([sys.executable, "-c", script, ctx.device, *found], timeout=timeout, log_dir=ctx.logs,
                       name="5-sandbox", env=ctx.env(), cwd=REPO_ROOT)
    ctx.log("5 sandbox", f"self_check of {', '.join(found)}", done)
    data = _last_json(done.stdout)
    if done.returncode != 0 or data is None:
        return StepResult("5", title, TIMEOUT if done.timed_out else FAIL, _failure_line(done.stdout, done.stderr),
                          done.seconds)
    return StepResult("5", title, OK, json.dumps(data)[:400], done.seconds, data)


# ---- step 6: telemetry -------------------------------------------------------------------------------------
def _peak(samples: list[dict[str, Any]], key: str) -> float | None:
    values = [s[key] for s in samples if isinstance(s.get(key), int | float)]
    return max(values) if values else None


def _stream_summary(ctx: Context) -> tuple[str, bool]:
    stream = ctx.shared.get("stream")
    if not stream or not stream["trials"]:
        return "metric stream: no headless run (step 3d)", False
    parts, live = [], True
    for r in stream["trials"]:
        steps = r["num_steps"]
        live = live and r["metric_rows_live"] > 0 and (steps is None or r["metric_rows"] == steps)
        parts.append(f"#{r['trial']} {r['metric_rows_live']} rows seen while running, {r['metric_rows']} at the end, "
                     f"{_fmt(_num(steps), '.0f')} steps, first after {_fmt(r['first_row_after_s'], '.1f', ' s')}")
    return (f"metric stream: {'; '.join(parts)}; {stream['console_metric_lines']} console metric lines", live)


def step_telemetry(ctx: Context) -> StepResult:
    title = "telemetry: NVML (the UI's telemetry_sample) and the live metric stream"
    samples = list(ctx.sampler.samples)
    gpu = [s for s in samples if s.get("kind") == "gpu"]
    stream, live = _stream_summary(ctx)
    data: dict[str, Any] = {"samples": len(samples), "gpu_samples": len(gpu), "stream": ctx.shared.get("stream")}
    if gpu:
        training = [s for s in gpu if s.get("step") in ("3b", "3c", "3d", "4")] or gpu
        peaks = {k: _peak(training, k) for k in ("gpu_util_percent", "vram_used_mb", "power_w", "temperature_c")}
        data.update(peaks, vram_total_mb=_peak(gpu, "vram_total_mb"), gpu_name=gpu[-1].get("gpu_name"))
        nvml = (f"NVML: {len(gpu)} samples ({gpu[-1].get('gpu_name')}); while training max util "
                f"{_fmt(peaks['gpu_util_percent'], '.0f', '%')}, VRAM {_fmt(peaks['vram_used_mb'], ',.0f', ' MB')}, "
                f"power {_fmt(peaks['power_w'], '.0f', ' W')}, {_fmt(peaks['temperature_c'], '.0f', ' C')}")
        complete = all(v is not None for v in peaks.values())
    else:
        cpu = _peak(samples, "cpu_percent")
        nvml = (f"NVML: skipped: no CUDA (telemetry_sample fell back to the CPU: {len(samples)} samples, "
                f"max {_fmt(cpu, '.0f', '%')} CPU)")
        complete = ctx.device != "cuda"
    data.update(live=live)
    return StepResult("6", title, OK if complete and live else FAIL, f"{nvml}; {stream}", 0.0, data)


# ---- the report ----------------------------------------------------------------------------------------------
def _cell(text: Any) -> str:
    return str(text).replace("|", "/").replace("\n", " ")


def _table(header: list[str], rows: list[list[Any]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    return lines + ["| " + " | ".join(_cell(c) for c in row) + " |" for row in rows]


TRAINER_FIGURES = [("num_steps", ".0f"), ("tokens_per_s", ",.0f"), ("median_step_tokens_per_s", ",.0f"),
                   ("mfu_percent", ".2f"), ("mfu_of_measured_percent", ".2f"), ("peak_vram_mb", ",.0f"),
                   ("startup_seconds", ".1f"), ("compile_seconds", ".1f"), ("handover_seconds", ".1f"),
                   ("training_seconds", ".1f"), ("total_seconds", ".1f"), ("wall_seconds", ".1f"),
                   ("device_batch_size", ".0f"), ("grad_accum", ".0f"), ("metric_rows", ".0f")]


def _details(ctx: Context) -> list[str]:
    by_step = {r.step: r for r in ctx.results}
    out: list[str] = []
    doctor = by_step.get("1")
    if doctor and doctor.data.get("checks"):
        out += ["", "### 1. doctor", ""] + _table(
            ["check", "status", "found", "seconds"],
            [[c["name"], c["status"], c["detail"], _fmt(_num(c.get("seconds")), ".1f")] for c in doctor.data["checks"]])
    trials = [(s, by_step[s]) for s in ("3b", "3c") if s in by_step and by_step[s].status == OK]
    if trials:
        out += ["", "### 3. trainer", ""] + _table(
            ["figure"] + [r.title for _, r in trials],
            [[k] + [_fmt(_num(r.data.get(k)), spec) for _, r in trials] for k, spec in TRAINER_FIGURES])
    run = by_step.get("3d")
    if run and run.data.get("trials"):
        cols = ["trial", "status", "training_seconds", "trainer_non_training_s", "process_non_training_s",
                "cycle_non_training_s", "compile_seconds", "num_steps", "metric_rows_live", "metric_rows",
                "first_row_after_s"]
        out += ["", "### 3d. supervisor, per trial", ""] + _table(
            cols, [["n/a" if t.get(c) is None else t.get(c) for c in cols] for t in run.data["trials"]])
    sweep = by_step.get("4")
    if sweep and sweep.data.get("rows"):
        out += ["", "### 4. DEVICE_BATCH_SIZE sweep", ""] + _table(
            ["DEVICE_BATCH_SIZE", "status", "tokens/s", "median step tok/s", "MFU %", "peak VRAM MB", "compile s",
             "steps", "note"],
            [[r["size"], r["status"], _fmt(_num(r.get("tokens_per_s")), ",.0f"),
              _fmt(_num(r.get("median_step_tokens_per_s")), ",.0f"), _fmt(_num(r.get("mfu_percent")), ".2f"),
              _fmt(_num(r.get("peak_vram_mb")), ",.0f"), _fmt(_num(r.get("compile_seconds")), ".1f"),
              _fmt(_num(r.get("num_steps")), ".0f"), r.get("note", "")] for r in sweep.data["rows"]])
        if sweep.data.get("recommendation"):
            out += ["", f"**{sweep.data['recommendation']}**"]
    return out


def markdown(ctx: Context) -> str:
    p = ctx.platform
    elapsed = time.monotonic() - ctx.started
    lines = [f"# GPU check ({'--tiny, ' if ctx.args.tiny else ''}{ctx.state})", ""]
    lines += _table(["GPU", "driver", "torch", "CUDA", "python", "CPUs", "device", "profile", "deadline", "elapsed",
                     "started"],
                    [[p.get("gpu", "?"), p.get("driver", "?"), p.get("torch", "?"), p.get("cuda", "?"),
                      p.get("python", "?"), p.get("cpu_count", "?"), ctx.device, ctx.s.profile,
                      f"{ctx.args.deadline:g} s", f"{elapsed:.0f} s", ctx.started_wall]])
    lines += [""] + _table(["step", "what", "status", "result", "seconds"],
                           [[r.step, r.title, r.status, r.result, f"{r.seconds:.1f}"] for r in ctx.results])
    return "\n".join(lines + _details(ctx)) + "\n"


def write_report(ctx: Context) -> None:
    """gpu_check.md and gpu_check.json, written whole to a temporary name and renamed (a kill mid-write
    leaves the previous version, never half a file)."""
    data = {"state": ctx.state, "platform": ctx.platform, "device": ctx.device, "settings": dataclasses.asdict(ctx.s),
            "deadline_s": ctx.args.deadline, "elapsed_s": round(time.monotonic() - ctx.started, 1),
            "steps": [dataclasses.asdict(r) for r in ctx.results]}
    for name, text in (("gpu_check.md", markdown(ctx)), ("gpu_check.json", json.dumps(data, indent=2, default=str))):
        tmp = ctx.out_dir / f".{name}.tmp"
        tmp.write_text(text)
        tmp.replace(ctx.out_dir / name)


# ---- the run -------------------------------------------------------------------------------------------------
STEPS: list[tuple[str, str, Callable[[Context], StepResult]]] = [
    ("1", "doctor", step_doctor),
    ("2", "bf16 matmul ceiling", step_matmul),
    ("3a", "prepare", step_prepare),
    ("3b", "trainer compiled", step_compiled),
    ("3c", "trainer eager", step_eager),
    ("3d", "supervisor: headless run", step_supervisor),
    ("4", "DEVICE_BATCH_SIZE sweep", step_sweep),
    ("5", "sandbox + trusted evaluator", step_sandbox),
    ("6", "telemetry", step_telemetry),
]


def run_steps(ctx: Context, selected: set[str]) -> None:
    for step, title, fn in STEPS:
        if step not in selected:
            ctx.results.append(StepResult(step, title, SKIPPED, "not in --steps"))
            continue
        start = time.monotonic()
        ctx.sampler.label = step  # telemetry samples say which step they were taken in
        print(f"[{time.monotonic() - ctx.started:5.0f} s] step {step}: {title} ...", flush=True)
        try:
            result = fn(ctx)
        except Exception as exc:
            result = StepResult(step, title, FAIL, f"{type(exc).__name__}: {exc}"[:300])
        result.seconds = result.seconds or round(time.monotonic() - start, 1)
        ctx.results.append(result)
        print(f"         {result.status}: {result.result}", flush=True)
        write_report(ctx)


def _on_sigterm(signum: int, frame: object) -> None:
    raise KeyboardInterrupt  # the device tool's timeout: write what was measured, like Ctrl-C


def _sizes(text: str) -> tuple[int, ...]:
    try:
        sizes = tuple(int(x) for x in text.split(",") if x.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a comma-separated list of integers: {text!r}") from None
    if not sizes or min(sizes) < 1:
        raise argparse.ArgumentTypeError("batch sizes must be positive")
    return sizes


def _steps(text: str) -> set[str]:
    chosen = {x.strip() for x in text.split(",") if x.strip()}
    unknown = chosen - set(STEP_IDS)
    if unknown:
        raise argparse.ArgumentTypeError(f"unknown step(s) {', '.join(sorted(unknown))}; known: {', '.join(STEP_IDS)}")
    return chosen


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    default_out = os.environ.get("OUT") or "gpu_check_out"
    p.add_argument("--out", type=Path, default=Path(default_out), help=f"where the table goes (default {default_out})")
    p.add_argument("--deadline", type=float, default=510.0, help="seconds the whole check may take (default 510)")
    p.add_argument("--tiny", "--cpu-smoke", action="store_true", help="every step shrunk to run on a CPU in minutes")
    p.add_argument("--steps", type=_steps, default=set(STEP_IDS), help=f"only these ({','.join(STEP_IDS)})")
    p.add_argument("--device", choices=("auto", "cuda", "cpu"), default="auto")
    p.add_argument("--cache", type=Path, default=None, help="a prepared cache to reuse (default: a fresh one)")
    p.add_argument("--work", type=Path, default=None, help="caches and run folders (default: a temporary folder, "
                                                           "removed at the end)")
    p.add_argument("--budget", type=float, help="training seconds of the compiled trial (default 40; --tiny 3)")
    p.add_argument("--eager-budget", type=float, help="of the eager trial (default 25; --tiny 3)")
    p.add_argument("--run-budget", type=float, help="of each headless run's trial (default 15; --tiny 2)")
    p.add_argument("--sweep-budget", type=float, help="of each batch-size run (default 15; --tiny 2)")
    p.add_argument("--sweep-sizes", type=_sizes, help="DEVICE_BATCH_SIZE values, run in this order (default 16,64,128,32; --tiny 4,8)")
    p.add_argument("--cpu-compile", action="store_true", help="on a CPU, run step 3b compiled anyway (slow)")
    return p.parse_args(argv)


def _settings(args: argparse.Namespace) -> Settings:
    base = TINY if args.tiny else FULL
    changes = {name: getattr(args, name) for name in ("budget", "eager_budget", "run_budget", "sweep_budget")
               if getattr(args, name) is not None}
    return dataclasses.replace(base, **changes)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    settings = _settings(args)
    args.out.mkdir(parents=True, exist_ok=True)
    work = args.work or Path(tempfile.mkdtemp(prefix="gpu_check-"))
    work.mkdir(parents=True, exist_ok=True)
    ctx = Context(args, settings, args.out.resolve(), work.resolve())
    ctx.log_path.write_text(f"gpu_check.py {' '.join(argv if argv is not None else sys.argv[1:])}\n")
    previous = signal.signal(signal.SIGTERM, _on_sigterm)
    try:
        ctx.platform = platform_info()
        found = "cuda" if ctx.platform.get("accelerator") in ("cuda", "rocm") else "cpu"
        ctx.device = found if args.device == "auto" else args.device
        if ctx.device == "cpu" and not args.tiny:
            ctx.state = "refused: no CUDA GPU (the full check needs one; --tiny runs a CPU smoke version)"
            write_report(ctx)
            print(f"gpu_check: {ctx.state}", file=sys.stderr)
            return 2
        ctx.sampler.start()
        run_steps(ctx, args.steps)
        ctx.state = "finished"
    except KeyboardInterrupt:
        ctx.state = "interrupted"
        print("gpu_check: interrupted; the table holds what was measured", file=sys.stderr)
    finally:
        ctx.sampler.stop()
        signal.signal(signal.SIGTERM, previous)
        write_report(ctx)
        if args.work is None:
            shutil.rmtree(work, ignore_errors=True)
    print(markdown(ctx))
    print(f"written: {ctx.out_dir / 'gpu_check.md'}, gpu_check.json, gpu_check.log")
    return 0 if ctx.state == "finished" else 130


if __name__ == "__main__":
    sys.exit(main())
