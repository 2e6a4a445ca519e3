"""`autoresearch export tracker`: every ended trial of a run, one tracker run each, grouped by the tag.

Idempotent: a trial whose tracker run is already there (an earlier export, or `run --tracker` while it ran)
is skipped, so exporting again after more trials sends only the new ones; `replace` deletes those runs
first and sends them again (for a stream cut short, or after a change of this code). A running trial is
left for a later export. A failure mid-way removes the half-written run and stops, saying how many were
sent: the same command then carries on where it stopped.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from supervisor.core.types import Trial, TrialKind, TrialStatus
from supervisor.morning.trackers.base import Tracker, TrackerError, TrackerRun
from supervisor.morning.trackers.records import (
    RunFacts,
    cost_summary,
    exportable,
    history_rows,
    run_name,
    trial_config,
    trial_summary,
)
from supervisor.run.status import usage_by_trial
from supervisor.store.ledger import Ledger

Progress = Callable[[int, int], None]


@dataclass
class ExportResult:
    tag: str
    exported: list[int] = field(default_factory=list)
    skipped: list[int] = field(default_factory=list)  # already in the tracker
    replaced: list[int] = field(default_factory=list)  # were there, deleted and sent again
    running: list[int] = field(default_factory=list)  # not ended yet: left for a later export
    history_points: int = 0


def send_trial(tracker: Tracker, facts: RunFacts, trial: Trial, metrics: list[dict[str, Any]],
               usage: dict[str, Any] | None, *, journaled: bool) -> int:
    """One trial as one tracker run, written whole and finished; the number of history points sent.

    The agent's cost goes with a trial whose journal entry is written: only then is its share complete (as
    `status --json` counts it). An imported trial has none: an upstream results.tsv says nothing of it."""
    run: TrackerRun | None = None
    try:
        run = tracker.start(group=facts.tag, name=run_name(facts.tag, trial.id), config=trial_config(trial, facts))
        rows = history_rows(metrics, trial.started)
        run.log_history(rows)
        summary = trial_summary(trial)
        if journaled and trial.kind != TrialKind.IMPORTED:
            summary.update(cost_summary(usage))
        run.set_summary(summary)
        run.finish(aborted=trial.status == TrialStatus.ABORTED)
        return len(rows)
    except BaseException:
        if run is not None:
            try:
                run.discard()
            except Exception:  # noqa: BLE001 - the first failure is the one to tell
                pass
        raise


def export_run(ledger: Ledger, tracker: Tracker, *, replace: bool = False, live: bool = False,
               progress: Progress | None = None) -> ExportResult:
    """Send the run in `ledger` (opened read-only) to `tracker`; see the module's note for what is sent when.

    `live`: a supervisor is running this run now. A judged trial whose journal entry is not written yet is
    then left for later too: the agent is writing it up, and `run --tracker` may still be sending it."""
    facts = RunFacts.from_ledger(ledger)
    trials = ledger.trials()
    journal = ledger.journal_entries()
    journaled = {entry.trial_id for entry in journal}
    usage = usage_by_trial(ledger.turns(), journal)["by_trial"]

    def ready(trial: Trial) -> bool:
        being_written_up = live and trial.status.finished and trial.id not in journaled
        return exportable(trial) and not being_written_up

    result = ExportResult(tag=facts.tag, running=[t.id for t in trials if not ready(t)])
    wanted = [t for t in trials if ready(t)]
    there = _already_there(tracker, facts.tag, wanted, replace)
    if replace:
        result.replaced = sorted(there)
        there = {}
    for done, trial in enumerate(wanted, 1):
        if trial.id in there:
            result.skipped.append(trial.id)
        else:
            try:
                totals = usage.get(trial.id)
                result.history_points += send_trial(tracker, facts, trial, ledger.metrics(trial.id),
                                                    totals.as_dict() if totals else None,
                                                    journaled=trial.id in journaled)
            except Exception as exc:  # noqa: BLE001 - any failure of the tracker stops the export in one line
                raise TrackerError(
                    f"{tracker.name}: trial {trial.id} could not be sent ({_describe(exc)}); "
                    f"{len(result.exported)} trial(s) were sent before it. Run the same command again to "
                    "carry on from there") from None
            result.exported.append(trial.id)
        if progress is not None:
            progress(done, len(wanted))
    return result


def _already_there(tracker: Tracker, tag: str, wanted: list[Trial], replace: bool) -> dict[int, Any]:
    """{trial id: the tracker's handle} of the wanted trials the tracker has a run for; deleted with `replace`."""
    try:
        existing = tracker.existing(tag)
        there = {t.id: existing[tracker.key(run_name(tag, t.id))] for t in wanted
                 if tracker.key(run_name(tag, t.id)) in existing}
        if replace and there:
            tracker.delete(tag, list(there.values()))
    except Exception as exc:  # noqa: BLE001 - a store that cannot be read is said in one line
        raise TrackerError(f"{tracker.name}: could not read the runs already in {tracker.where()}: "
                           f"{_describe(exc)}") from None
    return there


def _describe(exc: BaseException) -> str:
    text = " ".join(str(exc).split())
    return f"{type(exc).__name__}: {text[:300]}" if text else type(exc).__name__
