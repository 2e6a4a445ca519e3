"""The speed sentinel: did the machine run this trial as fast as it ran the noise floor's seeds?

On a fixed time budget, a slower machine trains fewer steps and scores worse, whatever the change. A GPU shared
with a notebook, a CPU shared with a test suite, or a card that throttles moves val_bpb by more than many gains,
and nothing in the number says so. So every run (a trial, its re-runs, each noise seed) is bracketed by two
readings of the machine (:class:`MachineSample`), and the stretch between them (:class:`MachineLoad`) says how
much of the CPUs processes outside the supervisor used, and how many other processes sat on the GPU. Measured
over the run itself, not as a load average before it: the load average counts the supervisor's own trials,
which run back to back, and misses load that starts mid-run.

A trial has drifted (:func:`drift_reasons`) when other processes took a much larger share of the CPUs than
while the floor was measured, when more processes shared the GPU, or when its throughput fell well below its
parent's on a change that cannot alter the compute (:func:`compute_neutral`: only learning rates, schedule
fractions, betas, momentum, weight decay or seeds were set to other numbers).

The readings are taken by an injected callable (``read``), so the rules are tested without loading the machine;
:func:`sample_machine` is the real one (psutil; NVML or amdsmi for the GPU).
"""

from __future__ import annotations

import ast
import re
import statistics
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import psutil

# The GPU libraries' handles, opened once per process by platform_info (the same board telemetry reads).
from supervisor.trial.platform_info import _amd_handle, _amdsmi, _nvml, _nvml_handle

# A trial is drifted when other processes used this much more of all the CPUs (a share, 0..1) than while the
# floor was measured. A CPU trial uses every core, so a quarter of the machine taken costs about a quarter of
# its steps: far beyond the seed-to-seed spread of a quiet machine, and well above the flicker of a desktop.
CPU_DRIFT_SHARE = 0.25
# ...or when its tokens/s fell more than this share below its parent's on a compute-neutral change. Runs of the
# same code on a quiet machine differ by a few percent (data order, clocks, compile); 15% is several times
# that, and costs as many steps.
THROUGHPUT_DRIFT = 0.15
# Names whose numbers set the optimiser or the schedule, never the work of a step (matched per word of the
# name: MATRIX_LR, WARMDOWN_FRACTION, ADAM_BETAS, WEIGHT_DECAY, MUON_MOMENTUM, SEED).
_NEUTRAL_NAME = re.compile(
    r"(?:^|_)(?:LRS?|LEARNING_RATES?|WARMUP|WARMDOWN|COOLDOWN|BETAS?\d?|WEIGHT_DECAY|WD|MOMENTUM|SEEDS?|EPS)(?:_|$)",
    re.IGNORECASE,
)
_MASK = "<a hyperparameter value>"


@dataclass(frozen=True)
class MachineSample:
    """Cumulative counters at one moment; two of them give a :class:`MachineLoad`."""

    at: float  # time.monotonic()
    busy_cpu_s: float | None  # seconds all CPUs together were busy since boot; None where the OS will not say
    own_cpu_s: float | None  # CPU seconds of the supervisor and every process it started (finished ones too)
    cpus: int
    gpu_others: int | None  # processes on the trial's GPU that are not the supervisor's; None: no GPU telemetry


@dataclass(frozen=True)
class MachineLoad:
    """How busy other processes kept the machine over one run."""

    others_cpu_share: float | None  # share of all CPUs used by processes outside the supervisor, 0..1
    gpu_others: int | None  # the most other processes seen on the GPU at either end of the run
    seconds: float

    def as_summary(self) -> dict[str, str]:
        """The trial summary's fields (strings, under names a trainer cannot print)."""
        out = {"supervisor.run_seconds_measured": f"{self.seconds:.4g}"}
        if self.others_cpu_share is not None:
            out["supervisor.others_cpu_share"] = f"{self.others_cpu_share:.3f}"
        if self.gpu_others is not None:
            out["supervisor.gpu_others"] = str(self.gpu_others)
        return out

    def as_json(self) -> dict[str, Any]:
        return {"others_cpu_share": self.others_cpu_share, "gpu_others": self.gpu_others, "seconds": self.seconds}

    @classmethod
    def from_json(cls, data: Any) -> MachineLoad | None:
        """The reading stored with a noise floor; None for one stored before the sentinel or unreadable."""
        if not isinstance(data, dict):
            return None
        share, gpu, seconds = data.get("others_cpu_share"), data.get("gpu_others"), data.get("seconds", 0.0)
        ok_share = share is None or (isinstance(share, int | float) and not isinstance(share, bool))
        ok_gpu = gpu is None or (isinstance(gpu, int) and not isinstance(gpu, bool))
        if not ok_share or not ok_gpu or not isinstance(seconds, int | float):
            return None
        return cls(None if share is None else float(share), gpu, float(seconds))


