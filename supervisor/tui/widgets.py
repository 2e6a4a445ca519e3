"""The panes. Each renders a part of a RunView and holds no state of the run beyond what it shows."""

from __future__ import annotations

import time
from collections.abc import Iterable
from typing import Any

from markdown_it import MarkdownIt
from rich.console import Group, RenderableType
from rich.style import Style
from rich.syntax import Syntax
from rich.text import Text
from textual.app import App
from textual.binding import Binding
from textual.containers import VerticalScroll
from textual.message import Message
from textual.reactive import reactive
from textual.widget import Widget
from textual.widgets import DataTable, Markdown, RichLog, Static

from supervisor.store.journal_files import journal_entry_markdown, reflection_markdown
from supervisor.tui import format as fmt
from supervisor.tui.charts import Chart, Series, loss_range
from supervisor.tui.state import (
    BudgetProgress,
    NoiseSeed,
    NoiseView,
    RunView,
    TranscriptItem,
    tool_input_summary,
)


def palette(app: App) -> dict[str, str]:
    """Colours readable on the current theme's background, light or dark."""
    v = app.theme_variables
    return {
        "primary": v.get("text-primary", "cyan"),
        "secondary": v.get("text-secondary", "blue"),
        "success": v.get("text-success", "green"),
        "error": v.get("text-error", "red"),
        "warning": v.get("text-warning", "yellow"),
        "accent": v.get("text-accent", "magenta"),
        "foreground": v.get("foreground", "white"),
    }


def status_style(status: str, colors: dict[str, str]) -> str:
    return {"keep": colors["success"], "discard": "dim", "crash": colors["error"], "aborted": "dim italic",
            "running": f"bold {colors['primary']}"}.get(status, "")


class ThemedMixin:
    """Re-render when the theme changes: colours come from the theme, not from fixed ANSI names."""

    def watch_theme(self) -> None:
        self.app.theme_changed_signal.subscribe(self, lambda _theme: self.on_theme_changed())

    def on_theme_changed(self) -> None:
        self.refresh()


# ---- status bar ---------------------------------------------------------------------------------------------
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
            parts.append((fmt.num(best.get("val_bpb"), 6), f"bold {c['success']}", True))
            parts.append((f" #{best['id']}", "dim", True))
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
        if view.state == "noise" and not view.running:
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


def _seed_result(seed: NoiseSeed) -> str:
    if seed.val_bpb is None:
        return seed.status
    steps = f" ({fmt.plural(seed.num_steps, 'step')})" if seed.num_steps is not None else ""
    return f"val_bpb {fmt.num(seed.val_bpb, 4)}{steps}"


# ---- charts -------------------------------------------------------------------------------------------------
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
        self.trials: list[dict[str, Any]] = []
        self.floor: float | None = None
        self.noise: NoiseView | None = None

    def show(self, trials: list[dict[str, Any]], floor: float | None) -> None:
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
        finished = [t for t in self.trials if t["status"] in ("keep", "discard", "crash")]
        keeps = [(t["id"], t["val_bpb"]) for t in finished if t["status"] == "keep" and t["val_bpb"] is not None]
        flagged = [(t["id"], t["val_bpb"]) for t in finished if t["flagged"] and t["val_bpb"] is not None]
        discards = [(t["id"], t["val_bpb"]) for t in finished if t["status"] == "discard" and t["val_bpb"] is not None]
        values = [v for _, v in keeps + discards]
        if not finished:
            return Chart([], empty_text="no finished trial yet")
        top = max(values) if values else 1.0
        bottom = min(values) if values else 0.0
        span = max(top - bottom, 1e-6)
        crash_y = top + span * 0.08  # crashes have no value: a row of marks above the data
        crashes = [(t["id"], crash_y) for t in finished if t["status"] == "crash" or t["val_bpb"] is None]
        staircase: list[tuple[float, float]] = []
        best = None
        for x, v in keeps:
            best = v if best is None else min(best, v)
            staircase.append((x, best))
        if staircase and finished[-1]["id"] > staircase[-1][0]:
            staircase.append((finished[-1]["id"], staircase[-1][1]))
        series = [
            Series(discards, Style(color=c["foreground"], dim=True), mode="points", label="discard"),
            Series(crashes, Style(color=c["error"]), mode="points", label="crash" if crashes else ""),
            Series(staircase, Style(color=c["success"], bold=True), mode="steps", label="best keep"),
            Series(flagged, Style(color=c["accent"], bold=True), mode="points", label="⚑ flagged" if flagged else ""),
        ]
        x0 = finished[0]["id"]
        x1 = max(finished[-1]["id"], x0 + 1)
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
        elif seed.status == "running":
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


