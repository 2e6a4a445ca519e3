"""What the agent sees at a turn: a TurnContext built fresh from the ledger and the workspace, never from memory."""

from __future__ import annotations

import ast
import functools
import json
import re
from pathlib import Path
from typing import Any

import psutil

from supervisor.agents.base import Machine, NoiseView, SeedRun, StepSize, ToolOutcome, TurnContext
from supervisor.core import prompts
from supervisor.core.config import RunConfig
from supervisor.core.types import NoiseRecord, Trial, TrialKind, TrialStatus, trial_record
from supervisor.run import trial_view
from supervisor.run.executor import TrialExecutor
from supervisor.run.tools import TOOL_SCHEMAS, obligation
from supervisor.store.ledger import Ledger
from supervisor.trial.platform_info import UNKNOWN, telemetry_sample

PEAK_TABLE_NAME = "PEAK_BF16_FLOPS"  # the harness's table of dense bf16 peaks, which MFU is measured against
GPU_KINDS = ("cuda", "rocm")          # where the trainer computes MFU at all


def turn_context(config: RunConfig, ledger: Ledger, executor: TrialExecutor,
                 last_outcomes: list[ToolOutcome]) -> TurnContext:
    kind, message = obligation(ledger)
    pending = None
    if kind == "journal":
        pending = trial_record(ledger.trials_missing_journal()[0], for_agent=True)
    best = ledger.best_keep()
    reflections = ledger.reflections()
    finished = ledger.finished_trials()
    machine = run_machine(config, executor)
    unacknowledged = ledger.unacknowledged_steering()  # each stays in the prompt until the agent answers it
    return TurnContext(
        program=_program(config, executor),
        editable=executor.editable,
        train_py=executor.editable_text(),
        results=[trial_record(t, for_agent=True) for t in finished],
        recent_journal=ledger.journal_entries()[-5:],
        latest_reflection=reflections[-1] if reflections else None,
        plans=ledger.plans(),
        steering=[s.message for s in unacknowledged],
        steering_ids=[s.id for s in unacknowledged],
        last_outcomes=list(last_outcomes),
        obligation=kind,
        obligation_message=message,
        pending_trial=pending,
        trials_done=executor.trials_done(),
        max_trials=config.max_trials,
        budget_s=config.budget_s,
        budget_tokens=config.budget_tokens,
        policy=config.policy,
        noise_floor=executor.noise_floor(),
        best=trial_record(best, for_agent=True) if best else None,
        profile=_cache_profile(config),
        tools=TOOL_SCHEMAS,
        stopped=[trial_record(t, for_agent=True) for t in ledger.trials([TrialStatus.ABORTED])
                 if t.kind == TrialKind.TRIAL and t.crash_reason == prompts.STOPPED_BY_PERSON],
        uncommitted_lines=changed_lines(executor.working_diff()),
        machine=machine,
        noise=noise_view(ledger.latest_noise(config.budget_s), finished, executor.paths.noise_progress),
        step_sizes=step_sizes(best, finished, machine.seq_len),
    )


def changed_lines(diff: str) -> int:
    """Lines added or removed in a unified diff (its file headers not counted)."""
    return sum(1 for line in diff.splitlines()
               if line[:1] in "+-" and not line.startswith(("+++ ", "--- ")))


def _program(config: RunConfig, executor: TrialExecutor) -> str:
    """program.md: the person's copy in the source folder, else the workspace's."""
    program_path = config.source_dir / config.layout.program
    if not program_path.is_file():
        program_path = executor.root / config.layout.program
    return program_path.read_text(encoding="utf-8") if program_path.is_file() else ""


def _cache_profile(config: RunConfig) -> str | None:
    manifest = Path(config.cache_dir) / "manifest.json"
    try:
        return json.loads(manifest.read_text()).get("profile")
    except (OSError, ValueError):
        return None


# ---- the machine, the noise behind the floor, the step size (issue 16) ---------------------------------
def run_machine(config: RunConfig, executor: TrialExecutor) -> Machine:
    """What every trial trains on: the platform record, the data cache's manifest, the MFU peak the trainer
    assumes. Built from records that do not change during a run, so the prompt's cached part stays cached."""
    platform = executor.platform
    accelerator = trial_accelerator(config.device, platform.get("accelerator", UNKNOWN))
    device = platform.get("gpu", UNKNOWN) if accelerator in (*GPU_KINDS, "mps") else "cpu"
    manifest = trial_view.read_manifest(config.cache_dir)
    peak, no_peak = None, prompts.NO_PEAK_NOT_GPU
    if accelerator in GPU_KINDS:
        peak = peak_flops(_harness_peak_table(config, executor), device)
        no_peak = "" if peak is not None else prompts.NO_PEAK_UNKNOWN_GPU.format(device=device)
    profile = manifest.get("profile")
    return Machine(
        accelerator=accelerator, device=device,
        memory_mb=_gpu_memory_mb() if accelerator in GPU_KINDS else _ram_mb(),
        cpu=platform.get("cpu", UNKNOWN), cpu_threads=platform.get("cpu_count", UNKNOWN),
        torch=platform.get("torch", UNKNOWN), profile=profile if isinstance(profile, str) else None,
        seq_len=trial_view.positive_int(manifest.get("max_seq_len")),
        vocab_size=trial_view.positive_int(manifest.get("vocab_size")),
        train_tokens=trial_view.positive_int(manifest.get("num_train_tokens")),
        eval_tokens=trial_view.positive_int(manifest.get("eval_tokens")),
        peak_flops=peak, no_peak_reason=no_peak,
    )


