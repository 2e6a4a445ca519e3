"""The noise floor a run decides with, read from its ledger: the latest measurement at this budget, pooled with
the re-runs of identical code since, with what the machine was doing while the floor's seeds ran.

The machine's state and the seeds' step counts are kept in the ledger's meta table, under the noise record's id
(``noise_conditions``): facts about a record, added without changing its table.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from supervisor.core.policy import NoiseEstimate
from supervisor.core.types import Trial, TrialKind, TrialStatus
from supervisor.run.sentinel import MachineLoad
from supervisor.store.ledger import Ledger

CONDITIONS_KEY = "noise_conditions"
# Seeds of unchanged re-runs of a keep: 100000 + 1000 x the keep's id + the run's number. A re-run is its own trial
# (a discard, parent_trial = the keep) with a seed at or above this.
RERUN_SEED_BASE = 100_000
# Seeds of deliberate re-tests of the same change on the same keep (run_trial's retest_of): 1000000 + 1000 x the
# earlier trial's id + how many runs of that change there were. A new seed: a re-test is a new sample of the
# change, and its runs count together (a second draw is not a fresh start).
RETEST_SEED_BASE = 1_000_000
# Trials whose runs may form a group of identical code: judged, with a number (a crash has none).
_GROUP_STATUSES = (TrialStatus.KEEP, TrialStatus.DISCARD, TrialStatus.HELD)


def record_conditions(ledger: Ledger, noise_id: int, steps: Sequence[int | None], load: MachineLoad | None) -> None:
    """Keep how many steps each seed ran and how busy the machine was, beside noise record ``noise_id``."""
    conditions = dict(ledger.get_meta(CONDITIONS_KEY) or {})
    conditions[str(noise_id)] = {"steps": [s for s in steps if s is not None],
                                 "machine": None if load is None else load.as_json()}
    ledger.set_meta(CONDITIONS_KEY, conditions)


def conditions(ledger: Ledger, noise_id: int) -> dict[str, Any]:
    found = (ledger.get_meta(CONDITIONS_KEY) or {}).get(str(noise_id))
    return found if isinstance(found, dict) else {}


# A deliberate re-test of a change on the same keep is judged with the change's earlier runs: they are recorded
# among its extra values (first, before its own confirmation runs), and its summary says how many and whose.
POOLED_RUNS = "supervisor.pooled_runs"
POOLED_FROM = "supervisor.pooled_from"


def own_runs(trial: Trial) -> list[float]:
    """The val_bpb of the runs this trial ran itself: its values without those pooled from earlier re-tests."""
    if trial.val_bpb is None:
        return []
    try:
        pooled = max(0, int(trial.summary.get(POOLED_RUNS) or 0))
    except (TypeError, ValueError):
        pooled = 0
    return [trial.val_bpb, *trial.extra_values[pooled:]]


def pooled_elsewhere(trials: Sequence[Trial]) -> set[int]:
    """Trials whose runs a later re-test holds (and counts) beside its own."""
    out: set[int] = set()
    for trial in trials:
        for word in str(trial.summary.get(POOLED_FROM) or "").split(","):
            if word.strip().isdigit():
                out.add(int(word))
    return out


def is_rerun(trial: Trial) -> bool:
    """An unchanged re-run of a keep (its seed says so, and it changed nothing: a re-test has a seed this high too)."""
    return (trial.seed is not None and trial.seed >= RERUN_SEED_BASE and trial.parent_trial is not None
            and not trial.diff.strip())


def rerun_values(trials: Sequence[Trial], keep: Trial) -> list[float]:
    """The val_bpb of the unchanged re-runs of ``keep``: samples of its code, kept apart from its own runs.

    They feed the floor and what the agent is shown, never a child's decision: a trial knows its seed, so a keep
    could do worse on purpose when re-run and make any later child look like a gain against a worse mean."""
    return [t.val_bpb for t in trials if is_rerun(t) and t.parent_trial == keep.id and t.val_bpb is not None
            and t.parent_commit == keep.commit_sha]


def same_code_groups(trials: Sequence[Trial], budget_s: float,
                     pending: tuple[int, float] | None = None) -> list[tuple[float, ...]]:
    """The val_bpb of each trial that ran its code more than once at this budget: a keep with its unchanged
    re-runs (and ``pending``, a re-run of keep id not recorded yet), a trial with its confirmation runs."""
    groups = []
    held_later = pooled_elsewhere(trials)  # a re-tested change's runs count once, in its newest re-test's group
    for t in trials:
        if not (t.kind == TrialKind.TRIAL and t.status in _GROUP_STATUSES and t.budget_s is not None
                and abs(t.budget_s - budget_s) < 1e-6) or is_rerun(t) or t.id in held_later:
            continue
        values = [*t.all_values, *rerun_values(trials, t)]
        if pending is not None and pending[0] == t.id:
            values.append(pending[1])
        if len(values) >= 2:
            groups.append(tuple(values))
    return groups


def noise_estimate(ledger: Ledger, budget_s: float, pending: tuple[int, float] | None = None) -> NoiseEstimate | None:
    """The floor's noise at this budget, pooled with re-runs; None while no floor is measured (or given).
    ``pending``: (keep id, value) of a re-run not recorded yet, counted as if it were."""
    record = ledger.latest_noise(budget_s)
    if record is None:
        return None
    steps = conditions(ledger, record.id).get("steps") or []
    groups = same_code_groups(ledger.finished_trials(), budget_s, pending)
    return NoiseEstimate(tuple(record.values), record.sd, tuple(groups),
                         tuple(int(s) for s in steps if isinstance(s, int) and not isinstance(s, bool)))


def floor_machine(ledger: Ledger, budget_s: float) -> MachineLoad | None:
    """How busy the machine was while the current floor's seeds ran; None before the sentinel or any floor."""
    record = ledger.latest_noise(budget_s)
    return None if record is None else MachineLoad.from_json(conditions(ledger, record.id).get("machine"))


def noise_status(ledger: Ledger, budget_s: float, factor: float) -> dict[str, Any] | None:
    """`status --json`'s noise: the measurement, the floor decisions use (pooled), and its flag."""
    record = ledger.latest_noise(budget_s)
    estimate = noise_estimate(ledger, budget_s)
    if record is None or estimate is None:
        return None
    machine = floor_machine(ledger, budget_s)
    return {
        # "sd" is the seeds' own; "floor" is what decisions use: factor x the pooled sd (the seeds' alone until a
        # re-run of identical code joins them).
        "values": list(record.values), "sd": record.sd, "floor": estimate.floor(factor), "commit": record.commit_sha,
        "budget_s": record.budget_s, "platform": record.platform,
        "pooled_sd": estimate.sd, "rerun_groups": len(estimate.pooled_groups), "runs": estimate.runs,
        "steps": list(estimate.steps), "flag": estimate.steps_warning, "text": estimate.describe(factor),
        "machine": None if machine is None else machine.as_json(),
    }