# ---- telemetry ------------------------------------------------------------------------------------------------
def _bar(fraction: float | None, width: int, color: str) -> Text:
    text = Text()
    if fraction is None:
        return text.append("·" * width, style="dim")
    filled = int(round(max(0.0, min(1.0, fraction)) * width))
    text.append("█" * filled, style=color)
    text.append("░" * (width - filled), style="dim")
    return text


# label, value, the fraction a bar shows (None: no bar), the bar's colour ("hot": the value in the error colour)
TelemetryRow = tuple[str, str, float | None, str | None]


class TelemetryPane(ThemedMixin, Static):
    """GPU utilisation, MFU, VRAM used/peak and temperature; the CPU and RAM when there is no GPU."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.view: RunView | None = None

    def on_mount(self) -> None:
        self.watch_theme()

    def show(self, view: RunView) -> None:
        self.view = view
        self.refresh()

    def render(self) -> RenderableType:
        view = self.view
        sample = view.telemetry if view else None
        if not view or not sample:
            return Text("waiting for the first reading…", style="dim")
        c = palette(self.app)
        metric = view.latest_metric()
        mfu = metric.get("mfu") if metric else None
        if mfu is None and view.focus is not None and not view.running:
            mfu = view.focus.mfu_percent
        gpu = sample.get("kind") == "gpu"
        rows = self._gpu_rows(view, sample, mfu, c) if gpu else self._cpu_rows(view, sample, mfu, c)
        if metric:
            rows.append(("tok/s", fmt.rate(metric.get("tokens_per_s")), None, None))
        # Every value is shown whole: the bars take what the longest value leaves of the pane's width.
        content = self.content_size.width
        value_width = max((len(value) for _, value, fraction, _ in rows if fraction is not None), default=0)
        bar_width = content - 6 - 1 - value_width
        lines: list[Text] = []
        for label, value, fraction, color in rows:
            line = Text(f"{label:<6}", style="dim", no_wrap=True, overflow="ellipsis")
            if fraction is not None and bar_width >= 3:
                line.append_text(_bar(fraction, bar_width, color or c["primary"]))
                line.append(" ")
            line.append(value, style=c["error"] if color == "hot" else "bold")
            lines.append(line)
        history = view.telemetry_history
        if history and self.content_size.height > len(lines) + 1:
            lines.append(Text(_spark(history[-(content - 1):]), style=c["primary"]))
        return Group(*lines)

    def _gpu_rows(self, view: RunView, sample: dict[str, Any], mfu: float | None,
                  c: dict[str, str]) -> list[TelemetryRow]:
        self.border_title = fmt.one_line(sample.get("gpu_name") or "GPU", 30)
        util = sample.get("gpu_util_percent")
        used, total = sample.get("vram_used_mb"), sample.get("vram_total_mb")
        temp = sample.get("temperature_c")
        rows: list[TelemetryRow] = [
            ("GPU", fmt.percent(util), None if util is None else util / 100, None),
            ("MFU", fmt.percent(mfu, 1), None if mfu is None else mfu / 100, c["success"]),
            ("VRAM", fmt.mb_pair(used, total), used / total if used is not None and total else None, c["accent"]),
            ("peak", fmt.mb(view.peak_vram_mb()), None, None),
            ("temp", f"{temp:.0f}°C" if temp is not None else "—", None,
             "hot" if temp is not None and temp >= 85 else None),
        ]
        if sample.get("power_w") is not None:
            rows.append(("power", f"{sample['power_w']:.0f} W", None, None))
        rows.append(("CPU", fmt.percent(sample.get("cpu_percent")), None, None))
        return rows

    def _cpu_rows(self, view: RunView, sample: dict[str, Any], mfu: float | None,
                  c: dict[str, str]) -> list[TelemetryRow]:
        self.border_title = "CPU (no GPU telemetry)"
        cpu = sample.get("cpu_percent")
        used, total = sample.get("ram_used_mb"), sample.get("ram_total_mb")
        rows: list[TelemetryRow] = [
            ("CPU", fmt.percent(cpu), None if cpu is None else cpu / 100, None),
            ("RAM", fmt.mb_pair(used, total), used / total if used is not None and total else None, c["accent"]),
        ]
        if sample.get("load_avg_1m") is not None:
            rows.append(("load", f"{sample['load_avg_1m']:.2f}", None, None))
        rows.append(("MFU", fmt.percent(mfu, 1), None, None))
        rows.append(("peak", fmt.mb(view.peak_vram_mb()), None, None))
        return rows


_SPARK = " ▁▂▃▄▅▆▇█"


def _spark(values: list[float]) -> str:
    return "".join(_SPARK[min(8, max(0, int(round(v / 100 * 8))))] for v in values)


# ---- diff ---------------------------------------------------------------------------------------------------
class DiffView(ThemedMixin, VerticalScroll):
    """A unified diff, syntax-highlighted, scrollable."""

    DEFAULT_CSS = "DiffView Static { width: auto; min-width: 100%; }"

    def __init__(self, empty: str = "no diff", **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.diff = ""
        self.empty = empty
        self._body = Static(Text(empty, style="dim"))

    def compose(self) -> Iterable[Widget]:
        yield self._body

    def on_mount(self) -> None:
        self.watch_theme()

    def on_theme_changed(self) -> None:
        self._render_diff()

    def show(self, diff: str, empty: str | None = None) -> None:
        if empty is not None:
            self.empty = empty
        if diff == self.diff and self.is_mounted and diff:
            return
        self.diff = diff
        self._render_diff()

    def _render_diff(self) -> None:
        if not self.diff.strip():
            self._body.update(Text(self.empty, style="dim"))
            return
        dark = self.app.current_theme.dark
        background = self.app.theme_variables.get("background", "default")  # the pane's own, not black
        self._body.update(Syntax(self.diff, "diff", theme="ansi_dark" if dark else "ansi_light",
                                 background_color=background, word_wrap=False))


# ---- transcript -----------------------------------------------------------------------------------------------
class TranscriptView(ThemedMixin, RichLog):
    """The agent's words and tool calls as they happen; refusals and errors stand out."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(wrap=True, markup=False, highlight=False, max_lines=4000, min_width=20,
                         auto_scroll=True, **kwargs)
        self.items: list[TranscriptItem] = []
        self._width = 0

    def on_mount(self) -> None:
        self.watch_theme()

    def on_theme_changed(self) -> None:
        self.rebuild()

    def on_resize(self) -> None:
        if self.size.width != self._width:
            self._width = self.size.width
            self.call_after_refresh(self.rebuild)

    def set_items(self, items: list[TranscriptItem]) -> None:
        self.items = list(items)
        self.rebuild()

    def append(self, items: list[TranscriptItem]) -> None:
        if not items:
            return
        if not self.items:  # the placeholder is on screen: the first words replace it
            self.set_items(items)
            return
        self.items.extend(items)
        colors = palette(self.app)
        for item in items:
            self.write(render_item(item, colors))

    def rebuild(self) -> None:
        self.clear()
        colors = palette(self.app)
        for item in self.items[-1000:]:
            self.write(render_item(item, colors))
        if not self.items:
            self.write(Text("the agent has not said anything yet", style="dim"))
        self.call_after_refresh(self.scroll_end, animate=False)


