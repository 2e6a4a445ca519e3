"""Named points where the fault-injection suite kills the supervisor, to prove a kill anywhere loses nothing.

Inert unless `AUTORESEARCH_FAILPOINT` is set, as `NAME` (the first time the point is reached) or `NAME@N`
(the Nth time). Reaching it sends SIGKILL to this process: no cleanup, no flush, exactly like `kill -9` or a
power cut at that instant. The environment variable is read once per process.
"""

from __future__ import annotations

import os
import signal

_name = ""
_target = 1
_hits = 0


def arm(spec: str) -> None:
    """Set the failpoint (`NAME` or `NAME@N`); an empty spec disarms. Resets the hit count."""
    global _name, _target, _hits
    name, _, nth = spec.partition("@")
    _name, _target, _hits = name, (int(nth) if nth.isdigit() else 1), 0


arm(os.environ.get("AUTORESEARCH_FAILPOINT", ""))

# Every point, in the order a trial cycle reaches them (the suite iterates over this list).
POINTS = (
    "before_commit",          # the agent asked for a trial; nothing written yet
    "after_commit",           # git has the trial's commit; the ledger does not know it yet
    "trial_started",          # the ledger row says running; the trainer is starting
    "metrics_flushed",        # mid-trial, right after a batch of metrics reached the ledger
    "trial_recorded",         # the outcome is in the ledger; git not yet reset for a discard
    "branch_reset",           # git reset done; results.tsv and journal.md not yet rewritten
    "files_half_written",     # results.tsv rewritten, journal.md not yet
    "journal_recorded",       # the journal entry is in the ledger; journal.md not yet rewritten
    "reflection_recorded",    # the reflection is in the ledger; journal.md not yet rewritten
    "turn_recorded",          # an agent turn is in the ledger; transcript.jsonl not yet appended
)


def failpoint(name: str) -> None:
    """SIGKILL this process if `name` is the armed point and this is its Nth hit."""
    global _hits
    if name != _name:
        return
    _hits += 1
    if _hits == _target:
        os.kill(os.getpid(), signal.SIGKILL)
