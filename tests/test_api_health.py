"""ApiHealth without a loop: outages and backoff, the probe, malformed replies, empty turns, the cost limit.

Deterministic: a fake clock that the injected sleep advances, and a sink that records what the loop was asked.
"""

from __future__ import annotations

from typing import Any

import pytest

from supervisor.agents.base import AgentAuthError, AgentUnavailable
from supervisor.run.api_health import MAX_EMPTY_TURNS, MAX_MALFORMED_TURNS, ApiHealth


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0
        self.slept: list[float] = []

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.slept.append(seconds)
        self.now += seconds


class Sink:
    def __init__(self) -> None:
        self.calls: list[tuple[str, Any]] = []

    def record(self, text: str, *, usage: dict[str, Any] | None = None, transcript: bool = True) -> None:
        self.calls.append(("record", text))

    def notice(self, level: str, message: str) -> None:
        self.calls.append(("notice", level))

    def pause(self, reason: str) -> None:
        self.calls.append(("pause", reason))

    def resume(self) -> None:
        self.calls.append(("resume", None))

    def set_running(self, detail: str = "") -> None:
        self.calls.append(("running", detail))

    def usage_recorded(self, usage: dict[str, Any], totals: dict[str, Any]) -> None:
        self.calls.append(("usage", totals["cost_usd"]))

    def kinds(self, kind: str) -> list[Any]:
        return [value for k, value in self.calls if k == kind]


def health(**kwargs: Any) -> tuple[ApiHealth, Sink, FakeClock]:
    sink, clock = Sink(), FakeClock()
    settings = {"outage_s": 60.0, "probe_every_s": 30.0, "max_cost": None} | kwargs
    return ApiHealth(sink, clock=clock, sleep=clock.sleep, **settings), sink, clock


def test_an_outage_backs_off_doubling_then_pauses_after_its_window():
    h, sink, clock = health(outage_s=20.0)
    for _ in range(4):
        h.unavailable(AgentUnavailable("overloaded"))
    assert clock.slept == [2.0, 4.0, 8.0, 6.0]  # doubling, cut to what is left of the window
    assert sink.kinds("pause") == [] and len(sink.kinds("record")) == 1  # the outage is recorded once
    h.unavailable(AgentUnavailable("overloaded"))
    assert len(sink.kinds("pause")) == 1 and "API outage" in sink.kinds("pause")[0]
    assert h.outage_paused


def test_retry_after_is_honoured_and_an_answer_ends_the_outage():
    h, sink, clock = health()
    h.unavailable(AgentUnavailable("rate limited", retry_after=10.0))
    assert clock.slept == [10.0]
    h.answered()
    assert h.outage_since is None and sink.calls[-1] == ("running", "")
    assert "answers again after 10 s" in sink.kinds("record")[-1]
    h.answered()  # no outage: nothing to say
    assert len(sink.kinds("record")) == 2


def test_a_person_pausing_wins_over_the_probe():
    h, _, _ = health(outage_s=0.0)
    h.unavailable(AgentUnavailable("down"))
    assert h.outage_paused
    h.paused_by_someone()
    assert not h.outage_paused
    h.pause_ended()
    assert h.outage_since is None


def test_the_probe_resumes_only_when_the_api_answers():
    h, sink, _ = health(max_cost=100.0)

    def down() -> dict[str, Any] | None:
        raise AgentUnavailable("still down")

    def refused() -> dict[str, Any] | None:
        raise AgentAuthError("bad key")

    h.probe(None)
    h.probe(down)
    assert sink.calls == []
    h.probe(refused)
    assert sink.kinds("pause") and "refuses the run" in sink.kinds("pause")[0]
    h.probe(lambda: {"cost_usd": 0.5, "input_tokens": 1})
    assert sink.kinds("resume") == [None] and h.spend.cost_usd == pytest.approx(0.5)


def test_malformed_replies_in_a_row_pause_and_a_good_one_resets():
    h, sink, _ = health()
    for _ in range(MAX_MALFORMED_TURNS - 1):
        h.count_malformed(["run_trial: bad"])
    h.count_malformed([])
    for _ in range(MAX_MALFORMED_TURNS - 1):
        h.count_malformed(["run_trial: bad"])
    assert sink.kinds("pause") == []
    h.count_malformed(["x" * 300])
    assert len(sink.kinds("pause")) == 1 and "x" * 197 + "..." in sink.kinds("pause")[0]


def test_turns_without_a_tool_call_pause():
    h, sink, _ = health()
    for _ in range(MAX_EMPTY_TURNS - 1):
        h.count_calls(0)
    h.count_calls(2)
    for _ in range(MAX_EMPTY_TURNS - 1):
        h.count_calls(0)
    assert sink.kinds("pause") == []
    h.count_calls(0)
    assert sink.kinds("pause") == [f"the agent made {MAX_EMPTY_TURNS} turns without a tool call"]


def test_the_cost_limit():
    h, sink, _ = health(max_cost=1.0)
    assert h.cost_limit_reached() is None
    h.record_usage({"cost_usd": 0.6})
    h.record_usage(None)
    assert h.cost_limit_reached() is None and sink.kinds("usage") == [pytest.approx(0.6)]
    h.record_usage({"cost_usd": 0.6})
    reason = h.cost_limit_reached()
    assert reason is not None and "--max-cost $1.00" in reason and sink.kinds("record") == [reason]
    assert health()[0].cost_limit_reached() is None  # no limit, never reached