class LiveReply(Static):
    """The agent's reply while it streams; hidden between turns (then the transcript has it)."""

    def show(self, text: str) -> None:
        self.display = bool(text)
        if text:
            body = Text()
            body.append("agent is writing… ", style="bold italic")
            body.append(text.replace("\n", " ")[-600:], style="italic")
            self.update(body)


def render_item(item: TranscriptItem, c: dict[str, str]) -> Text:
    stamp = fmt.clock(item.time)
    text = Text()
    text.append(f"{stamp} ", style="dim")
    if item.kind == "agent":
        text.append("agent ", style=f"bold {c['primary']}")
        text.append(item.body.strip())
    elif item.kind == "thinking":
        text.append(f"{item.title} ", style=f"italic {c['secondary']}")
        text.append(item.body.strip(), style="italic dim")
    elif item.kind in ("tool", "error", "refused"):
        color = {"tool": c["success"], "error": c["warning"], "refused": c["error"]}[item.kind]
        label = {"tool": "→", "error": "→ error", "refused": "✗ REFUSED"}[item.kind]
        text.append(f"{label} ", style=f"bold {color}")
        text.append(item.tool or item.title, style=f"bold {color}")
        summary = tool_input_summary(item.tool, item.input)
        if summary:
            text.append(f"({summary})", style="dim")
        body = item.body.strip()
        if body:
            first = body.splitlines()[0]
            lines = body.splitlines()
            more = f"  (+{fmt.plural(len(lines) - 1, 'line')})" if len(lines) > 1 and item.kind == "tool" else ""
            shown = fmt.one_line(body if item.kind != "tool" else first, 400 if item.kind != "tool" else 160)
            text.append("\n    " + shown + more, style=color if item.kind != "tool" else "dim")
    elif item.kind == "steering":
        text.append("you → agent ", style=f"bold {c['accent']}")
        text.append(item.body.strip(), style=c["accent"])
    elif item.kind == "delivered":
        text.append("↳ ", style="dim")
        text.append(item.body, style=f"dim {c['accent']}")
    else:
        text.append(f"{item.title} ", style=f"bold {c['warning']}")
        text.append(item.body.strip(), style=c["warning"])
    return text


