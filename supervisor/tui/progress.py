"""How far a run of the trainer is, read from files another process writes: no Textual in this module.

A trial's or a noise seed's progress against its training budget (`BudgetProgress`); the loop's
noise/progress.json while the noise floor is measured (`NoiseView`, its seeds); and `MetricsTail`, which reads
the new lines of a metrics.jsonl the trainer appends to.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any


@dataclass(frozen=True)
class BudgetProgress:
    phase: str              # starting | training | evaluating
    elapsed_s: float        # training seconds reported by the trainer
    budget_s: float
    wall_s: float           # since the trial started, start-up and evaluation included

    @property
    def fraction(self) -> float:
        return max(0.0, min(1.0, self.elapsed_s / self.budget_s)) if self.budget_s else 0.0


def budget_progress(metrics: list[dict[str, Any]], budget_s: float, started: float | None,
                    now: float) -> BudgetProgress:
    """How far a run of the trainer (a trial or a noise seed) is into its budget."""
    wall = max(0.0, now - (started or now))
    if not metrics:
        return BudgetProgress("starting", 0.0, budget_s, wall)
    elapsed = float(metrics[-1].get("elapsed") or 0.0)
    phase = "evaluating" if elapsed >= budget_s - 0.5 else "training"
    return BudgetProgress(phase, elapsed, budget_s, wall)


SEED_RUNNING = "running"  # a noise seed's status in noise/progress.json while it trains (then ok, crash, stopped)


@dataclass(frozen=True)
class NoiseSeed:
    """One run of the unchanged code with a new seed, as the loop's noise/progress.json reports it."""

    index: int                  # 1-based
    seed: int | None
    status: str                 # running | ok | crash | stopped
    started: float | None
    val_bpb: float | None = None
    num_steps: int | None = None
    dir: str = ""               # relative to the run folder; its metrics.jsonl is the live curve


@dataclass
class NoiseView:
    """The noise-floor measurement in progress: the same code run `repeats` times with new seeds."""

    repeats: int
    commit: str
    budget_s: float | None
    seeds: list[NoiseSeed] = field(default_factory=list)
    metrics: list[dict[str, Any]] = field(default_factory=list)        # the latest seed's curve
    curves: dict[int, list[dict[str, Any]]] = field(default_factory=dict)  # finished seeds' curves, by index

    @property
    def current(self) -> NoiseSeed | None:
        """The seed running now (None between seeds and before the first)."""
        return self.seeds[-1] if self.seeds and self.seeds[-1].status == SEED_RUNNING else None

    @property
    def finished(self) -> list[NoiseSeed]:
        return [s for s in self.seeds if s.status != SEED_RUNNING]

    def progress(self, now: float) -> BudgetProgress | None:
        seed = self.current
        if seed is None or not self.budget_s:
            return None
        return budget_progress(self.metrics, self.budget_s, seed.started, now)


def _number(value: Any) -> float | None:
    return float(value) if isinstance(value, int | float) and not isinstance(value, bool) else None


def parse_noise_progress(data: Any) -> NoiseView | None:
    """The loop's noise/progress.json as a NoiseView; None when it is not what the loop writes."""
    if not isinstance(data, dict) or not isinstance(data.get("seeds"), list):
        return None
    seeds = []
    for raw in data["seeds"]:
        if not isinstance(raw, dict) or not isinstance(raw.get("index"), int):
            continue
        folder = str(raw.get("dir") or "")
        if folder.startswith("/") or ".." in Path(folder).parts:
            continue  # a seed's folder is inside the run folder; the UI reads nothing else
        steps = _number(raw.get("num_steps"))
        seeds.append(NoiseSeed(index=raw["index"], seed=raw.get("seed") if isinstance(raw.get("seed"), int) else None,
                               status=str(raw.get("status") or SEED_RUNNING), started=_number(raw.get("started")),
                               val_bpb=_number(raw.get("val_bpb")), num_steps=None if steps is None else int(steps),
                               dir=folder))
    repeats = data.get("repeats")
    return NoiseView(repeats=repeats if isinstance(repeats, int) else len(seeds), commit=str(data.get("commit") or ""),
                     budget_s=_number(data.get("budget_s")), seeds=seeds)


class MetricsTail:
    """Reads the new complete lines of a JSON-lines metrics file another process appends to."""

    CHUNK = 1 << 20          # at most this much per poll, so one poll never stalls
    MAX_LINE = 4096          # longer is not a metric (the trainer is untrusted)

    def __init__(self, path: Path) -> None:
        self.path = path
        self.offset = 0
        self.partial = b""

    def read(self) -> list[dict[str, Any]]:
        try:
            with open(self.path, "rb") as fh:
                fh.seek(self.offset)
                data = fh.read(self.CHUNK)
        except OSError:
            return []
        self.offset += len(data)
        lines = (self.partial + data).split(b"\n")
        self.partial = lines.pop()
        if len(self.partial) > self.MAX_LINE:
            self.partial = b""  # an over-long line: its rest parses as garbage and is skipped too
        rows = []
        for line in lines:
            if not line.strip() or len(line) > self.MAX_LINE:
                continue
            try:
                row = json.loads(line)
            except ValueError:
                continue  # a stray print into the metrics file
            if isinstance(row, dict):
                rows.append(row)
        return rows
