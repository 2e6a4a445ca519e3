"""The chart panes: the loss curve and val_bpb by trial (the noise floor's seeds while it is measured)."""

from __future__ import annotations

import time
from typing import Any

from rich.console import RenderableType
from rich.style import Style
from rich.text import Text
from textual.widget import Widget

from supervisor.core.types import Trial, TrialStatus
from supervisor.tui import format as fmt
from supervisor.tui.charts import Chart, Series, loss_range
from supervisor.tui.progress import SEED_RUNNING, NoiseSeed, NoiseView
from supervisor.tui.widgets.common import ThemedMixin, palette


class ChartPane(ThemedMixin, Widget):
    """A widget drawing a Chart to its full size; subclasses build the chart from a RunView."""

    DEFAULT_CSS = "ChartPane { height: 1fr; }"

    def on_mount(self) -> None:
        self.watch_theme()

    def chart(self) -> Chart:
        raise NotImplementedError

    def render(self) -> RenderableType:
        chart = self.chart()
        chart.height = max(2, self.content_size.height)
        return chart


class LossChart(ChartPane):
    """The running trial's loss over training time, with the curve of the keep it was built on behind it;
    while the noise floor is measured, the running seed's curve with the finished seeds' behind it."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.metrics: list[dict[str, Any]] = []
        self.reference: list[dict[str, Any]] = []
        self.trial_id: int | None = None
        self.reference_id: int | None = None
        self.noise: NoiseView | None = None

    def show(self, trial_id: int | None, metrics: list[dict[str, Any]], reference_id: int | None,
             reference: list[dict[str, Any]]) -> None:
        self.trial_id, self.metrics, self.reference_id, self.reference = trial_id, metrics, reference_id, reference
        self.noise = None
        self.border_title = (f"loss · trial {trial_id}" if trial_id is not None else "loss") + (
            f" vs #{reference_id}" if reference_id is not None and reference else "")
        self.refresh()

    def show_noise(self, noise: NoiseView) -> None:
        self.noise = noise
        latest = noise.seeds[-1].index if noise.seeds else None
        self.border_title = f"loss · seed {latest} of {noise.repeats}" if latest else "loss · noise floor"
        self.refresh()

    def chart(self) -> Chart:
        c = palette(self.app)
        if self.noise is not None:
            return self._noise_chart(self.noise, c)
        current = _curve(self.metrics)
        parent = _curve(self.reference)
        series = []
        if parent:
            series.append(Series(parent, Style(color=c["secondary"], dim=True), label=f"#{self.reference_id}"))
        if current:
            series.append(Series(current, Style(color=c["primary"], bold=True), label=f"#{self.trial_id}"))
        return Chart(series, x_unit="s", y_range=loss_range([current, parent]), y_digits=2,
                     empty_text="no metrics yet: the curve appears with the first step")

    @staticmethod
    def _noise_chart(noise: NoiseView, c: dict[str, str]) -> Chart:
        earlier = [(index, _curve(rows)) for index, rows in sorted(noise.curves.items())]
        current = _curve(noise.metrics)
        series = [Series(points, Style(color=c["secondary"], dim=True), label=f"seed {index}")
                  for index, points in earlier if points]
        latest = noise.seeds[-1].index if noise.seeds else None
        if current:
            series.append(Series(current, Style(color=c["accent"], bold=True), label=f"seed {latest}"))
        waiting = (f"seed {latest} of {noise.repeats} is starting: its curve appears with the first step"
                   if latest else "the first seed is starting")
        return Chart(series, x_unit="s", y_range=loss_range([current] + [p for _, p in earlier]), y_digits=2,
                     empty_text=waiting)


def _curve(metrics: list[dict[str, Any]]) -> list[tuple[float, float]]:
    return [(m["elapsed"], m["loss"]) for m in metrics if m.get("elapsed") is not None and m.get("loss") is not None]


class TrajectoryChart(ChartPane):
    """val_bpb by trial: keeps as the best-so-far staircase, discards and crashes as points."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.trials: list[Trial] = []
        self.floor: float | None = None
        self.noise: NoiseView | None = None

    def show(self, trials: list[Trial], floor: float | None) -> None:
        self.trials, self.floor = trials, floor
        self.refresh()

    def show_noise(self, noise: NoiseView | None) -> None:
        """While the noise floor is measured this pane lists the seeds instead (no trial moves meanwhile)."""
        self.noise = noise
        self.border_title = "val_bpb by trial" if noise is None else "noise floor"
        self.refresh()

    def render(self) -> RenderableType:
        if self.noise is not None:
            return noise_seeds_text(self.noise, palette(self.app), getattr(self.app, "clock", time.time)())
        return super().render()

    def chart(self) -> Chart:
        c = palette(self.app)
        finished = [t for t in self.trials if t.status.finished]
        keeps = [(t.id, t.val_bpb) for t in finished if t.status == TrialStatus.KEEP and t.val_bpb is not None]
        flagged = [(t.id, t.val_bpb) for t in finished if t.flagged and t.val_bpb is not None]
        discards = [(t.id, t.val_bpb) for t in finished if t.status == TrialStatus.DISCARD and t.val_bpb is not None]
        values = [v for _, v in keeps + discards]
        if not finished:
            return Chart([], empty_text="no finished trial yet")
        top = max(values) if values else 1.0
        bottom = min(values) if values else 0.0
        span = max(top - bottom, 1e-6)
        crash_y = top + span * 0.08  # crashes have no value: a row of marks above the data
        crashes = [(t.id, crash_y) for t in finished if t.status == TrialStatus.CRASH or t.val_bpb is None]
        staircase: list[tuple[float, float]] = []
        best = None
        for x, v in keeps:
            best = v if best is None else min(best, v)
            staircase.append((x, best))
        if staircase and finished[-1].id > staircase[-1][0]:
            staircase.append((finished[-1].id, staircase[-1][1]))
        series = [
            Series(discards, Style(color=c["foreground"], dim=True), mode="points", label="discard"),
            Series(crashes, Style(color=c["error"]), mode="points", label="crash" if crashes else ""),
            Series(staircase, Style(color=c["success"], bold=True), mode="steps", label="best keep"),
            Series(flagged, Style(color=c["accent"], bold=True), mode="points", label="⚑ flagged" if flagged else ""),
        ]
        x0 = finished[0].id
        x1 = max(finished[-1].id, x0 + 1)
        return Chart(series, y_range=(bottom, crash_y if crashes else top), x_range=(x0, x1), y_digits=4,
                     title=f"floor {self.floor:.4f}" if self.floor is not None else "")