# ---- the experiments table ------------------------------------------------------------------------------------
FILTERS = ("all", "keeps", "flagged", "crashes", "graveyard")
DESCRIPTION_LIMIT = 300  # characters of a trial's description the table holds
SORTS = ("id", "val_bpb", "delta", "steps", "MFU", "VRAM")
_SORT_FIELD = {"id": "id", "val_bpb": "val_bpb", "delta": "delta", "steps": "num_steps", "MFU": "mfu_percent",
               "VRAM": "peak_vram_mb"}


def filter_trials(trials: list[dict[str, Any]], name: str) -> list[dict[str, Any]]:
    if name == "keeps":
        return [t for t in trials if t["status"] == "keep"]
    if name == "flagged":
        return [t for t in trials if t.get("flagged")]
    if name == "crashes":
        return [t for t in trials if t["status"] == "crash"]
    if name == "graveyard":  # everything tried that did not make it: discards, crashes, aborted
        return [t for t in trials if t["status"] in ("discard", "crash", "aborted")]
    return list(trials)


def sort_trials(trials: list[dict[str, Any]], name: str, reverse: bool = False) -> list[dict[str, Any]]:
    key = _SORT_FIELD[name]
    present = [t for t in trials if t.get(key) is not None]
    missing = [t for t in trials if t.get(key) is None]  # no value: always last, whatever the direction
    return sorted(present, key=lambda t: t[key], reverse=reverse) + missing


