"""What the agent sees at a turn: a TurnContext built fresh from the ledger and the workspace, never from memory."""

from __future__ import annotations

import json
from pathlib import Path

from supervisor.agents.base import ToolOutcome, TurnContext
from supervisor.core import prompts
from supervisor.core.config import RunConfig
from supervisor.core.types import TrialKind, TrialStatus, trial_record
from supervisor.run.executor import TrialExecutor
from supervisor.run.tools import TOOL_SCHEMAS, obligation
from supervisor.store.ledger import Ledger


def turn_context(config: RunConfig, ledger: Ledger, executor: TrialExecutor,
                 last_outcomes: list[ToolOutcome]) -> TurnContext:
    kind, message = obligation(ledger)
    pending = None
    if kind == "journal":
        pending = trial_record(ledger.trials_missing_journal()[0], for_agent=True)
    best = ledger.best_keep()
    reflections = ledger.reflections()
    unacknowledged = ledger.unacknowledged_steering()  # each stays in the prompt until the agent answers it
    return TurnContext(
        program=_program(config, executor),
        editable=executor.editable,
        train_py=executor.editable_text(),
        results=[trial_record(t, for_agent=True) for t in ledger.finished_trials()],
        recent_journal=ledger.journal_entries()[-5:],
        latest_reflection=reflections[-1] if reflections else None,
        plans=ledger.plans(),
        steering=[s.message for s in unacknowledged],
        steering_ids=[s.id for s in unacknowledged],
        last_outcomes=list(last_outcomes),
        obligation=kind,
        obligation_message=message,
        pending_trial=pending,
        trials_done=executor.trials_done(),
        max_trials=config.max_trials,
        budget_s=config.budget_s,
        policy=config.policy,
        noise_floor=executor.noise_floor(),
        best=trial_record(best, for_agent=True) if best else None,
        profile=_cache_profile(config),
        tools=TOOL_SCHEMAS,
        stopped=[trial_record(t, for_agent=True) for t in ledger.trials([TrialStatus.ABORTED])
                 if t.kind == TrialKind.TRIAL and t.crash_reason == prompts.STOPPED_BY_PERSON],
        uncommitted_lines=changed_lines(executor.working_diff()),
    )


def changed_lines(diff: str) -> int:
    """Lines added or removed in a unified diff (its file headers not counted)."""
    return sum(1 for line in diff.splitlines()
               if line[:1] in "+-" and not line.startswith(("+++ ", "--- ")))


def _program(config: RunConfig, executor: TrialExecutor) -> str:
    """program.md: the person's copy in the source folder, else the workspace's."""
    program_path = config.source_dir / config.layout.program
    if not program_path.is_file():
        program_path = executor.root / config.layout.program
    return program_path.read_text(encoding="utf-8") if program_path.is_file() else ""


def _cache_profile(config: RunConfig) -> str | None:
    manifest = Path(config.cache_dir) / "manifest.json"
    try:
        return json.loads(manifest.read_text()).get("profile")
    except (OSError, ValueError):
        return None
