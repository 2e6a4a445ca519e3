"""The health of the agent's API, as the loop sees it: outages and their backoff, the probe that ends an
outage pause, malformed replies, turns without a tool call, and the cost limit.

No loop, no threads: the clock and the sleep are injected, and what the loop must do (record a line,
tell the person, pause, resume) goes through a small `HealthSink`. So every rule here is tested with a
fake clock (tests/test_api_health.py).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any, Protocol

from supervisor.agents.base import AgentAuthError, AgentConfigError, AgentUnavailable
from supervisor.core.pricing import UsageTotals

MAX_EMPTY_TURNS = 3
MAX_MALFORMED_TURNS = 3     # replies with unreadable tool calls in a row before a paid agent is paused
OUTAGE_BACKOFF_S = 2.0      # first wait after the SDK's own retries gave up; doubles up to the max
OUTAGE_BACKOFF_MAX_S = 60.0


class HealthSink(Protocol):
    """What the API's health may ask of the loop."""

    def record(self, text: str, *, usage: dict[str, Any] | None = None, transcript: bool = True) -> None:
        """A system line in the ledger (and the transcript)."""

    def notice(self, level: str, message: str) -> None: ...

    def pause(self, reason: str) -> None: ...

    def resume(self) -> None: ...

    def set_running(self, detail: str = "") -> None: ...

    def usage_recorded(self, usage: dict[str, Any], totals: dict[str, Any]) -> None: ...


def duration(seconds: float) -> str:
    if seconds < 120:
        return f"{seconds:.0f} s"
    if seconds < 7200:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"


class ApiHealth:
    """Outage, probe, malformed-reply, empty-turn and cost-limit state of one run."""

    def __init__(self, sink: HealthSink, *, outage_s: float, probe_every_s: float, max_cost: float | None,
                 spend: UsageTotals | None = None, clock: Callable[[], float] = time.monotonic,
                 sleep: Callable[[float], None] = time.sleep) -> None:
        self.sink = sink
        self.outage_s = outage_s
        self.probe_every_s = probe_every_s
        self.max_cost = max_cost
        self.max_tokens: int | None = None  # set by the loop for a model without a known price
        self.spend = spend or UsageTotals()
        self.clock = clock
        self.sleep = sleep
        self.outage_since: float | None = None  # clock time of the first failure of the current outage
        self.outage_attempts = 0
        self.outage_paused = False  # paused by an outage: a probe may resume the run
        self.empty_turns = 0
        self.malformed_turns = 0

    # ---- outages ------------------------------------------------------------------------------------------
    def unavailable(self, exc: AgentUnavailable) -> None:
        """The API failed even after the SDK's retries: wait longer and try again; pause after an outage."""
        now = self.clock()
        if self.outage_since is None:
            self.outage_since, self.outage_attempts = now, 0
            self.sink.record(f"API unavailable: {exc}")
        self.outage_attempts += 1
        elapsed = now - self.outage_since
        window = self.outage_s
        if elapsed >= window:
            self.sink.record(f"API outage for {duration(elapsed)}: the run pauses ({exc})")
            self.sink.pause(f"API outage: {exc}. No answer for {duration(elapsed)}; the run resumes by itself when "
                            f"the API answers again (checked every {duration(self.probe_every_s)}), or with "
                            "`control resume`")
            self.outage_paused = True
            return
        wait = min(max(exc.retry_after or 0.0, OUTAGE_BACKOFF_S * 2 ** (self.outage_attempts - 1)),
                   OUTAGE_BACKOFF_MAX_S, window - elapsed)
        self.sink.notice("warning", f"{exc}; trying again in {wait:.0f} s (the run pauses after "
                                    f"{duration(window)} without an answer)")
        self.sink.set_running(f"waiting for the API: {exc}")
        self.sleep(wait)

    def answered(self) -> None:
        """A turn came back: an outage, if there was one, is over."""
        if self.outage_since is None:
            return
        message = f"the API answers again after {duration(self.clock() - self.outage_since)}"
        self.outage_since = None
        self.sink.record(message, transcript=False)
        self.sink.notice("info", message)
        self.sink.set_running()

    def paused_by_someone(self) -> None:
        """Whoever pauses now decides; a probe must not undo it."""
        self.outage_paused = False

    def pause_ended(self) -> None:
        """A resume starts a fresh outage window."""
        self.outage_paused = False
        self.outage_since = None

    def probe(self, probe: Callable[[], dict[str, Any] | None] | None) -> None:
        """While paused by an outage: one cheap request; resume the run if the API answers."""
        if probe is None:
            return
        try:
            usage = probe()
        except AgentUnavailable:
            return
        except (AgentAuthError, AgentConfigError) as exc:
            self.sink.pause(f"the API answers again but refuses the run: {exc}")
            return
        except Exception as exc:  # a failed probe only means: not yet
            self.sink.notice("warning", f"API probe failed: {type(exc).__name__}: {exc}")
            return
        self.sink.record("API probe answered: the outage is over, resuming", usage=usage)
        self.record_usage(usage)
        self.sink.notice("info", "the API answers again: resuming the run")
        self.sink.resume()

    # ---- replies ------------------------------------------------------------------------------------------
    def count_malformed(self, problems: list[str]) -> None:
        """A paid model's reply with unreadable calls: garbage in a loop burns money, so pause after a few."""
        if not problems:
            self.malformed_turns = 0
            return
        self.malformed_turns += 1
        if self.malformed_turns >= MAX_MALFORMED_TURNS:
            self.malformed_turns = 0
            last = problems[0] if len(problems[0]) <= 200 else problems[0][:197] + "..."
            self.sink.pause(f"the agent sent {MAX_MALFORMED_TURNS} malformed replies in a row (last: {last}); "
                            "paused rather than paying for more: check the model (--model), then resume")

    def count_calls(self, calls: int) -> None:
        """Turns without a tool call in a row pause the run."""
        if calls:
            self.empty_turns = 0
            return
        self.empty_turns += 1
        if self.empty_turns >= MAX_EMPTY_TURNS:
            self.sink.pause(f"the agent made {MAX_EMPTY_TURNS} turns without a tool call")

    # ---- cost ---------------------------------------------------------------------------------------------
    def record_usage(self, usage: dict[str, Any] | None) -> None:
        if not usage:
            return
        self.spend.add(usage)
        self.sink.usage_recorded(usage, self.spend.as_dict())

    def cost_limit_reached(self) -> str | None:
        """Why the run must end for its spend limit (recorded and told), or None while under it."""
        limit, tokens = self.max_cost, self.spend.tokens_in + self.spend.output_tokens
        if limit is not None and self.spend.cost_usd >= limit:
            reason = (f"the cost limit is reached: ${self.spend.cost_usd:.2f} spent of --max-cost "
                      f"${limit:.2f}; continue with --resume and a higher --max-cost")
        elif self.max_tokens is not None and tokens >= self.max_tokens:
            reason = (f"the token limit is reached: {tokens:,} tokens spent of --max-tokens {self.max_tokens:,}; "
                      "continue with --resume and a higher --max-tokens")
        else:
            return None
        self.sink.record(reason)
        self.sink.notice("warning", reason)
        return reason