class ExperimentsTable(ThemedMixin, DataTable):
    """Every trial: id, status, val_bpb, delta, steps, MFU, VRAM, flag, description. Sortable, filterable."""

    # (key, header, width). The description's width is what the others leave (_fit_description).
    COLUMNS = (("id", "id", 4), ("status", "status", 9), ("val_bpb", "val_bpb", 7), ("delta", "delta", 8),
               ("steps", "steps", 5), ("MFU", "MFU", 4), ("VRAM", "VRAM", 7), ("flag", "⚑", 2),
               ("description", "description", 24))
    # Shown only once a trial has the number (a CPU reports neither): the description gets their room.
    OPTIONAL = {"MFU": "mfu_percent", "VRAM": "peak_vram_mb"}
    MIN_DESCRIPTION = 20
    # A row cursor makes DataTable's home/end scroll sideways; in a list of trials they mean first and last.
    BINDINGS = [
        Binding("home,ctrl+home", "first_row", "First trial", show=False),
        Binding("end,ctrl+end", "last_row", "Last trial (follows new ones)", show=False),
    ]

    class Open(Message):
        """The person asked to open a trial."""

        def __init__(self, trial_id: int) -> None:
            super().__init__()
            self.trial_id = trial_id

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(cursor_type="row", zebra_stripes=True, **kwargs)
        self.fixed_columns = 1  # scrolled sideways to read a description, the trial's id stays in view
        self.trials: list[dict[str, Any]] = []
        self.filter_name = "all"
        self.sort_name = "id"
        self.sort_reverse = False
        self._keys: list[str] = []
        self._cells: dict[str, tuple] = {}
        self._follow = True  # keep the newest trial in view until the person moves the cursor
        self.shown_columns: tuple[str, ...] = ()

    def on_mount(self) -> None:
        self.watch_theme()
        self._set_columns()

    def _wanted_columns(self) -> tuple[str, ...]:
        # Judged on every trial, not the filtered ones, so a filter does not make columns come and go.
        # A zero is no reading either (a trainer on a CPU may print peak_vram_mb: 0.0).
        return tuple(key for key, _, _ in self.COLUMNS
                     if key not in self.OPTIONAL or any(t.get(self.OPTIONAL[key]) for t in self.trials))

    def _set_columns(self) -> None:
        self.shown_columns = self._wanted_columns()
        self.clear(columns=True)
        self._keys, self._cells = [], {}
        for key, header, width in self.COLUMNS:
            if key in self.shown_columns:
                self.add_column(header, key=key, width=width)
        self.call_after_refresh(self._fit_description)

    def on_theme_changed(self) -> None:
        self._rebuild(force=True)

    def on_resize(self) -> None:
        self.call_after_refresh(self._fit_description)

    def _keep_cursor_in_view(self) -> None:
        # A resize or a new horizontal scrollbar changes the viewport: the highlighted row stays visible.
        if self.row_count:
            self.move_cursor(row=self.cursor_row, animate=False)

    def _fit_description(self) -> None:
        """The description column takes the width the others leave. When that is too little to read, the
        table scrolls sideways and the column is as wide as the longest description: scrolled right, every
        description is whole."""
        column = self.columns.get("description")  # type: ignore[call-overload]
        if column is None:
            return
        others = sum(c.get_render_width(self) for key, c in self.columns.items() if key != "description")
        # Room for the vertical scrollbar is always kept, so the width does not flip as rows arrive.
        room = self.size.width - self.styles.scrollbar_size_vertical - self.styles.gutter.width
        left = room - others - 2 * self.cell_padding
        longest = max((len(fmt.one_line(t.get("description") or "", DESCRIPTION_LIMIT)) for t in self.trials),
                      default=0)
        width = left if left >= self.MIN_DESCRIPTION else max(self.MIN_DESCRIPTION, longest)
        if width != column.width:
            column.width = width
            self._require_update_dimensions = True
            self._clear_caches()  # rows already drawn at the old width are drawn again
            self.refresh()
        self.call_after_refresh(self._keep_cursor_in_view)

    def show(self, trials: list[dict[str, Any]]) -> None:
        self.trials = trials
        self._rebuild()
        if self.is_mounted:
            self._fit_description()  # a longer description may widen a scrolled column

    def set_filter(self, name: str) -> None:
        self.filter_name = name
        self._rebuild(force=True)

    def set_sort(self, name: str, reverse: bool | None = None) -> None:
        if reverse is None:
            reverse = (not self.sort_reverse) if name == self.sort_name else name == "id"
        self.sort_name, self.sort_reverse = name, reverse
        self._rebuild(force=True)

    def cycle_filter(self) -> str:
        self.set_filter(FILTERS[(FILTERS.index(self.filter_name) + 1) % len(FILTERS)])
        return self.filter_name

    def cycle_sort(self) -> str:
        name = SORTS[(SORTS.index(self.sort_name) + 1) % len(SORTS)]
        self.set_sort(name, reverse=False)
        return self.sort_name

    def visible_trials(self) -> list[dict[str, Any]]:
        return sort_trials(filter_trials(self.trials, self.filter_name), self.sort_name, self.sort_reverse)

    def selected_trial_id(self) -> int | None:
        if not self.row_count:
            return None
        try:
            key = self.coordinate_to_cell_key(self.cursor_coordinate).row_key
        except Exception:  # noqa: BLE001 - no row under the cursor
            return None
        return int(key.value) if key.value is not None else None

    def describe(self) -> str:
        arrow = "↓" if self.sort_reverse else "↑"
        return f"{self.filter_name} · sorted by {self.sort_name} {arrow} · {self.row_count} shown"

    def _row(self, t: dict[str, Any], c: dict[str, str]) -> tuple:
        delta = t.get("delta")
        flag = ("⚑" if t.get("flagged") else "") + ("!" if t.get("suspicious") else "")
        cells = {
            "id": Text(str(t["id"]), justify="right"),
            "status": Text(f"{fmt.STATUS_SYMBOL.get(t['status'], ' ')} {t['status']}",
                           style=status_style(t["status"], c)),
            "val_bpb": Text(fmt.num(t.get("val_bpb"), 5), justify="right"),
            "delta": Text(fmt.signed(delta, 5), justify="right",
                          style=(c["success"] if delta is not None and delta < 0 else "dim")),
            "steps": Text(fmt.integer(t.get("num_steps"), ""), justify="right"),
            "MFU": Text(fmt.num(t.get("mfu_percent"), 1, ""), justify="right"),
            "VRAM": Text(fmt.mb(t.get("peak_vram_mb"), ""), justify="right"),
            "flag": Text(flag, style=f"bold {c['accent']}" if t.get("flagged") else f"bold {c['error']}"),
            "description": Text(fmt.one_line(t.get("description") or "", DESCRIPTION_LIMIT), no_wrap=True,
                                overflow="ellipsis"),
        }
        return tuple(cells[key] for key in self.shown_columns)

    def _rebuild(self, force: bool = False) -> None:
        if not self.is_mounted:
            return
        selected = self.selected_trial_id()
        at_end = self.row_count == 0 or self.cursor_row >= self.row_count - 1
        if self._wanted_columns() != self.shown_columns:
            self._set_columns()  # MFU or VRAM appeared: every row is drawn again with them
            force = True
        c = palette(self.app)
        rows = [(str(t["id"]), self._row(t, c)) for t in self.visible_trials()]
        keys = [k for k, _ in rows]
        if not force and keys == self._keys:
            for key, cells in rows:  # same rows: update only the cells that changed (a trial finishing)
                old = self._cells.get(key)
                if old is None or [str(x) for x in old] != [str(x) for x in cells]:
                    for name, value in zip(self.shown_columns, cells, strict=True):
                        self.update_cell(key, name, value)
                    self._cells[key] = cells
            return
        if not force and keys[: len(self._keys)] == self._keys:
            for key, cells in rows[len(self._keys):]:
                self.add_row(*cells, key=key)
                self._cells[key] = cells
            for key, cells in rows[: len(self._keys)]:
                if [str(x) for x in self._cells.get(key, ())] != [str(x) for x in cells]:
                    for name, value in zip(self.shown_columns, cells, strict=True):
                        self.update_cell(key, name, value)
                    self._cells[key] = cells
        else:
            self.clear()
            self._cells = {}
            for key, cells in rows:
                self.add_row(*cells, key=key)
                self._cells[key] = cells
        self._keys = keys
        if self._follow and at_end and self.sort_name == "id" and not self.sort_reverse and keys:
            self.move_cursor(row=len(keys) - 1)
        elif selected is not None and str(selected) in keys:
            self.move_cursor(row=keys.index(str(selected)))

    def on_data_table_row_selected(self, event: DataTable.RowSelected) -> None:
        event.stop()
        if event.row_key.value is not None:
            self.post_message(self.Open(int(event.row_key.value)))

    def on_data_table_header_selected(self, event: DataTable.HeaderSelected) -> None:
        event.stop()
        name = str(event.column_key.value)
        if name in SORTS:
            self.set_sort(name)

    def on_key(self, event: Any) -> None:
        if event.key in ("up", "down", "pageup", "pagedown"):
            self._follow = False

    def action_first_row(self) -> None:
        self._follow = False
        if self.row_count:
            self.move_cursor(row=0)

    def action_last_row(self) -> None:
        self._follow = True  # the newest trial stays in view as trials finish
        if self.row_count:
            self.move_cursor(row=self.row_count - 1)


