"""A simulated machine for the speed sentinel's tests: what the sentinel reads about other processes, and how fast
the stand-in trainer runs, both set by the test (never the real machine's load, so no test depends on it)."""

from __future__ import annotations

import dataclasses
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from supervisor.core.config import RunConfig
from supervisor.run.loop import Supervisor
from supervisor.run.sentinel import MachineSample
from supervisor.trial.runner import TrialOutcome, TrialSpec, run_trial
from tests.loop_support import CallbackAgent, Recorder, fake_config


class SimulatedMachine:
    """Other processes use ``others_share`` of the CPUs (what ``read`` reports), and the stand-in trainer runs
    ``slowdown`` times slower (fewer steps, lower tokens/s, a worse val_bpb) through FAKE_MACHINE_SLOWDOWN.

    ``plan`` sets the machine for the next runs in order, one (others_share, slowdown) each; after it, the
    machine stays as it was last set. Pass ``runner`` to the Supervisor and ``read`` to its executor."""

    def __init__(self, cpus: int = 2) -> None:
        self.cpus = cpus
        self.others_share = 0.0
        self.slowdown = 1.0
        self.gpu_others: int | None = None
        self.plan: list[tuple[float, float]] = []
        self.runs: list[float] = []  # the slowdown each run had
        self._busy = 0.0
        self._last = time.monotonic()
        self._lock = threading.Lock()

    def _advance(self) -> None:
        now = time.monotonic()
        self._busy += self.others_share * self.cpus * (now - self._last)
        self._last = now

    def set(self, others_share: float, slowdown: float = 1.0) -> None:
        with self._lock:
            self._advance()
            self.others_share, self.slowdown = others_share, slowdown

    def read(self) -> MachineSample:
        with self._lock:
            self._advance()
            return MachineSample(at=self._last, busy_cpu_s=self._busy, own_cpu_s=0.0, cpus=self.cpus,
                                 gpu_others=self.gpu_others)

    def runner(self, spec: TrialSpec, **kwargs: Any) -> TrialOutcome:
        if self.plan:
            self.set(*self.plan.pop(0))
        self.runs.append(self.slowdown)
        spec = dataclasses.replace(spec, extra_env={**spec.extra_env, "FAKE_MACHINE_SLOWDOWN": str(self.slowdown)})
        return run_trial(spec, **kwargs)


def supervised_on(machine: SimulatedMachine, tmp_path: Path, agent: Callable[..., Any],
                  **cfg: Any) -> tuple[Supervisor, RunConfig, Recorder]:
    """A Supervisor on the stand-in trainer whose trials run on ``machine`` and whose sentinel reads it; the
    agent is a CallbackAgent function. Warm starts are off: each run's environment carries the machine's speed."""
    config = fake_config(tmp_path, warm_start=False, **cfg)
    sup = Supervisor(config, CallbackAgent(agent), runner=machine.runner)
    sup.executor.read_machine = machine.read
    recorder = Recorder()
    sup.bus.subscribe(recorder)
    return sup, config, recorder
