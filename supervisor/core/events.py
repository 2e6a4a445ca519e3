"""Events flow from the loop to whoever watches (the headless printer, the UI); commands flow back.

In one process the bus calls subscribers directly; a UI in another process reads the same facts from the
ledger and sends commands through the ledger's `commands` table (see `supervisor.control`).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

# Event kinds. One place, so the UI and the loop agree on the spelling.
STATE = "state"                  # state, detail
AGENT_TEXT = "agent_text"        # text
AGENT_DELTA = "agent_delta"      # text: a piece of the agent's reply as it streams in (AGENT_TEXT follows)
USAGE = "usage"                  # usage (this turn's tokens and cost), totals (the run's so far)
TOOL_CALL = "tool_call"          # tool, input
TOOL_RESULT = "tool_result"      # tool, ok, refused, content
TRIAL_STARTED = "trial_started"  # trial_id, commit, parent, description, budget_s, seed
METRIC = "metric"                # trial_id, metric (dict)
TRIAL_FINISHED = "trial_finished"  # trial_id, status, val_bpb, delta, flagged, decision
JOURNAL = "journal"              # trial_id
REFLECTION = "reflection"        # reflection_id, triggers
PLAN = "plan"                    # plan_id, status
STEERING = "steering"            # message
STEERING_ACKNOWLEDGED = "steering_acknowledged"  # steering_id, reply
NOISE = "noise"                  # values, sd, floor
NOTICE = "notice"                # message, level


@dataclass(frozen=True)
class Event:
    kind: str
    data: dict[str, Any] = field(default_factory=dict)
    time: float = field(default_factory=time.time)


Subscriber = Callable[[Event], None]


class EventBus:
    def __init__(self) -> None:
        self._subscribers: list[Subscriber] = []
        self._lock = threading.Lock()

    def subscribe(self, fn: Subscriber) -> Callable[[], None]:
        with self._lock:
            self._subscribers.append(fn)

        def unsubscribe() -> None:
            with self._lock:
                if fn in self._subscribers:
                    self._subscribers.remove(fn)

        return unsubscribe

    def emit(self, kind: str, **data: Any) -> None:
        event = Event(kind, data)
        with self._lock:
            subscribers = list(self._subscribers)
        for fn in subscribers:
            # A broken watcher must never stop the night's research.
            try:
                fn(event)
            except Exception:  # noqa: BLE001
                pass