# ---- flagged keeps ----------------------------------------------------------------------------------------------
class FlaggedTable(ThemedMixin, DataTable):
    """Keeps whose gain is under the noise floor, with the gain against the floor."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(cursor_type="row", **kwargs)
        self.flagged_rows: list[dict[str, Any]] = []
        self.floor: float | None = None

    def on_mount(self) -> None:
        self.watch_theme()
        for name, width in (("id", 5), ("val_bpb", 9), ("gain", 9), ("floor", 8), ("gain/floor", 10),
                            ("description", None)):
            self.add_column(name, key=name, width=width)

    def on_theme_changed(self) -> None:
        self.show(self.flagged_rows, self.floor, force=True)

    def show(self, flagged: list[dict[str, Any]], floor: float | None, force: bool = False) -> None:
        if not force and flagged == self.flagged_rows and floor == self.floor:
            return
        self.flagged_rows, self.floor = flagged, floor
        if not self.is_mounted:
            return
        c = palette(self.app)
        self.clear()
        for t in flagged:
            gain = -t["delta"] if t.get("delta") is not None else None
            ratio = gain / floor if gain is not None and floor else None
            self.add_row(
                Text(str(t["id"]), justify="right"),
                Text(fmt.num(t.get("val_bpb"), 5), justify="right"),
                Text(fmt.num(gain, 5), justify="right", style=c["accent"]),
                Text(fmt.num(floor, 4), justify="right", style="dim"),
                Text(f"{ratio:.2f}×" if ratio is not None else "—", justify="right", style=f"bold {c['accent']}"),
                Text(fmt.one_line(t.get("description") or "", 200)),
                key=str(t["id"]),
            )

    def on_data_table_row_selected(self, event: DataTable.RowSelected) -> None:
        event.stop()
        if event.row_key.value is not None:
            self.post_message(ExperimentsTable.Open(int(event.row_key.value)))


# ---- journal --------------------------------------------------------------------------------------------------
def _journal_parser() -> MarkdownIt:
    # Journal text says "train.py" a lot; auto-linking would turn it into a web address.
    return MarkdownIt("gfm-like").disable("linkify")


def journal_markdown_widget(text: str = "", **kwargs: Any) -> Markdown:
    """A Markdown widget for journal text: no auto-links, links never opened."""
    return Markdown(text, open_links=False, parser_factory=_journal_parser, **kwargs)


def latest_journal_markdown(view: RunView) -> str:
    parts = []
    if view.latest_journal and view.latest_journal_trial:
        parts.append(journal_entry_markdown(view.latest_journal_trial, view.latest_journal))
    if view.latest_reflection:
        parts.append(reflection_markdown(view.latest_reflection))
    if not parts:
        return "*No journal entry yet: the agent writes one after every trial, before anything else.*"
    return "\n\n---\n\n".join(parts)


class JournalPane(VerticalScroll):
    """The latest journal entry and the latest reflection."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.markdown = ""
        self._body = journal_markdown_widget()

    def compose(self) -> Iterable[Widget]:
        yield self._body

    def show(self, view: RunView) -> None:
        text = latest_journal_markdown(view)
        if text != self.markdown:
            self.markdown = text
            self._body.update(text)


class HintLine(Static):
    """A one-line hint under a pane (the table's filter and sort, how to open a trial)."""

    text = reactive("")

    def render(self) -> RenderableType:
        return Text(self.text, style="dim", no_wrap=True, overflow="ellipsis")
