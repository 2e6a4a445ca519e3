"""Measuring the noise floor: re-run the current best with new seeds and store the spread.

A UI in another process follows the measurement through noise/progress.json.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from typing import Any

from supervisor.core import events as ev
from supervisor.core.config import ConfigError
from supervisor.core.policy import NoiseMeasurement
from supervisor.core.types import RunState
from supervisor.run.executor import TrialExecutor
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
    values = _seed_runs(ex, repeats, NOISE_SEED_BASE + 100 * previous, progress, run_stopping)
    platform = f"{ex.platform.get('gpu', 'unknown')}, torch {ex.platform.get('torch', '?')}"
    noise = NoiseMeasurement(values, config.budget_s, platform)
    if run_stopping() or ex.trial_stop.is_set():
        bus.emit(ev.NOTICE, level="warning", message="noise measurement interrupted: nothing stored")
    elif noise.n >= 2:
        ledger.add_noise(commit_sha=commit, budget_s=config.budget_s, platform=platform,
                         values=values, sd=noise.sd, factor=config.floor_factor)
        if ledger.finished_trials():
            ledger.add_trigger("noise", noise.describe(config.floor_factor))
        ex.files.render()
    bus.emit(ev.NOISE, values=values, sd=noise.sd, floor=noise.floor(config.floor_factor))
    ex.set_state(RunState.RUNNING, "")
    return noise


def _seed_runs(ex: TrialExecutor, repeats: int, first_seed: int, progress: dict[str, Any],
               run_stopping: Callable[[], bool]) -> list[float]:
    """The values of the seed runs that finished, until a stop."""
    values: list[float] = []
    for i in range(repeats):
        if run_stopping() or ex.trial_stop.is_set():
            break
        seed = first_seed + i
        ex.bus.emit(ev.NOTICE, level="info", message=f"noise run {i + 1}/{repeats} (seed {seed})")
        out_dir = ex.paths.noise_dir(i)
        progress["seeds"].append({"index": i + 1, "seed": seed, "status": "running", "started": time.time(),
                                  "dir": out_dir.relative_to(ex.paths.run_dir).as_posix()})
        _write_progress(ex, progress)
        outcome = ex.execute(None, out_dir, seed, live=False)
        ok = outcome.status == "ok" and outcome.val_bpb is not None
        steps = summary_float(outcome.summary, "num_steps")
        progress["seeds"][-1].update(status="ok" if ok else "stopped" if outcome.stopped else "crash",
                                     val_bpb=outcome.val_bpb if ok else None,
                                     num_steps=int(steps) if steps is not None else None)
        _write_progress(ex, progress)
        if ok:
            values.append(outcome.val_bpb)
        else:
            ex.bus.emit(ev.NOTICE, level="warning", message=f"noise run {i + 1} crashed: {outcome.reason}")
    return values


def _write_progress(ex: TrialExecutor, progress: dict[str, Any]) -> None:
    try:
        atomic_write(ex.paths.noise_progress, json.dumps(progress))
    except OSError:
        pass  # only the UI's view of the measurement: a full disk must not stop it
