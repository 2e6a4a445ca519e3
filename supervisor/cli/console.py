"""Headless output: one readable line per event, for `run --headless`, `demo --headless` and logs.

Metrics are summarised (one line every few seconds), not printed per step.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import ClassVar

from rich.console import Console

from supervisor.core import events as ev
from supervisor.core.types import TrialStatus

STATUS_COLORS = {TrialStatus.KEEP: "green", TrialStatus.DISCARD: "yellow", TrialStatus.CRASH: "red"}


class ConsolePrinter:
    def __init__(self, console: Console | None = None, metric_every_s: float = 5.0) -> None:
        self.console = console or Console(highlight=False)
        self.metric_every_s = metric_every_s
        self._last_metric = 0.0

    def __call__(self, event: ev.Event) -> None:
        d = event.data
        stamp = time.strftime("%H:%M:%S", time.localtime(event.time))
        line = self._line(event.kind, d)
        if line:
            self.console.print(f"[dim]{stamp}[/dim] {line}")

    def _line(self, kind: str, d: dict) -> str | None:
        # Kinds without a renderer print nothing: a tool call's result says it in fewer words, streamed
        # pieces of text are followed by the whole, usage is for the UI.
        render = self._RENDERERS.get(kind)
        return None if render is None else render(self, d)

    def _state(self, d: dict) -> str:
        return f"[bold]state[/bold] {d['state']}" + (f": {d['detail']}" if d.get("detail") else "")

    def _agent_text(self, d: dict) -> str:
        text = d["text"].strip().replace("\n", " ")
        return f"[cyan]agent[/cyan] {text[:300]}"

    def _tool_result(self, d: dict) -> str | None:
        first = d["content"].strip().splitlines()[0] if d["content"].strip() else ""
        if d.get("refused"):
            return f"[red]refused[/red] {d['tool']}: {first[:240]}"
        if not d.get("ok"):
            return f"[yellow]error[/yellow] {d['tool']}: {first[:240]}"
        if d["tool"] in ("run_trial", "read_file", "get_results"):
            return None
        return f"[green]{d['tool']}[/green] {first[:200]}"

    def _trial_started(self, d: dict) -> str:
        self._last_metric = 0.0
        return (f"[bold]trial {d['trial_id']}[/bold] started: {d['description']} "
                f"(budget {d['budget_s']:g}s, commit {d['commit'][:7]})")

    def _metric(self, d: dict) -> str | None:
        now = time.monotonic()
        if now - self._last_metric < self.metric_every_s:
            return None
        self._last_metric = now
        m = d["metric"]
        tps = m.get("tokens_per_s")
        return (f"  step {m.get('step')} · {m.get('elapsed', 0):.0f}s · loss {m.get('loss', float('nan')):.4f}"
                + (f" · {tps:,.0f} tok/s" if isinstance(tps, int | float) else ""))

    def _trial_finished(self, d: dict) -> str:
        val = d.get("val_bpb")
        delta = d.get("delta")
        color = STATUS_COLORS.get(d["status"], "white")
        flag = " [magenta]⚑ flagged[/magenta]" if d.get("flagged") else ""
        return (f"[bold]trial {d['trial_id']}[/bold] [{color}]{d['status']}[/{color}]{flag}"
                + (f" val_bpb {val:.6f}" if val is not None else "")
                + (f" ({delta:+.6f})" if delta is not None else "")
                + f" · {d.get('decision', '')}")

    def _journal(self, d: dict) -> str:
        return f"[green]journal[/green] entry for trial {d['trial_id']} written"

    def _reflection(self, d: dict) -> str:
        return f"[green]reflection[/green] {d['reflection_id']} written"

    def _steering(self, d: dict) -> str:
        return f"[magenta]steering[/magenta] {d['message']}"

    def _noise(self, d: dict) -> str:
        floor = d.get("floor")
        return (f"[bold]noise[/bold] {len(d['values'])} runs, sd "
                f"{d['sd'] if d['sd'] is None else format(d['sd'], '.6f')}, floor "
                f"{'n/a' if floor is None else format(floor, '.6f')}")

    def _notice(self, d: dict) -> str:
        color = {"warning": "yellow", "error": "red"}.get(d.get("level", "info"), "blue")
        return f"[{color}]{d['message']}[/{color}]"

    def _plan(self, d: dict) -> str:
        return f"plan #{d['plan_id']} {d['status']}"

    _RENDERERS: ClassVar[dict[str, Callable[[ConsolePrinter, dict], str | None]]] = {
        ev.STATE: _state,
        ev.AGENT_TEXT: _agent_text,
        ev.TOOL_RESULT: _tool_result,
        ev.TRIAL_STARTED: _trial_started,
        ev.METRIC: _metric,
        ev.TRIAL_FINISHED: _trial_finished,
        ev.JOURNAL: _journal,
        ev.REFLECTION: _reflection,
        ev.STEERING: _steering,
        ev.NOISE: _noise,
        ev.NOTICE: _notice,
        ev.PLAN: _plan,
    }
