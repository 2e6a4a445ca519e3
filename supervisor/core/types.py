"""The rows of a run, typed: what the ledger returns and every consumer reads.

Each row type has exactly its table's column names as attributes, with JSON columns decoded and flags as
bools, so a reader writes `entry.hypothesis`, never `entry["hypothesis"]`. The rows are frozen: a change goes
through the ledger, which is the source of truth. Statuses and states are enums whose values are the strings
stored in SQLite, so old ledgers read unchanged and comparisons with plain strings still hold.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from enum import StrEnum
from typing import Any


class TrialStatus(StrEnum):
    RUNNING = "running"
    KEEP = "keep"
    DISCARD = "discard"
    CRASH = "crash"
    ABORTED = "aborted"  # killed mid-trial (supervisor died, run stopped, or the person stopped it): not judged
    # Judged and not kept because a guard found something in its script: the number is recorded, the branch is
    # back at the parent (as for a discard), and the person decides. results.tsv writes it as a discard.
    HELD = "held"

    @property
    def finished(self) -> bool:
        """Judged: it has a result that counts (results.tsv's statuses, held written as discard)."""
        return self in FINISHED_STATUSES

    @property
    def upstream(self) -> str:
        """The status in upstream's results.tsv vocabulary (keep, discard, crash)."""
        return str(TrialStatus.DISCARD) if self is TrialStatus.HELD else str(self)


FINISHED_STATUSES = (TrialStatus.KEEP, TrialStatus.DISCARD, TrialStatus.CRASH, TrialStatus.HELD)
# How a trial that ran without the sandbox is recorded: its `sandbox` column starts with this word.
UNSANDBOXED_PREFIX = "none"


def is_unsandboxed(sandbox: str | None) -> bool:
    """Whether a trial's recorded sandbox says it ran without one (None: not recorded, unknown)."""
    return bool(sandbox) and str(sandbox).strip().lower().startswith(UNSANDBOXED_PREFIX)


class TrialKind(StrEnum):
    TRIAL = "trial"
    IMPORTED = "imported"  # a line of an upstream results.tsv


class RunState(StrEnum):
    NEW = "new"
    READY = "ready"
    NOISE = "noise"  # measuring the noise floor
    RUNNING = "running"  # the agent's turn
    TRIAL = "trial"  # a trial is training
    PAUSED = "paused"
    STOPPED = "stopped"
    FINISHED = "finished"
    INTERRUPTED = "interrupted"  # shown, never stored: a live state whose supervisor is gone
    IMPORTED = "imported"  # a run made from an upstream results.tsv (`autoresearch import`)

    @property
    def live(self) -> bool:
        """A supervisor should be holding the run's lock in this state."""
        return self in LIVE_STATES


LIVE_STATES = (RunState.RUNNING, RunState.TRIAL, RunState.PAUSED, RunState.NOISE, RunState.READY)


class PlanStatus(StrEnum):
    OPEN = "open"
    TRIED = "tried"
    DROPPED = "dropped"


@dataclass(frozen=True)
class Trial:
    id: int
    kind: TrialKind
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
    # How the trial's process was confined: "bwrap", ..., or "none: <why>"; None when not recorded (old ledgers).
    sandbox: str | None = None
    # val_bpb on the audit split (never used for a decision; scored for keeps); None when not scored.
    audit_val_bpb: float | None = None
    audit_note: str | None = None  # why a keep has no audit score (an old cache, an evaluator failure)
    retest_of: int | None = None  # the earlier trial whose diff this one deliberately ran again

    @property
    def unsandboxed(self) -> bool:
        return is_unsandboxed(self.sandbox)

    @property
    def held(self) -> bool:
        return self.status == TrialStatus.HELD

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
    # Acknowledged by the agent (migration 3; a ledger read as it is before the upgrade has none).
    acknowledged: float | None = None
    ack_how: str | None = None     # "journal" (answered in a journal entry) | "tool" (acknowledge_steering)
    ack_note: str | None = None    # the agent's answer, when it gave one

    @property
    def state(self) -> str:
        """pending (not yet shown to the agent), delivered (shown, not yet answered) or acknowledged."""
        if self.acknowledged is not None:
            return "acknowledged"
        return "delivered" if self.delivered is not None else "pending"


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
class RepeatRecord:
    """A submission refused because it repeated an earlier trial's diff (the run_trial tool's no-repeat rule)."""

    id: int
    created: float
    earlier_trial: int
    match: str  # "exact" | "near"
    description: str


class TransferStatus(StrEnum):
    RUNNING = "running"
    OK = "ok"
    CRASH = "crash"
    ABORTED = "aborted"


@dataclass(frozen=True)
class TransferRun:
    """One run of a keep's (or the chain's root's) code at a larger scale, by `autoresearch transfer`."""

    id: int
    created: float
    scale: str  # the scale's key: runs at one scale compare only with each other
    scale_json: dict
    trial_id: int  # the trial whose code ran
    commit_sha: str
    seed: int
    status: TransferStatus
    val_bpb: float | None = None
    reason: str | None = None
    wall_seconds: float | None = None
    pid: int | None = None
    started: float | None = None
    finished: float | None = None


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


# The keys of a trial's record, in order: `status --json` (every trial of the run) and the agent's context
# (what the model reads about one trial: a short commit and only the end of the log).
STATUS_RECORD_KEYS = (
    "id", "kind", "commit", "parent_commit", "parent_trial", "description", "category", "status", "val_bpb",
    "extra_values", "delta", "flagged", "decision", "crash_reason", "journal", "budget_s", "training_seconds",
    "wall_seconds", "num_steps", "tokens_per_s", "mfu_percent", "peak_vram_mb", "platform", "suspicious", "sandbox",
    "usage", "audit_val_bpb", "audit_note", "retest_of",
)
# The audit split's score is never the agent's to see (it would become a second validation split to tune on).
AGENT_RECORD_KEYS = (
    "id", "status", "commit", "parent_trial", "description", "category", "val_bpb", "parent_val_bpb", "delta",
    "flagged", "decision", "crash_reason", "num_steps", "tokens_per_s", "mfu_percent", "peak_vram_mb",
    "training_seconds", "log_tail",
)
AGENT_LOG_TAIL_CHARS = 1500


def trial_record(t: Trial, *, for_agent: bool = False, journal: bool = False,
                 usage: dict[str, Any] | None = None) -> dict[str, Any]:
    """A trial as plain JSON-able data, the one encoder of trials: `status --json`'s shape, or the agent's.

    `journal` (whether its journal entry is written) and `usage` (the agent's tokens and dollars for it) are
    not the trial's own columns; the status record carries them, the agent's does not.
    """
    values = {
        "id": t.id, "kind": str(t.kind), "commit": t.short_commit if for_agent else t.commit_sha,
        "parent_commit": t.parent_commit, "parent_trial": t.parent_trial, "description": t.description,
        "category": t.category, "status": str(t.status), "val_bpb": t.val_bpb,
        "extra_values": list(t.extra_values), "parent_val_bpb": t.parent_val_bpb, "delta": t.delta,
        "flagged": t.flagged, "decision": t.decision, "crash_reason": t.crash_reason, "journal": journal,
        "budget_s": t.budget_s, "training_seconds": t.training_seconds, "wall_seconds": t.wall_seconds,
        "num_steps": t.num_steps, "tokens_per_s": t.tokens_per_s, "mfu_percent": t.mfu_percent,
        "peak_vram_mb": t.peak_vram_mb, "platform": t.platform, "suspicious": list(t.suspicions),
        "sandbox": t.sandbox, "usage": usage, "log_tail": t.log_tail[-AGENT_LOG_TAIL_CHARS:],
        "audit_val_bpb": t.audit_val_bpb, "audit_note": t.audit_note, "retest_of": t.retest_of,
    }
    return {key: values[key] for key in (AGENT_RECORD_KEYS if for_agent else STATUS_RECORD_KEYS)}


def row_record(row: Any) -> dict[str, Any]:
    """Any other row as plain JSON-able data: its columns, tuples as lists and enums as their strings."""
    return {f.name: _plain(getattr(row, f.name)) for f in dataclasses.fields(row)}


def _plain(value: Any) -> Any:
    if isinstance(value, StrEnum):
        return str(value)
    if isinstance(value, tuple):
        return [_plain(v) for v in value]
    return value
