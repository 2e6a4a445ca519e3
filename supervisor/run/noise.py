"""Measuring the noise floor: re-run the current best with new seeds and store the spread.

A UI in another process follows the measurement through noise/progress.json. Beside the values, the ledger keeps
how many steps each seed ran and how busy other processes kept the machine meanwhile (run/floor.py): a floor whose
seeds ran very different step counts is flagged, and later trials are compared with the machine as it was here.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from supervisor.core import events as ev
from supervisor.core import prompts
from supervisor.core.config import ConfigError
from supervisor.core.policy import NoiseMeasurement
from supervisor.core.types import RunState
from supervisor.run.executor import TrialExecutor
from supervisor.run.floor import record_conditions
from supervisor.run.sentinel import MachineLoad, floor_load, load_between
from supervisor.store.journal_files import atomic_write
from supervisor.trial.runner import summary_float

NOISE_SEED_BASE = 2000


def measure_noise(executor: TrialExecutor, repeats: int, run_stopping: Callable[[], bool]) -> NoiseMeasurement:
    """Re-run the current best with `repeats` new seeds and store the spread."""
    if repeats < 2:
        raise ConfigError("measuring the noise floor needs at least 2 repeats")
    ex, ledger, config, bus = executor, executor.ledger, executor.config, executor.bus
    ex.workspace.reset_to(ex.branch_target())
    commit = ex.workspace.head()
    ex.set_state(RunState.NOISE, f"measuring the noise floor: {repeats} seeds of {commit[:7]}")
    ex.trial_stop.clear()
    # New seeds for every measurement, so re-measuring the same commit is a new sample.
    previous = len(ledger.noise_records())
    progress: dict[str, Any] = {"commit": commit, "repeats": repeats, "budget_s": config.budget_s, "seeds": []}
    _write_progress(ex, progress)  # replaces an earlier measurement's at once
    seeds = _seed_runs(ex, repeats, NOISE_SEED_BASE + 100 * previous, progress, run_stopping)
    platform = f"{ex.platform.get('gpu', 'unknown')}, torch {ex.platform.get('torch', '?')}"
    noise = NoiseMeasurement(seeds.values, config.budget_s, platform, steps=seeds.steps)
    warning = noise.steps_warning
    if run_stopping() or ex.trial_stop.is_set():
        bus.emit(ev.NOTICE, level="warning", message="noise measurement interrupted: nothing stored")
    elif noise.n >= 2:
        noise_id = ledger.add_noise(commit_sha=commit, budget_s=config.budget_s, platform=platform,
                                    values=seeds.values, sd=noise.sd, factor=config.floor_factor)
        record_conditions(ledger, noise_id, seeds.steps, floor_load(seeds.loads))
        if ledger.finished_trials():
            ledger.add_trigger("noise", noise.describe(config.floor_factor))
        if warning:
            bus.emit(ev.NOTICE, level="warning", message=prompts.NOISE_FLAGGED.format(warning=warning))
        ex.files.render()
    bus.emit(ev.NOISE, values=seeds.values, sd=noise.sd, floor=noise.floor(config.floor_factor), steps=seeds.steps,
             flag=warning)
    ex.set_state(RunState.RUNNING, "")
    return noise


@dataclass
class _Seeds:
    """The seed runs that finished: their val_bpb, steps and the machine's load, in the same order."""

    values: list[float] = field(default_factory=list)
    steps: list[int | None] = field(default_factory=list)
    loads: list[MachineLoad] = field(default_factory=list)


def _seed_runs(ex: TrialExecutor, repeats: int, first_seed: int, progress: dict[str, Any],
               run_stopping: Callable[[], bool]) -> _Seeds:
    """The seed runs that finished, until a stop."""
    seeds = _Seeds()
    for i in range(repeats):
        if run_stopping() or ex.trial_stop.is_set():
            break
        seed = first_seed + i
        ex.bus.emit(ev.NOTICE, level="info", message=f"noise run {i + 1}/{repeats} (seed {seed})")
        out_dir = ex.paths.noise_dir(i)
        progress["seeds"].append({"index": i + 1, "seed": seed, "status": "running", "started": time.time(),
                                  "dir": out_dir.relative_to(ex.paths.run_dir).as_posix()})
        _write_progress(ex, progress)
        before = ex.read_machine()
        outcome = ex.execute(None, out_dir, seed, live=False)
        load = load_between(before, ex.read_machine())
        ok = outcome.status == "ok" and outcome.val_bpb is not None
        steps = summary_float(outcome.summary, "num_steps")
        progress["seeds"][-1].update(status="ok" if ok else "stopped" if outcome.stopped else "crash",
                                     val_bpb=outcome.val_bpb if ok else None,
                                     num_steps=int(steps) if steps is not None else None,
                                     others_cpu_share=load.others_cpu_share, gpu_others=load.gpu_others)
        _write_progress(ex, progress)
        if ok:
            assert outcome.val_bpb is not None
            seeds.values.append(outcome.val_bpb)
            seeds.steps.append(int(steps) if steps is not None else None)
            seeds.loads.append(load)
        else:
            ex.bus.emit(ev.NOTICE, level="warning", message=f"noise run {i + 1} crashed: {outcome.reason}")
    return seeds


def _write_progress(ex: TrialExecutor, progress: dict[str, Any]) -> None:
    try:
        atomic_write(ex.paths.noise_progress, json.dumps(progress))
    except OSError:
        pass  # only the UI's view of the measurement: a full disk must not stop it
