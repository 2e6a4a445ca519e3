"""The status bar: the run on one line, the running trial (or noise seed) and its budget on the next."""

from __future__ import annotations

import time
from typing import Any

from rich.console import Group, RenderableType
from rich.text import Text
from textual.widgets import Static

from supervisor.core.types import RunState
from supervisor.tui import format as fmt
from supervisor.tui.progress import BudgetProgress
from supervisor.tui.state import RunView
from supervisor.tui.widgets.common import ThemedMixin, palette, status_style


class StatusBar(ThemedMixin, Static):
    """Two lines: the run (state, trial, best, floor, spend) and the running trial's budget."""

    DEFAULT_CSS = "StatusBar { height: 2; }"

    def __init__(self, review: bool = False, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.review = review
        self.view: RunView | None = None

    def on_mount(self) -> None:
        self.watch_theme()
        self.set_interval(1.0, self._tick)

    def _tick(self) -> None:
        if self.view is not None and self.view.running:  # the wall clock of the trial moves every second
            self.refresh()

    def show(self, view: RunView) -> None:
        self.view = view
        self.refresh()

    def render(self) -> RenderableType:
        view = self.view
        if view is None:
            return Text("reading the ledger…", style="dim")
        c = palette(self.app)
        state = view.state_label
        state_color = {"agent's turn": c["success"], "training": c["success"], "paused": c["warning"],
                       "interrupted": c["error"], "stopped": c["warning"], "finished": c["primary"],
                       "measuring the noise floor": c["accent"]}.get(state, c["foreground"])
        counts = view.status.get("counts", {})
        max_trials = view.status.get("max_trials")
        best = view.best
        floor = view.noise_floor
        # (text, style, essential): what does not fit in a narrow terminal is left out, least useful first.
        parts: list[tuple[str, str, bool]] = [(f" {view.tag} ", f"bold reverse {c['primary']}", True)]
        if self.review:
            parts.append((" review · read-only", "bold", True))
        parts.append((f" ● {state}", f"bold {state_color}", True))
        if view.detail and state not in ("training", "agent's turn"):
            detail = view.detail.removeprefix(state).lstrip(": ")  # "measuring the noise floor: 3 seeds…"
            parts.append((f" ({fmt.one_line(detail, 50)})", "dim", False))
        done = counts.get("trials", 0)
        parts.append((f" · {done}/{max_trials} trials" if max_trials else f" · {fmt.plural(done, 'trial')}", "", True))
        tally = (f" ({fmt.plural(counts.get('keep', 0), 'keep')}, {fmt.plural(counts.get('crash', 0), 'crash')}, "
                 f"{counts.get('flagged', 0)} ⚑)")
        parts.append((tally, "dim", False))
        if best:
            parts.append((" · best ", "dim", True))
            parts.append((fmt.num(best.val_bpb, 6), f"bold {c['success']}", True))
            parts.append((f" #{best.id}", "dim", True))
        parts.append((" · floor ", "dim", True))
        parts.append((fmt.num(floor, 4) if floor is not None else "not measured",
                      "" if floor is not None else c["warning"], True))
        if view.cost:
            parts.append((f" · {view.cost}", c["accent"], True))
        parts.append((f" · {view.status.get('policy', '?')} · agent {view.status.get('agent', '?')}", "dim", False))
        width = self.content_size.width or 200
        room = width - sum(len(text) for text, _, essential in parts if essential)
        line = Text(no_wrap=True, overflow="ellipsis")
        for text, style, essential in parts:
            if not essential:
                if len(text) > room:
                    continue
                room -= len(text)
            line.append(text, style=style)
        return Group(line, self._trial_line(view, c))

    def _trial_line(self, view: RunView, c: dict[str, str]) -> Text:
        line = Text(no_wrap=True, overflow="ellipsis")
        trial = view.focus
        if view.state == RunState.NOISE and not view.running:
            return self._noise_line(view, c)
        if trial is None:
            line.append(" no trial yet", style="dim")
            return line
        progress = view.budget_progress(self._now())
        if progress is None:
            val = fmt.num(trial.val_bpb, 6) if trial.val_bpb is not None else "—"
            if view.over:  # first, where a narrow terminal still shows it
                line.append(" the run is over ·", style=f"bold {c['warning']}")
            line.append(f" last: trial {trial.id} ", style="dim")
            line.append(trial.status, style=status_style(trial.status, c))
            line.append(f" val_bpb {val}", style="")
            if trial.delta is not None:
                line.append(f" ({fmt.signed(trial.delta, 5)})", style=c["success"] if trial.delta < 0 else "dim")
            line.append(f" · {fmt.one_line(trial.description, 80)}", style="dim")
            return line
        line.append(f" ▶ trial {trial.id} ", style=f"bold {c['primary']}")
        self._progress(line, progress, view.latest_metric(), c)
        line.append(f" · {fmt.one_line(trial.description, 60)}", style="dim")
        return line

    def _now(self) -> float:
        return getattr(self.app, "clock", time.time)()

    def _progress(self, line: Text, progress: BudgetProgress, metric: dict[str, Any] | None,
                  c: dict[str, str]) -> None:
        """A bar of the training budget, then where the trainer is (the trial's or a noise seed's)."""
        width = max(10, min(40, self.size.width // 4))
        filled = int(round(progress.fraction * width))
        line.append("█" * filled, style=c["primary"])
        line.append("░" * (width - filled), style="dim")
        line.append(f" {progress.elapsed_s:.0f}/{progress.budget_s:.0f}s", style="bold")
        line.append(f" {progress.phase}", style=c["warning"] if progress.phase != "training" else "dim")
        line.append(f" · wall {fmt.duration(progress.wall_s)}", style="dim")
        if metric:
            line.append(f" · step {fmt.integer(metric.get('step'))} · loss {fmt.num(metric.get('loss'), 3)}"
                        f" · {fmt.rate(metric.get('tokens_per_s'))} tok/s", style="")

    def _noise_line(self, view: RunView, c: dict[str, str]) -> Text:
        """The noise floor being measured: the seed running, its budget, what the finished seeds scored."""
        line = Text(no_wrap=True, overflow="ellipsis")
        noise = view.noise
        seed = noise.current if noise else None
        progress = noise.progress(self._now()) if noise else None
        if noise is None or seed is None or progress is None:
            done = len(noise.finished) if noise else 0
            line.append(f" measuring the noise floor{f': {done} of {noise.repeats} seeds done' if noise else ''}:"
                        " the unchanged code runs again with new seeds; trials start after", style=c["accent"])
            return line
        line.append(f" ▶ noise: seed {seed.index} of {noise.repeats} ", style=f"bold {c['accent']}")
        self._progress(line, progress, noise.metrics[-1] if noise.metrics else None, c)
        return line  # the finished seeds' results are in the pane beside the loss curve
