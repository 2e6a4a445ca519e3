"""`run --tracker`: the night streamed to a tracker while it runs, from the supervisor's own process.

The trial never talks to a tracker: it stays offline in its sandbox, and no tracker setting or key is in its
environment (the allowlist in trial/environment.py names none). The supervisor's bus gives the facts; this
sink only queues them on the loop's thread (the loop never waits for a tracker), and a thread of its own
reads the ledger and talks to the tracker:

- trial started: a tracker run with the trial's config (from the ledger: parent, category, diff hash...);
- metric rows: logged in batches, every BATCH_ROWS rows or BATCH_SECONDS;
- trial judged: the rest of the curve and the summary; a trial stopped by the person ends here;
- journal entry written: the agent's cost for the trial (its share is complete once the journal entry is
  written, as `status --json` counts it), then the run is finished. A judged trial that gets no journal
  entry (the run was stopped) is finished when the next trial starts, or when the run ends.

Names are the export's, so `export tracker` afterwards skips what was streamed. A tracker that fails costs
the trial's run, never the night: the failure is a NOTICE on the bus and the loop goes on; after
MAX_FAILURES trials in a row that could not be sent, the sink stops trying and says how to send it all later.
"""

from __future__ import annotations

import queue
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from supervisor.core import events as ev
from supervisor.core.types import TrialStatus
from supervisor.morning.trackers.base import Tracker, TrackerRun
from supervisor.morning.trackers.records import (
    HistoryRow,
    RunFacts,
    cost_summary,
    history_row,
    run_name,
    trial_config,
    trial_summary,
)
from supervisor.run.status import usage_by_trial
from supervisor.store.ledger import Ledger

KINDS = frozenset({ev.TRIAL_STARTED, ev.METRIC, ev.TRIAL_FINISHED, ev.JOURNAL})
# Events waiting for the tracker. Past this, metric points are dropped (and counted) rather than let a
# stalled tracker grow the supervisor's memory through the night.
QUEUE_LIMIT = 100_000
BATCH_ROWS = 200
BATCH_SECONDS = 2.0
MAX_FAILURES = 3
CLOSE_TIMEOUT_S = 120.0
_STOP = ev.Event("tracker-stop")


@dataclass
class _OpenRun:
    run: TrackerRun
    pending: list[HistoryRow] = field(default_factory=list)
    flushed: float = field(default_factory=time.monotonic)
    rows_seen: int = 0
    judged: bool = False


