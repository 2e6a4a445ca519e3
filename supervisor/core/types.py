"""The rows of a run, typed: what the ledger returns and every consumer reads.

Each row type has exactly its table's column names as attributes, with JSON columns decoded and flags as
bools, so a reader writes `entry.hypothesis`, never `entry["hypothesis"]`. The rows are frozen: a change goes
through the ledger, which is the source of truth. Statuses and states are enums whose values are the strings
stored in SQLite, so old ledgers read unchanged and comparisons with plain strings still hold.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any


class TrialStatus(StrEnum):
    RUNNING = "running"
    KEEP = "keep"
    DISCARD = "discard"
    CRASH = "crash"
    ABORTED = "aborted"  # killed mid-trial (supervisor died, run stopped, or the person stopped it): not judged

    @property
    def finished(self) -> bool:
        """Judged: it has a result that counts (results.tsv's statuses)."""
        return self in FINISHED_STATUSES


FINISHED_STATUSES = (TrialStatus.KEEP, TrialStatus.DISCARD, TrialStatus.CRASH)


class TrialKind(StrEnum):
    TRIAL = "trial"
    IMPORTED = "imported"  # a line of an upstream results.tsv


class RunState(StrEnum):
    NEW = "new"
    READY = "ready"
    NOISE = "noise"  # measuring the noise floor
    RUNNING = "running"
    PAUSED = "paused"
    STOPPED = "stopped"
    FINISHED = "finished"
    INTERRUPTED = "interrupted"
    IMPORTED = "imported"


class PlanStatus(StrEnum):
    OPEN = "open"
    TRIED = "tried"
    DROPPED = "dropped"


@dataclass(frozen=True)
class Trial:
    id: int
    kind: str
    commit_sha: str | None
    parent_commit: str | None
    parent_trial: int | None
    description: str
    category: str | None
    plan_id: int | None
    status: TrialStatus
    val_bpb: float | None
    extra_values: tuple[float, ...]
    parent_val_bpb: float | None
    delta: float | None
    flagged: bool
    decision: str
    crash_reason: str | None
    diff: str
    log_tail: str
    summary: dict[str, str]
    budget_s: float | None
    platform: dict[str, str]
    seed: int | None
    started: float | None
    finished: float | None
    wall_seconds: float | None
    training_seconds: float | None
    num_steps: int | None
    tokens_per_s: float | None
    mfu_percent: float | None
    peak_vram_mb: float | None
    num_params_m: float | None
    pid: int | None = None
    suspicions: tuple[str, ...] = ()

    @property
    def all_values(self) -> list[float]:
        first = [self.val_bpb] if self.val_bpb is not None else []
        return first + list(self.extra_values)

    @property
    def mean_val_bpb(self) -> float | None:
        values = self.all_values
        return sum(values) / len(values) if values else None

    @property
    def short_commit(self) -> str:
        return (self.commit_sha or "")[:7]


@dataclass(frozen=True)
class JournalEntry:
    id: int
    trial_id: int
    created: float
    hypothesis: str
    change: str
    result: str
    interpretation: str
    next_step: str


@dataclass(frozen=True)
class Trigger:
    id: int
    created: float
    kind: str
    detail: str
    reflection_id: int | None


@dataclass(frozen=True)
class Reflection:
    id: int
    created: float
    after_trial: int | None
    triggers: tuple[str, ...]
    load_bearing: str
    dead_ends: str
    retest: str
    plan: str


@dataclass(frozen=True)
class Plan:
    id: int
    created: float
    idea: str
    rationale: str
    status: PlanStatus
    reason: str | None
    closed: float | None
    trial_id: int | None


@dataclass(frozen=True)
class Steering:
    id: int
    created: float
    message: str
    delivered_turn: int | None
    delivered: float | None


@dataclass(frozen=True)
class Turn:
    id: int
    created: float
    role: str  # agent | tool | system
    text: str
    tool: str | None
    input: Any
    refused: bool
    usage: dict[str, Any] | None


@dataclass(frozen=True)
class NoiseRecord:
    id: int
    created: float
    commit_sha: str
    budget_s: float
    platform: str
    values: tuple[float, ...]
    sd: float | None
    factor: float

    @property
    def floor(self) -> float | None:
        return None if self.sd is None else self.factor * self.sd


@dataclass(frozen=True)
class RunRecord:
    tag: str
    created: float
    config: str  # RunConfig as JSON (RunConfig.from_json)
    state: RunState
    state_detail: str
    pid: int | None
    updated: float


@dataclass(frozen=True)
class Command:
    id: int
    created: float
    command: str
    arg: str
    consumed: float | None


@dataclass(frozen=True)
class MetricPoint:
    """One line of a trial's live metrics stream."""
    seq: int
    step: int | None
    elapsed: float | None
    loss: float | None
    lr: float | None
    tokens_per_s: float | None
    mfu: float | None
    vram_mb: float | None
    extra: dict[str, Any] = field(default_factory=dict)
