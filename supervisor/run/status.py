"""`autoresearch status`: a run as a plain dict (JSON), read from the ledger without taking the lock."""

from __future__ import annotations

import bisect
from typing import Any

from supervisor.core.config import RunConfig
from supervisor.core.pricing import UsageTotals
from supervisor.core.types import (
    FINISHED_STATUSES,
    JournalEntry,
    RunState,
    Trial,
    TrialStatus,
    Turn,
    row_record,
    trial_record,
)
from supervisor.run.floor import noise_status
from supervisor.run.transfer import transfer_results
from supervisor.run.trial_setup import budget_text
from supervisor.store.ledger import Ledger
from supervisor.store.lock import RunLock


def run_status(ledger: Ledger, lock_path: Any = None) -> dict[str, Any]:
    run = ledger.run_row()
    cfg = RunConfig.from_json(run.config)
    noise = noise_status(ledger, cfg.budget_s, cfg.floor_factor)  # pooled with re-runs; flagged when uneven
    journal = ledger.journal_entries()
    journaled = {j.trial_id for j in journal}
    usage = usage_by_trial(ledger.turns(), journal)
    trials = ledger.trials()
    records = {
        t.id: trial_record(t, journal=t.id in journaled,
                           usage=usage["by_trial"][t.id].as_dict() if t.id in usage["by_trial"] else None)
        for t in trials
    }
    transfer = transfer_results(ledger, cfg.floor_factor, trials)
    for record in records.values():  # each trial's label at every scale it was judged at
        record["transfer"] = {r.scale_key: str(v.label) for r in transfer for v in r.verdicts
                              if v.keep.id == record["id"]}
    state = str(run.state)
    live = RunLock.holder(lock_path) if lock_path else None
    if run.state.live and lock_path and not live:
        state = f"{RunState.INTERRUPTED} (was {run.state}; continue with --resume)"
    finished = [t for t in trials if t.status.finished]
    best = min((t for t in finished if t.status == TrialStatus.KEEP and t.val_bpb is not None),
               key=lambda t: t.val_bpb or 0.0, default=None)
    return {
        "tag": run.tag,
        "state": state,
        "state_detail": run.state_detail,
        "supervisor": live,
        "workspace": str(cfg.workspace),
        "journal_dir": str(cfg.run_dir),
        "branch": cfg.branch,
        "agent": cfg.agent,
        "budget_s": cfg.budget_s,
        "budget_tokens": cfg.budget_tokens,  # None: the budget is budget_s seconds; else budget_s is a wall-clock cap
        "budget": budget_text(cfg),
        "max_trials": cfg.max_trials,
        "policy": cfg.policy,
        "floor_factor": cfg.floor_factor,
        "noise": noise,
        "noise_floor": None if noise is None else noise["floor"],
        "counts": _counts(ledger, trials),
        "best": None if best is None else records[best.id],
        "trials": list(records.values()),
        "flagged": [records[t.id] for t in finished if t.flagged],
        "suspicious": [{"id": t.id, "description": t.description, "findings": list(t.suspicions)}
                       for t in trials if t.suspicions],
        # Judged but not kept because the guards found something: for the person to look at (and re-run).
        "held": [{"id": t.id, "description": t.description, "val_bpb": t.val_bpb, "decision": t.decision,
                  "findings": list(t.suspicions)} for t in trials if t.status == TrialStatus.HELD],
        "unsandboxed": [{"id": t.id, "description": t.description, "sandbox": t.sandbox}
                        for t in trials if t.unsandboxed],
        **_repeats(ledger, trials),
        "reflections": [row_record(r) for r in ledger.reflections()],
        "plans": [row_record(p) for p in ledger.plans()],
        "steering": [{**row_record(s), "state": s.state} for s in ledger.steering()],
        "open_triggers": [row_record(t) for t in ledger.open_triggers()],
        "transfer": [{"scale": r.scale_key, "sd": r.sd, "factor": r.factor, "counts": r.counts(),
                      "keeps": [v.as_dict() for v in r.verdicts]} for r in transfer],
        "cost": {**usage["total"].as_dict(), **_spend_limits(ledger, cfg), "models": usage["models"],
                 "since_last_journal": usage["pending"].as_dict()},
    }


def _counts(ledger: Ledger, trials: list[Trial]) -> dict[str, int]:
    """How many trials ended each way, and how often the agent was refused."""
    finished = [t for t in trials if t.status.finished]
    return {
        "trials": len(finished),
        **{str(status): sum(t.status == status for t in finished) for status in FINISHED_STATUSES},
        "aborted": sum(t.status == TrialStatus.ABORTED for t in trials),
        "flagged": sum(t.flagged for t in finished),
        "suspicious": sum(bool(t.suspicions) for t in trials),
        "unsandboxed": sum(t.unsandboxed for t in trials),
        "refusals": ledger.refusal_count(),
    }


def _repeats(ledger: Ledger, trials: list[Trial]) -> dict[str, Any]:
    """Submissions refused as repeats of an earlier trial, none of which ran, with that trial's result (a
    deliberate re-test that did run is a trial whose record carries `retest_of`)."""
    by_id = {t.id: t for t in trials}
    repeats = []
    for r in ledger.repeats():
        earlier = by_id.get(r.earlier_trial)
        repeats.append({**row_record(r), "earlier_status": None if earlier is None else str(earlier.status),
                        "earlier_val_bpb": None if earlier is None else earlier.val_bpb})
    return {"repeats_avoided": len(repeats), "repeats": repeats}


def usage_by_trial(turns: list[Turn], journal: list[JournalEntry]) -> dict[str, Any]:
    """The agent's tokens and dollars: in all, per trial, and since the last journal entry.

    A trial's share is its whole cycle: the turns after the previous journal entry (reading, editing,
    reflecting, running) up to and including the turn that wrote its own journal entry.
    """
    ends = sorted((j.created, j.trial_id) for j in journal)
    times = [e[0] for e in ends]
    total, pending = UsageTotals(), UsageTotals()
    by_trial: dict[int, UsageTotals] = {}
    models: list[str] = []
    for turn in turns:
        if not turn.usage:
            continue
        total.add(turn.usage)
        model = turn.usage.get("model")
        if model and model not in models:
            models.append(model)
        i = bisect.bisect_left(times, turn.created)
        if i < len(ends):
            by_trial.setdefault(ends[i][1], UsageTotals()).add(turn.usage)
        else:
            pending.add(turn.usage)
    return {"total": total, "by_trial": by_trial, "pending": pending, "models": models}


def _spend_limits(ledger: Ledger, cfg: RunConfig) -> dict[str, Any]:
    """The limits the run applies (the defaults resolved at its start), else those the person gave."""
    limits = ledger.get_meta("spend_limits") or {}
    return {"max_cost": limits.get("max_cost", cfg.max_cost), "max_tokens": limits.get("max_tokens", cfg.max_tokens),
            "spend_limit": limits.get("line")}
