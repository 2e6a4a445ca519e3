"""The telemetry pane: GPU (or CPU and RAM) readings as bars, with a sparkline of utilisation."""

from __future__ import annotations

from typing import Any

from rich.console import Group, RenderableType
from rich.text import Text
from textual.widgets import Static

from supervisor.tui import format as fmt
from supervisor.tui.state import (
    RunView,
)
from supervisor.tui.widgets.common import ThemedMixin, palette


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
        # The board's name; without one, at least whose GPU it is (the sampler says which library read it).
        vendor = {"nvml": "NVIDIA GPU", "amdsmi": "AMD GPU"}.get(sample.get("gpu_source") or "", "GPU")
        self.border_title = fmt.one_line(sample.get("gpu_name") or vendor, 30)
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