def load_between(start: MachineSample, end: MachineSample) -> MachineLoad:
    """What other processes did between two samples."""
    seconds = max(0.0, end.at - start.at)
    share = None
    if None not in (start.busy_cpu_s, end.busy_cpu_s, start.own_cpu_s, end.own_cpu_s) and seconds > 0:
        assert start.busy_cpu_s is not None and end.busy_cpu_s is not None
        assert start.own_cpu_s is not None and end.own_cpu_s is not None
        others = (end.busy_cpu_s - start.busy_cpu_s) - (end.own_cpu_s - start.own_cpu_s)
        share = round(min(1.0, max(0.0, others / (seconds * max(1, end.cpus)))), 4)
    gpus = [g for g in (start.gpu_others, end.gpu_others) if g is not None]
    return MachineLoad(share, max(gpus) if gpus else None, round(seconds, 3))


def floor_load(loads: Sequence[MachineLoad]) -> MachineLoad | None:
    """The machine while a floor's seeds ran: the mean CPU share of others, the most processes on the GPU."""
    if not loads:
        return None
    shares = [x.others_cpu_share for x in loads if x.others_cpu_share is not None]
    gpus = [x.gpu_others for x in loads if x.gpu_others is not None]
    return MachineLoad(round(statistics.fmean(shares), 4) if shares else None, max(gpus) if gpus else None,
                       round(sum(x.seconds for x in loads), 3))


def drift_reasons(load: MachineLoad | None, floor: MachineLoad | None, *, tokens_per_s: float | None = None,
                  parent_tokens_per_s: float | None = None, compute_neutral: bool = False) -> list[str]:
    """Why this run's number may measure the machine rather than the change, one phrase each ([] if none).

    The load is compared with the floor's (nothing is said without a floor reading: a machine is allowed its
    usual background); the throughput with the parent's, only when the change cannot alter the compute.
    """
    reasons = []
    if load is not None and floor is not None:
        now, then = load.others_cpu_share, floor.others_cpu_share
        if now is not None and then is not None and now - then > CPU_DRIFT_SHARE:
            reasons.append(f"other processes used {now:.0%} of the CPUs during the run, {then:.0%} while the "
                           "noise floor was measured")
        if load.gpu_others is not None and floor.gpu_others is not None and load.gpu_others > floor.gpu_others:
            reasons.append(f"{load.gpu_others} other process(es) were on the GPU, {floor.gpu_others} while the "
                           "noise floor was measured")
    if compute_neutral and tokens_per_s is not None and parent_tokens_per_s:
        drop = 1.0 - tokens_per_s / parent_tokens_per_s
        if drop > THROUGHPUT_DRIFT:
            reasons.append(f"tokens/s {tokens_per_s:,.0f} is {drop:.0%} below the parent's "
                           f"{parent_tokens_per_s:,.0f} on a change that cannot alter the compute")
    return reasons


# ---- compute-neutral changes ---------------------------------------------------------------------------------
def compute_neutral(old_source: str, new_source: str) -> bool:
    """Whether the new script does exactly the work of the old one per step: the two are the same program once
    every number assigned to an optimiser or schedule name (learning rates, warm-up and warm-down, betas,
    momentum, weight decay, seeds) is masked. Comments and layout do not count. Anything else, or a script that
    does not parse, is not neutral: a throughput drop is then the change's own doing."""
    if old_source == new_source:
        return True
    try:
        old, new = ast.parse(old_source), ast.parse(new_source)
    except (SyntaxError, ValueError):
        return False
    return _masked(old) == _masked(new)


def _masked(tree: ast.Module) -> str:
    for node in ast.walk(tree):
        if isinstance(node, ast.Assign):
            targets: list[ast.expr] = list(node.targets)
        elif isinstance(node, ast.AnnAssign) and node.value is not None:
            targets = [node.target]
        else:
            continue
        if targets and all(_neutral_target(t) for t in targets) and _numeric_literal(node.value):
            node.value = ast.Constant(_MASK)
    return ast.dump(tree)


