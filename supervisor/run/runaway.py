"""The runaway guard: a model caught in a loop is paused, not served all night.

A model that keeps calling a refused tool, or that reads and plans forever without ever running anything,
costs money and GPU time and moves the research nowhere. Two rules, each counted from the last reply that
made progress (a trial run, a journal entry, a reflection that was due, or an edit that made a script not seen
since the last trial: editing A to B and back again forever is no progress):

- **no progress**: `stall_replies` replies in a row made none;
- **repeats**: the same failing call (same tool, same arguments) came back `repeat_limit` times.

Either pauses the run with the reason and the last failure, so the person can steer and resume. A limit of 0
turns its rule off. Pure bookkeeping: the loop feeds it each reply's calls and their outcomes.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass

from supervisor.agents.base import ToolCall, ToolOutcome

DEFAULT_STALL_REPLIES = 25  # a careful model reads and plans for a few replies; 25 without progress is a loop
DEFAULT_REPEAT_LIMIT = 5    # the same refused call five times: the refusal is not being read
RESEARCH_TOOLS = frozenset({"run_trial", "write_journal"})  # progress whenever they succeed


@dataclass(frozen=True)
class Runaway:
    """Why the run must pause."""

    reason: str


def call_key(call: ToolCall) -> str:
    """One call's identity: its tool and its arguments, key order ignored."""
    try:
        arguments = json.dumps(call.input, sort_keys=True, ensure_ascii=True, default=repr)
    except (TypeError, ValueError):
        arguments = repr(call.input)
    return f"{call.name}:{arguments}"


def _short(text: str, limit: int = 160) -> str:
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 3] + "..."


class RunawayGuard:
    """Counts replies without progress and repeated failing calls since the last progress."""

    def __init__(self, stall_replies: int = DEFAULT_STALL_REPLIES,
                 repeat_limit: int = DEFAULT_REPEAT_LIMIT) -> None:
        self.stall_replies = stall_replies
        self.repeat_limit = repeat_limit
        self.replies_without_progress = 0
        self.failures: Counter[str] = Counter()
        self.scripts_seen: set[str] = set()  # digests of the training script since the last trial or journal

    def reset(self) -> None:
        """Fresh counts: after progress, or when the person resumes a paused run."""
        self.replies_without_progress = 0
        self.failures.clear()

    def _progressed(self, outcomes: Sequence[ToolOutcome], script_digest: str | None, reflection_due: bool) -> bool:
        ok = {o.tool for o in outcomes if o.ok}
        if ok & RESEARCH_TOOLS:
            self.scripts_seen.clear()
            return True
        if "write_reflection" in ok and reflection_due:
            return True
        new_script = script_digest is None or script_digest not in self.scripts_seen
        if script_digest is not None:
            self.scripts_seen.add(script_digest)
        return "edit_file" in ok and new_script

    def observe(self, calls: Sequence[ToolCall], outcomes: Sequence[ToolOutcome], *,
                script_digest: str | None = None, reflection_due: bool = False) -> Runaway | None:
        """One reply's calls and their outcomes (and the training script's digest after them, and whether a
        reflection was due); a Runaway when the run must pause (the counts start again)."""
        if self._progressed(outcomes, script_digest, reflection_due):
            self.reset()
            return None
        self.replies_without_progress += 1
        repeated: tuple[str, ToolOutcome] | None = None
        for call, outcome in zip(calls, outcomes, strict=False):
            if outcome.ok or call.problem:  # unreadable calls have their own rule (ApiHealth.count_malformed)
                continue
            key = call_key(call)
            self.failures[key] += 1
            if self.repeat_limit and self.failures[key] >= self.repeat_limit and repeated is None:
                repeated = (call.name, outcome)
        runaway = self._verdict(repeated, outcomes)
        if runaway is not None:
            self.reset()
        return runaway

    def _verdict(self, repeated: tuple[str, ToolOutcome] | None,
                 outcomes: Sequence[ToolOutcome]) -> Runaway | None:
        advice = "paused rather than paying for more: steer the agent (`control steer`), then resume"
        if repeated is not None:
            tool, outcome = repeated
            return Runaway(f"the agent sent the same failing {tool} call {self.repeat_limit} times since its "
                           f"last progress (it answered: {_short(outcome.content)}); {advice}")
        if self.stall_replies and self.replies_without_progress >= self.stall_replies:
            last = next((o for o in reversed(outcomes) if not o.ok), None)
            tail = f" (last failure: {last.tool}: {_short(last.content)})" if last else ""
            return Runaway(f"the agent made {self.stall_replies} replies in a row without progress (no trial, "
                           f"journal entry, reflection or successful edit){tail}; {advice}")
        return None