def noise_seeds_text(noise: NoiseView, c: dict[str, str], now: float) -> Text:
    """Each seed of the measurement: its val_bpb and steps when finished, its budget while it runs."""
    text = Text(overflow="fold")
    by_index = {s.index: s for s in noise.seeds}
    for index in range(1, max(noise.repeats, len(noise.seeds)) + 1):
        seed = by_index.get(index)
        text.append(f"seed {index} ", style="bold")
        if seed is None:
            text.append("waiting", style="dim")
        elif seed.status == SEED_RUNNING:
            progress = noise.progress(now)
            text.append("▶ ", style=f"bold {c['accent']}")
            text.append(f"{progress.elapsed_s:.0f}/{progress.budget_s:.0f}s" if progress else "running",
                        style=c["accent"])
            if progress and progress.phase != "training":
                text.append(f" {progress.phase}", style=c["warning"])
            if noise.metrics:
                text.append(f" · step {fmt.integer(noise.metrics[-1].get('step'))}", style="dim")
        elif seed.val_bpb is not None:
            text.append(_seed_result(seed), style=c["success"])
        else:
            text.append(seed.status, style=c["error"])
        text.append("\n")
    text.append("same code, new seeds: their spread is the noise floor", style="dim")
    return text


def _seed_result(seed: NoiseSeed) -> str:
    if seed.val_bpb is None:
        return seed.status
    steps = f" ({fmt.plural(seed.num_steps, 'step')})" if seed.num_steps is not None else ""
    return f"val_bpb {fmt.num(seed.val_bpb, 4)}{steps}"