def trial_accelerator(device_setting: str, seen: str) -> str:
    """Where the trainer's torch runs: --device when it names one, else what the platform probe saw."""
    if device_setting in ("cpu", "mps"):
        return device_setting
    if device_setting == "cuda":
        return seen if seen in GPU_KINDS else "cuda"
    return seen


@functools.lru_cache(maxsize=1)
def _gpu_memory_mb() -> float | None:
    """The GPU's total memory (NVML or amdsmi): fixed, so read once per process."""
    value = telemetry_sample().get("vram_total_mb")
    return float(value) if isinstance(value, int | float) else None


def _ram_mb() -> float | None:
    try:
        return psutil.virtual_memory().total / 2**20
    except Exception:  # psutil raises OSError or RuntimeError where the OS will not say
        return None


def _harness_peak_table(config: RunConfig, executor: TrialExecutor) -> tuple[tuple[str, float], ...]:
    """The peak table of the pristine harness copy (what every trial imports), read without running it."""
    for rel in config.layout.harness:
        try:
            text = (executor.paths.harness / rel).read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError):
            continue
        if PEAK_TABLE_NAME in text:
            return peak_table(text)
    return ()


@functools.lru_cache(maxsize=4)
def peak_table(source: str) -> tuple[tuple[str, float], ...]:
    """PEAK_BF16_FLOPS from a harness's source, as literals (an upstream harness without it: empty)."""
    try:
        tree = ast.parse(source)
    except (SyntaxError, ValueError):
        return ()
    for node in tree.body:
        if isinstance(node, ast.Assign) and any(isinstance(t, ast.Name) and t.id == PEAK_TABLE_NAME
                                                for t in node.targets):
            try:
                value = ast.literal_eval(node.value)
            except (ValueError, TypeError, SyntaxError, RecursionError):
                return ()
            return tuple((key, float(flops)) for key, flops in _pairs(value))
    return ()


def _pairs(value: Any) -> list[tuple[str, float]]:
    if not isinstance(value, list | tuple):
        return []
    return [(item[0], item[1]) for item in value if isinstance(item, list | tuple) and len(item) == 2
            and isinstance(item[0], str) and isinstance(item[1], int | float)
            and not isinstance(item[1], bool)]


def peak_flops(table: tuple[tuple[str, float], ...], device_name: str) -> float | None:
    """The harness's own matching rule (trainer/prepare.py peak_flops): the first key whose words all occur
    in the device's name."""
    words = set(re.split(r"[^a-z0-9]+", device_name.lower()))
    for key, flops in table:
        if set(key.split()) <= words:
            return flops
    return None


def noise_view(record: NoiseRecord | None, finished: list[Trial], progress_path: Path) -> NoiseView | None:
    """The latest noise measurement seed by seed. Steps per seed come from noise/progress.json, which holds
    the latest measurement only: used when it is the same one (same commit, same values)."""
    if record is None:
        return None
    seeds = (_seeds_from_progress(progress_path, record)
             or tuple(SeedRun(None, v, None) for v in record.values))
    same_code = [t for t in finished if t.commit_sha == record.commit_sha and t.kind == TrialKind.TRIAL]
    keeps = [t for t in same_code if t.status == TrialStatus.KEEP]
    trial = (keeps or same_code or [None])[-1]
    return NoiseView(seeds=seeds, sd=record.sd, factor=record.factor, budget_s=record.budget_s,
                     commit=record.commit_sha, trial_id=trial.id if trial is not None else None)


def _seeds_from_progress(path: Path, record: NoiseRecord) -> tuple[SeedRun, ...]:
    try:
        progress = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return ()
    if not isinstance(progress, dict) or progress.get("commit") != record.commit_sha:
        return ()
    seeds = progress.get("seeds")
    listed = seeds if isinstance(seeds, list) else []
    ok = [s for s in listed if isinstance(s, dict) and s.get("status") == "ok"]
    if [s.get("val_bpb") for s in ok] != list(record.values):
        return ()  # another measurement's progress
    return tuple(SeedRun(seed=s["seed"] if type(s.get("seed")) is int else None, val_bpb=s["val_bpb"],
                         num_steps=s["num_steps"] if type(s.get("num_steps")) is int else None) for s in ok)


def step_sizes(best: Trial | None, finished: list[Trial], seq_len: int | None) -> list[StepSize]:
    """Tokens per step of the last keep (the script as kept), and of the last trial when it trained
    another number."""
    sizes: list[StepSize] = []
    kept = trial_view.tokens_per_step(best.summary, seq_len) if best is not None else None
    if best is not None and kept is not None:
        sizes.append(StepSize(best.id, kept, prompts.STEP_ROLE_KEEP))
    trials = [t for t in finished if t.kind == TrialKind.TRIAL]
    last = trials[-1] if trials else None
    if last is not None and (best is None or last.id != best.id):
        tokens = trial_view.tokens_per_step(last.summary, seq_len)
        if tokens is not None and tokens != kept:
            sizes.append(StepSize(last.id, tokens, prompts.STEP_ROLE_LAST))
    return sizes
