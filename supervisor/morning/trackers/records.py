"""What one trial becomes in an experiment tracker, read from the run's ledger.

One tracker run per trial, named `<tag>-trial-0007` and grouped by the tag, with:

- config: the trial's parent, category, diff hash, budget and platform (and the run's policy, agent and
  noise floor, so runs of different nights can be told apart);
- history: the trial's loss curve, one row per metric row the ledger kept (its step, its loss);
- summary: val_bpb, its change against the parent, the decision, the flag, and the cost: the agent's
  dollars and tokens for the trial (the same share `status --json` gives it) and the trial's seconds.

Only the trial's own facts go out: nothing from the environment, no key, no base URL.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from supervisor.core.categories import trial_category
from supervisor.core.config import RunConfig
from supervisor.core.types import Trial, TrialKind, TrialStatus
from supervisor.store.ledger import Ledger

HISTORY_METRIC = "loss"
# Long free text is cut: trackers cap a config value (MLflow: 6000 characters) and a table cell should stay
# readable; the whole description is in the ledger and the graveyard.
DESCRIPTION_CHARS = 500
# The trial's own numbers that go into the summary beside the verdict, as the ledger names them.
SUMMARY_NUMBERS = ("wall_seconds", "training_seconds", "num_steps", "tokens_per_s", "mfu_percent",
                   "peak_vram_mb", "num_params_m")


def run_name(tag: str, trial_id: int) -> str:
    """The tracker run of a trial: the same name from `export tracker` and from `run --tracker`, so an export
    after a streamed night recognises what is already there."""
    return f"{tag}-trial-{trial_id:04d}"


def diff_hash(diff: str) -> str | None:
    """A short fingerprint of what the trial changed (equal diffs, equal hashes); None for no change."""
    if not diff.strip():
        return None
    return hashlib.sha256(diff.encode("utf-8", "surrogatepass")).hexdigest()[:16]


@dataclass(frozen=True)
class HistoryRow:
    """One point of a loss curve: the trainer's step, its values, and when it was measured (epoch seconds)."""

    step: int
    values: dict[str, float]
    time: float | None = None


@dataclass(frozen=True)
class RunFacts:
    """What every trial's config shares: the run's tag, policy, agent, and its noise floor per budget."""

    tag: str
    policy: str
    agent: str
    model: str | None
    floors: dict[float, float | None] = field(default_factory=dict)

    @classmethod
    def from_ledger(cls, ledger: Ledger) -> RunFacts:
        run = ledger.run_row()
        config = RunConfig.from_json(run.config)
        floors = {}
        for noise in ledger.noise_records():  # oldest first: the newest measurement of a budget wins
            # The run's factor, as the graveyard and the report apply it.
            floors[round(noise.budget_s, 6)] = None if noise.sd is None else noise.sd * config.floor_factor
        return cls(tag=run.tag, policy=str(config.policy), agent=str(config.agent), model=config.model,
                   floors=floors)

    def floor(self, budget_s: float | None) -> float | None:
        return None if budget_s is None else self.floors.get(round(budget_s, 6))


def trial_config(trial: Trial, facts: RunFacts) -> dict[str, Any]:
    """The tracker run's config: what the trial was, set before it trains (None values are left out)."""
    category = trial_category(trial.category, trial.description, trial.diff)
    values: dict[str, Any] = {
        "trial": trial.id,
        "tag": facts.tag,
        "description": trial.description[:DESCRIPTION_CHARS],
        "parent_trial": trial.parent_trial,
        "parent_commit": trial.parent_commit,
        "commit": trial.commit_sha,
        "category": category.name,
        "category_source": category.source,
        "diff_sha256": diff_hash(trial.diff),
        "budget_s": trial.budget_s,
        "seed": trial.seed,
        "platform": {k: v for k, v in trial.platform.items() if v not in (None, "")} or None,
        "policy": facts.policy,
        "agent": facts.agent,
        "model": facts.model,
        "noise_floor": facts.floor(trial.budget_s),
        "imported": True if trial.kind == TrialKind.IMPORTED else None,
    }
    return {k: v for k, v in values.items() if v is not None}


def trial_summary(trial: Trial) -> dict[str, Any]:
    """The verdict and the trial's numbers, known once it is judged (cost comes apart: `cost_summary`)."""
    values: dict[str, Any] = {
        "status": str(trial.status),
        "val_bpb": trial.val_bpb,
        "parent_val_bpb": trial.parent_val_bpb,
        "delta": trial.delta,
        "decision": trial.decision or None,
        "flagged": trial.flagged,
        "crash_reason": trial.crash_reason,
        "suspicious": len(trial.suspicions) or None,
        **{name: getattr(trial, name) for name in SUMMARY_NUMBERS},
    }
    return {k: v for k, v in values.items() if v is not None and not _not_finite(v)}


def cost_summary(usage: Mapping[str, Any] | None) -> dict[str, Any]:
    """The agent's share of the spend for one trial (status.usage_by_trial's), as summary values.

    No usage at all is a cost of 0 (the offline and scripted agents pay nothing); a spend that includes
    turns of a model with no known price has tokens but no dollars.
    """
    if not usage:
        return {"cost_usd": 0.0, "agent_turns": 0, "agent_tokens_in": 0, "agent_tokens_out": 0}
    values = {"cost_usd": usage.get("cost_usd"), "agent_turns": usage.get("turns", 0),
              "agent_tokens_in": usage.get("tokens_in", 0), "agent_tokens_out": usage.get("tokens_out", 0)}
    return {k: v for k, v in values.items() if v is not None}


_MAX_STEP = 2**53  # exact in a float, within int64: what every tracker takes as a step

def history_row(metric: Mapping[str, Any], index: int, when: float | None = None) -> HistoryRow | None:
    """One metric row as a point of the loss curve; None for a row without a finite loss (a NaN ends a trial
    as a crash, which its summary says). A row without a step is placed at its position."""
    loss = metric.get(HISTORY_METRIC)
    if not isinstance(loss, int | float) or isinstance(loss, bool) or _not_finite(float(loss)):
        return None
    step = metric.get("step")
    # The trial wrote the row: a step beyond int64 (1e300) would make every tracker refuse the run.
    usable = (isinstance(step, int | float) and not isinstance(step, bool) and not _not_finite(float(step))
              and 0 <= step < _MAX_STEP)
    return HistoryRow(step=int(step) if usable else index, values={HISTORY_METRIC: float(loss)}, time=when)


def history_rows(metrics: Sequence[Mapping[str, Any]], started: float | None = None) -> list[HistoryRow]:
    """A trial's metric rows (the ledger's) as a loss curve; each point's time is the trial's start plus the
    row's elapsed training seconds, when both are known."""
    rows = []
    for index, metric in enumerate(metrics):
        elapsed = metric.get("elapsed")
        when = started + elapsed if started is not None and isinstance(elapsed, int | float) else None
        row = history_row(metric, index, when)
        if row is not None:
            rows.append(row)
    return rows


def exportable(trial: Trial) -> bool:
    """A trial that has ended (judged, or stopped before it was); a running one is exported later."""
    return trial.status != TrialStatus.RUNNING


def _not_finite(value: Any) -> bool:
    return isinstance(value, float) and not math.isfinite(value)
