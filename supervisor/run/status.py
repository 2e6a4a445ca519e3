"""`autoresearch status`: a run as a plain dict (JSON), read from the ledger without taking the lock."""

from __future__ import annotations

import bisect
from typing import Any

from supervisor.core.config import RunConfig
from supervisor.core.pricing import UsageTotals
from supervisor.store.ledger import Ledger
from supervisor.store.lock import RunLock


def run_status(ledger: Ledger, lock_path: Any = None) -> dict[str, Any]:
    run = ledger.run_row()
    cfg = RunConfig.from_json(run["config"])
    noise = ledger.latest_noise(cfg.budget_s)
    floor = None if not noise or noise["sd"] is None else noise["sd"] * cfg.floor_factor
    journal = ledger.journal_entries()
    journaled = {j["trial_id"] for j in journal}
    usage = usage_by_trial(ledger.turns(), journal)
    trials = []
    for t in ledger.trials():
        trials.append({
            "id": t.id,
            "kind": t.kind,
            "commit": t.commit_sha,
            "parent_commit": t.parent_commit,
            "parent_trial": t.parent_trial,
            "description": t.description,
            "category": t.category,
            "status": t.status,
            "val_bpb": t.val_bpb,
            "extra_values": t.extra_values,
            "delta": t.delta,
            "flagged": t.flagged,
            "decision": t.decision,
            "crash_reason": t.crash_reason,
            "journal": t.id in journaled,
            "budget_s": t.budget_s,
            "training_seconds": t.training_seconds,
            "wall_seconds": t.wall_seconds,
            "num_steps": t.num_steps,
            "tokens_per_s": t.tokens_per_s,
            "mfu_percent": t.mfu_percent,
            "peak_vram_mb": t.peak_vram_mb,
            "platform": t.platform,
            "suspicious": t.suspicions,
            "usage": usage["by_trial"][t.id].as_dict() if t.id in usage["by_trial"] else None,
        })
    state = run["state"]
    live = RunLock.holder(lock_path) if lock_path else None
    if state in ("running", "trial", "paused", "noise", "ready") and lock_path and not live:
        state = f"interrupted (was {state}; continue with --resume)"
    finished = [t for t in trials if t["status"] in ("keep", "discard", "crash")]
    best = min((t for t in finished if t["status"] == "keep" and t["val_bpb"] is not None),
               key=lambda t: t["val_bpb"], default=None)
    return {
        "tag": run["tag"],
        "state": state,
        "state_detail": run["state_detail"],
        "supervisor": live,
        "workspace": str(cfg.workspace),
        "journal_dir": str(cfg.run_dir),
        "branch": cfg.branch,
        "agent": cfg.agent,
        "budget_s": cfg.budget_s,
        "max_trials": cfg.max_trials,
        "policy": cfg.policy,
        "floor_factor": cfg.floor_factor,
        "noise": None if noise is None else {
            "values": noise["values"], "sd": noise["sd"], "floor": floor, "commit": noise["commit_sha"],
            "budget_s": noise["budget_s"], "platform": noise["platform"],
        },
        "noise_floor": floor,
        "counts": {
            "trials": len(finished),
            "keep": sum(t["status"] == "keep" for t in finished),
            "discard": sum(t["status"] == "discard" for t in finished),
            "crash": sum(t["status"] == "crash" for t in finished),
            "aborted": sum(t["status"] == "aborted" for t in trials),
            "flagged": sum(t["flagged"] for t in finished),
            "suspicious": sum(bool(t["suspicious"]) for t in trials),
            "refusals": ledger.refusal_count(),
        },
        "best": best,
        "trials": trials,
        "flagged": [t for t in finished if t["flagged"]],
        "suspicious": [{"id": t["id"], "description": t["description"], "findings": t["suspicious"]}
                       for t in trials if t["suspicious"]],
        "reflections": ledger.reflections(),
        "plans": ledger.plans(),
        "steering": ledger.steering(),
        "open_triggers": ledger.open_triggers(),
        "cost": {**usage["total"].as_dict(), "max_cost": cfg.max_cost, "models": usage["models"],
                 "since_last_journal": usage["pending"].as_dict()},
    }


def usage_by_trial(turns: list[dict[str, Any]], journal: list[dict[str, Any]]) -> dict[str, Any]:
    """The agent's tokens and dollars: in all, per trial, and since the last journal entry.

    A trial's share is its whole cycle: the turns after the previous journal entry (reading, editing,
    reflecting, running) up to and including the turn that wrote its own journal entry.
    """
    ends = sorted((j["created"], j["trial_id"]) for j in journal)
    times = [e[0] for e in ends]
    total, pending = UsageTotals(), UsageTotals()
    by_trial: dict[int, UsageTotals] = {}
    models: list[str] = []
    for turn in turns:
        if not turn.get("usage"):
            continue
        total.add(turn["usage"])
        model = turn["usage"].get("model")
        if model and model not in models:
            models.append(model)
        i = bisect.bisect_left(times, turn["created"])
        if i < len(ends):
            by_trial.setdefault(ends[i][1], UsageTotals()).add(turn["usage"])
        else:
            pending.add(turn["usage"])
    return {"total": total, "by_trial": by_trial, "pending": pending, "models": models}