def _neutral_target(target: ast.expr) -> bool:
    if isinstance(target, ast.Tuple):
        return all(_neutral_target(t) for t in target.elts)
    return isinstance(target, ast.Name) and bool(_NEUTRAL_NAME.search(target.id))


def _numeric_literal(node: ast.AST | None) -> bool:
    """A number written out: 3e-4, -0.5, 2 * 0.02, (0.8, 0.95), {"full": 0.004, "small": 0.02}[PROFILE]."""
    if isinstance(node, ast.Constant):
        return isinstance(node.value, int | float) and not isinstance(node.value, bool)
    if isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.USub | ast.UAdd):
        return _numeric_literal(node.operand)
    if isinstance(node, ast.BinOp):
        return _numeric_literal(node.left) and _numeric_literal(node.right)
    if isinstance(node, ast.Tuple | ast.List):
        return all(_numeric_literal(e) for e in node.elts)
    if isinstance(node, ast.Dict):
        return all(isinstance(k, ast.Constant) for k in node.keys) and all(_numeric_literal(v) for v in node.values)
    if isinstance(node, ast.Subscript):  # a literal table indexed by a profile name
        return isinstance(node.value, ast.Dict) and _numeric_literal(node.value) and \
            isinstance(node.slice, ast.Name | ast.Constant)
    return False


# ---- the real reading ------------------------------------------------------------------------------------------
def sample_machine() -> MachineSample:
    """The machine now: busy CPU seconds (psutil), the supervisor's own, and other processes on the GPU.

    Never raises; what cannot be read is None (and then no comparison is made on it)."""
    try:
        mine = psutil.Process()
        own_pids = {mine.pid, *(p.pid for p in mine.children(recursive=True))}
    except psutil.Error:
        mine, own_pids = None, set()
    return MachineSample(at=time.monotonic(), busy_cpu_s=_busy_cpu_seconds(),
                         own_cpu_s=_own_cpu_seconds(mine) if mine is not None else None,
                         cpus=psutil.cpu_count() or 1, gpu_others=_gpu_others(own_pids))


def _busy_cpu_seconds() -> float | None:
    try:
        times = psutil.cpu_times()._asdict()
    except Exception:  # psutil raises OSError or RuntimeError where the OS will not say
        return None
    # Linux counts guest time inside user time already; idle and iowait are the CPU waiting.
    total = sum(v for k, v in times.items() if k not in ("guest", "guest_nice"))
    return total - times.get("idle", 0.0) - times.get("iowait", 0.0)


def _own_cpu_seconds(mine: psutil.Process) -> float | None:
    """This process, the children it reaped (a finished trial, bwrap and all inside it), and those alive now."""
    try:
        total = _process_seconds(mine)
        children = mine.children(recursive=True)
    except psutil.Error:
        return None
    for child in children:
        try:
            total += _process_seconds(child)
        except psutil.Error:
            continue  # it ended between the listing and the reading: its time is in its parent's children_*
    return total


def _process_seconds(process: psutil.Process) -> float:
    t = process.cpu_times()
    return t.user + t.system + getattr(t, "children_user", 0.0) + getattr(t, "children_system", 0.0)


def _gpu_others(own_pids: Iterable[int]) -> int | None:
    """Processes on the trial's GPU that are not the supervisor's (NVML, else amdsmi); None without either."""
    mine = set(own_pids)
    pids = _nvml_pids()
    if pids is None:
        pids = _amd_pids()
    return None if pids is None else len(set(pids) - mine)


def _nvml_pids() -> list[int] | None:
    nvml = _nvml()
    if nvml is None:
        return None
    try:
        handle = _nvml_handle(nvml)
        found = list(nvml.nvmlDeviceGetComputeRunningProcesses(handle))
    except Exception:
        return None
    try:  # a notebook drawing on the same board shows up here (and holds its clocks)
        found += list(nvml.nvmlDeviceGetGraphicsRunningProcesses(handle))
    except Exception:
        pass
    return [int(p.pid) for p in found if getattr(p, "pid", None) is not None]


def _amd_pids() -> list[int] | None:
    amdsmi = _amdsmi()
    if amdsmi is None:
        return None
    try:
        found = amdsmi.amdsmi_get_gpu_process_list(_amd_handle(amdsmi))
    except Exception:
        return None
    return [int(p["pid"]) for p in found if isinstance(p, dict) and isinstance(p.get("pid"), int)]