class LiveTracker:
    """A bus subscriber that streams trials to `tracker`; `close()` when the run ends."""

    def __init__(self, tracker: Tracker, *, ledger_path: Path, tag: str, bus: ev.EventBus,
                 batch_rows: int = BATCH_ROWS, batch_seconds: float = BATCH_SECONDS) -> None:
        self.tracker = tracker
        self._ledger_path = Path(ledger_path)
        self._tag = tag
        self._bus = bus
        self._batch_rows = batch_rows
        self._batch_seconds = batch_seconds
        self._queue: queue.Queue[ev.Event] = queue.Queue(maxsize=QUEUE_LIMIT)
        self._open: dict[int, _OpenRun] = {}
        self._ledger: Ledger | None = None
        self._failures = 0
        self._given_up = False
        self._dropped = 0
        self._dropped_told = 0
        self.sent: list[int] = []  # trials whose tracker run was finished whole
        self._thread = threading.Thread(target=self._work, name="tracker", daemon=True)
        self._thread.start()
        self._unsubscribe = bus.subscribe(self)

    # ---- the loop's side: cheap ------------------------------------------------------------------------
    def __call__(self, event: ev.Event) -> None:
        if event.kind not in KINDS or self._given_up:
            return
        try:
            self._queue.put_nowait(event)
        except queue.Full:
            self._dropped += 1

    def close(self, timeout: float = CLOSE_TIMEOUT_S) -> bool:
        """Stop listening, send what is queued, finish open runs; False if the tracker is still busy."""
        self._unsubscribe()
        deadline = time.monotonic() + timeout
        try:
            self._queue.put(_STOP, timeout=timeout)
        except queue.Full:
            return False
        self._thread.join(max(0.0, deadline - time.monotonic()))
        return not self._thread.is_alive()

    # ---- the tracker's thread --------------------------------------------------------------------------
    def _work(self) -> None:
        try:
            while True:
                try:
                    event = self._queue.get(timeout=self._batch_seconds)
                except queue.Empty:
                    self._flush(due_only=True)
                    continue
                if event is _STOP:
                    break
                if not self._given_up:
                    self._handle(event)
                    self._flush(due_only=True)
        finally:
            self._finish_all()
            self._let_go()

    def _handle(self, event: ev.Event) -> None:
        trial_id = event.data.get("trial_id")
        if not isinstance(trial_id, int):
            return
        handler = {ev.TRIAL_STARTED: self._started, ev.METRIC: self._metric,
                   ev.TRIAL_FINISHED: self._finished, ev.JOURNAL: self._journal}[event.kind]
        self._attempt(trial_id, lambda: handler(trial_id, event))

    def _attempt(self, trial_id: int, action: Any) -> None:
        try:
            action()
        except Exception as exc:  # noqa: BLE001 - a tracker's failure is told, and the night goes on
            self._failed(trial_id, exc)

    def _ledger_now(self) -> Ledger:
        if self._ledger is None:  # opened here: a connection belongs to the thread that made it
            self._ledger = Ledger(self._ledger_path, readonly=True)
        return self._ledger

    def _started(self, trial_id: int, event: ev.Event) -> None:
        for other in [i for i, o in self._open.items() if o.judged]:  # judged, no journal entry came
            self._end(other)
        ledger = self._ledger_now()
        trial = ledger.trial(trial_id)
        if trial is None:
            raise LookupError(f"trial {trial_id} is not in the ledger")
        facts = RunFacts.from_ledger(ledger)  # read again: a new noise floor may have been measured
        run = self.tracker.start(group=self._tag, name=run_name(self._tag, trial_id),
                                 config=trial_config(trial, facts))
        self._open[trial_id] = _OpenRun(run)

    def _metric(self, trial_id: int, event: ev.Event) -> None:
        opened = self._open.get(trial_id)
        if opened is None:  # its start failed and was told: nothing to add to
            return
        row = history_row(event.data.get("metric") or {}, opened.rows_seen, event.time)
        opened.rows_seen += 1
        if row is not None:
            opened.pending.append(row)

    def _finished(self, trial_id: int, event: ev.Event) -> None:
        opened = self._open.get(trial_id)
        if opened is None:
            return
        self._send_pending(opened)
        trial = self._ledger_now().trial(trial_id)
        if trial is not None:
            opened.run.set_summary(trial_summary(trial))
        if event.data.get("status") == TrialStatus.ABORTED:  # stopped by the person: no journal entry follows
            self._end(trial_id, aborted=True)
        else:
            opened.judged = True

    def _journal(self, trial_id: int, event: ev.Event) -> None:
        opened = self._open.get(trial_id)
        if opened is None or not opened.judged:
            return
        ledger = self._ledger_now()
        usage = usage_by_trial(ledger.turns(), ledger.journal_entries())["by_trial"].get(trial_id)
        opened.run.set_summary(cost_summary(usage.as_dict() if usage else None))
        self._end(trial_id)

    def _end(self, trial_id: int, aborted: bool = False) -> None:
        opened = self._open.pop(trial_id)
        self._send_pending(opened)
        opened.run.finish(aborted=aborted)
        self.sent.append(trial_id)
        self._failures = 0  # failures "in a row" are trials in a row that could not be sent whole

    def _send_pending(self, opened: _OpenRun) -> None:
        rows, opened.pending = opened.pending, []
        opened.flushed = time.monotonic()
        if rows:
            opened.run.log_history(rows)

    def _flush(self, due_only: bool) -> None:
        now = time.monotonic()
        for trial_id, opened in list(self._open.items()):
            due = len(opened.pending) >= self._batch_rows or now - opened.flushed >= self._batch_seconds
            if opened.pending and (due or not due_only):
                self._attempt(trial_id, lambda opened=opened: self._send_pending(opened))
        if self._dropped > self._dropped_told:
            self._notice("warning", f"{self._dropped - self._dropped_told} metric point(s) were not sent: the "
                                    f"tracker fell behind (`autoresearch export tracker --tag {self._tag} --to "
                                    f"{self.tracker.name} --replace` sends the full curves)")
            self._dropped_told = self._dropped

    def _finish_all(self) -> None:
        """The run ended: every open run is finished, with the trial's state as the ledger has it now."""
        if self._given_up:  # the tracker failed again and again: one more try per open run would only say so
            self._open.clear()
            return
        for trial_id in list(self._open):
            def finish(trial_id: int = trial_id) -> None:
                opened = self._open[trial_id]
                trial = self._ledger_now().trial(trial_id) if not opened.judged else None
                if trial is not None:
                    opened.run.set_summary(trial_summary(trial))
                stopped = trial is not None and trial.status in (TrialStatus.ABORTED, TrialStatus.RUNNING)
                self._end(trial_id, aborted=stopped)
            self._attempt(trial_id, finish)
            self._open.pop(trial_id, None)

    def _let_go(self) -> None:
        try:
            self.tracker.close()
        except Exception as exc:  # noqa: BLE001
            self._notice("warning", f"tracker {self.tracker.name}: closing it failed ({_describe(exc)})")
        if self._ledger is not None:
            self._ledger.close()

    def _failed(self, trial_id: int, exc: Exception) -> None:
        self._open.pop(trial_id, None)  # what was written stays; nothing more is added to it
        self._failures += 1
        name = self.tracker.name
        later = f"`autoresearch export tracker --tag {self._tag} --to {name} --replace` sends it whole later"
        self._notice("warning", f"tracker {name}: trial {trial_id} was not fully sent ({_describe(exc)}); "
                                f"the run goes on; {later}")
        if self._failures >= MAX_FAILURES and not self._given_up:
            self._given_up = True
            self._notice("warning", f"tracker {name}: {self._failures} failures in a row, streaming stopped for "
                                    f"this session; the trials are in the ledger, and {later}")

    def _notice(self, level: str, message: str) -> None:
        self._bus.emit(ev.NOTICE, level=level, message=message)


def _describe(exc: BaseException) -> str:
    text = " ".join(str(exc).split())
    return f"{type(exc).__name__}: {text[:200]}" if text else type(exc).__name__
