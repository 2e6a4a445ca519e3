"""Line and point charts drawn with braille dots: a Rich renderable that fits whatever box it gets.

Each cell holds 2x4 dots, so an 80-column pane has 160 horizontal points of resolution. Series are drawn in
order; a cell takes the colour of the last series that touched it, so the series that matters goes last.
Long series are reduced to the min and max of each dot column first, so drawing costs the width of the
pane, not the length of the night.
"""

from __future__ import annotations

import math
import textwrap
from collections.abc import Sequence
from dataclasses import dataclass, field

from rich.console import Console, ConsoleOptions, RenderResult
from rich.segment import Segment
from rich.style import Style

_BRAILLE_BASE = 0x2800
# Dot bit for (column 0..1, row 0..3) inside one braille cell.
_DOT = ((0x01, 0x08), (0x02, 0x10), (0x04, 0x20), (0x40, 0x80))


@dataclass
class Series:
    points: Sequence[tuple[float, float]]
    style: Style | str = ""
    mode: str = "line"  # line | points | steps
    label: str = ""


@dataclass
class Chart:
    """A chart of one or more series with a y axis on the left and the x range underneath."""

    series: list[Series] = field(default_factory=list)
    title: str = ""
    x_unit: str = ""
    y_digits: int = 3
    y_range: tuple[float, float] | None = None   # fixed range; None: fitted to the data
    x_range: tuple[float, float] | None = None
    empty_text: str = "no data yet"
    height: int | None = None
    legend: bool = True

    # ---- geometry -------------------------------------------------------------------------------------
    def _bounds(self) -> tuple[float, float, float, float] | None:
        xs = [p[0] for s in self.series for p in s.points if _finite(p)]
        ys = [p[1] for s in self.series for p in s.points if _finite(p)]
        if not xs:
            return None
        x0, x1 = self.x_range or (min(xs), max(xs))
        y0, y1 = self.y_range or (min(ys), max(ys))
        if x1 - x0 < 1e-12:
            x0, x1 = x0 - 0.5, x1 + 0.5
        if y1 - y0 < 1e-12:
            pad = abs(y0) * 0.01 or 0.5
            y0, y1 = y0 - pad, y1 + pad
        else:
            pad = (y1 - y0) * 0.04
            y0, y1 = y0 - pad, y1 + pad
        return x0, x1, y0, y1

    def __rich_console__(self, console: Console, options: ConsoleOptions) -> RenderResult:
        width = options.max_width
        height = self.height or options.height or 10
        yield from self.render_lines(width, height)

    def render_lines(self, width: int, height: int) -> list[Segment]:
        """The chart as segments for a box of `width` x `height` cells (legend and x axis included)."""
        bounds = self._bounds()
        out: list[Segment] = []
        if bounds is None or width < 12:
            # The message wraps rather than being cut: a narrow pane still says all of it.
            lines = textwrap.wrap(self.empty_text, max(1, width)) or [""]
            for row in range(height):
                out.append(Segment((lines[row] if row < len(lines) else "").ljust(width)[:width], Style(dim=True)))
                out.append(Segment.line())
            return out
        x0, x1, y0, y1 = bounds
        labels = [_fmt_axis(y1, self.y_digits), _fmt_axis((y0 + y1) / 2, self.y_digits), _fmt_axis(y0, self.y_digits)]
        gutter = max(len(s) for s in labels) + 1
        plot_w = max(4, width - gutter)
        legend = self._legend_lines(width, gutter, height) if self.legend else []
        rows_for_plot = max(1, height - 1 - len(legend))
        canvas = _Canvas(plot_w, rows_for_plot)
        for index, s in enumerate(self.series):
            canvas.draw(s, index, x0, x1, y0, y1)
        axis_style = Style(dim=True)
        for row in range(rows_for_plot):
            if row == 0:
                label = labels[0]
            elif row == rows_for_plot - 1:
                label = labels[2]
            elif row == (rows_for_plot - 1) // 2 and rows_for_plot >= 5:
                label = labels[1]
            else:
                label = ""
            out.append(Segment(label.rjust(gutter - 1) + "┤" if label else " " * (gutter - 1) + "│", axis_style))
            out.extend(canvas.row_segments(row, [s.style for s in self.series]))
            out.append(Segment.line())
        left = _fmt_axis(x0, 0) + self.x_unit
        right = _fmt_axis(x1, 0) + self.x_unit
        middle = self.title
        space = plot_w - len(left) - len(right)
        if space >= len(middle) + 2:
            pad = space - len(middle)
            axis = left + " " * (pad // 2) + middle + " " * (pad - pad // 2) + right
        else:
            axis = left + " " * max(1, space) + right
        out.append(Segment(" " * gutter + axis[:plot_w], axis_style))
        out.append(Segment.line())
        for line in legend:
            used = 0
            for text, style in line:
                text = text[: max(0, width - used)]
                out.append(Segment(text, axis_style if style is None else _style(style)))
                used += len(text)
            out.append(Segment(" " * max(0, width - used)))
            out.append(Segment.line())
        return out

    def _legend_lines(self, width: int, gutter: int, height: int) -> list[list[tuple[str, Style | str | None]]]:
        """The legend in as few lines as fit the width: roomy when there is room, tighter, then wrapped.

        A label is never cut; only a pane too small for the plot itself loses legend lines.
        """
        labelled = [s for s in self.series if s.label]
        if not labelled:
            return []
        for mark, gap in (("━━ ", "   "), ("━ ", "  ")):
            items = [(mark, s.style, s.label) for s in labelled]
            total = sum(len(m) + len(label) for m, _, label in items) + len(gap) * (len(items) - 1)
            if gutter + total <= width:
                return [self._legend_line(items, gap, " " * gutter)]
        lines: list[list[tuple[str, Style | str | None, str]]] = [[]]
        used = 0
        for s in labelled:
            size = 2 + len(s.label)
            if lines[-1] and used + 1 + size > width:
                lines.append([])
                used = 0
            used += size + (1 if lines[-1] else 0)
            lines[-1].append(("━ ", s.style, s.label))
        room = max(0, height - 3)  # the plot keeps two rows and the x axis its one
        return [self._legend_line(items, " ", "") for items in lines[:room]]

    @staticmethod
    def _legend_line(items: list[tuple[str, Style | str | None, str]], gap: str,
                     indent: str) -> list[tuple[str, Style | str | None]]:
        line: list[tuple[str, Style | str | None]] = [(indent, None)] if indent else []
        for n, (mark, style, label) in enumerate(items):
            line += [(mark, style or ""), (label + (gap if n < len(items) - 1 else ""), None)]
        return line


def _finite(point: tuple[float, float]) -> bool:
    x, y = point
    return x is not None and y is not None and math.isfinite(x) and math.isfinite(y)


def _fmt_axis(value: float, digits: int) -> str:
    if digits == 0:
        if abs(value) >= 10000:
            return f"{value / 1000:.0f}k"
        return f"{value:.0f}"
    return f"{value:.{digits}f}"


class _Canvas:
    def __init__(self, width: int, height: int) -> None:
        self.width, self.height = width, height
        self.dots = [[0] * width for _ in range(height)]
        self.owner = [[-1] * width for _ in range(height)]

    def _set(self, px: int, py: int, owner: int) -> None:
        if 0 <= px < self.width * 2 and 0 <= py < self.height * 4:
            cx, cy = px // 2, py // 4
            self.dots[cy][cx] |= _DOT[py % 4][px % 2]
            self.owner[cy][cx] = owner

    def draw(self, series: Series, owner: int, x0: float, x1: float, y0: float, y1: float) -> None:
        w, h = self.width * 2, self.height * 4

        def to_px(x: float, y: float) -> tuple[int, int]:
            px = round((x - x0) / (x1 - x0) * (w - 1))
            py = round((y1 - min(max(y, y0), y1)) / (y1 - y0) * (h - 1))
            return px, py

        points = [to_px(x, y) for x, y in series.points if _finite((x, y))]
        if not points:
            return
        if series.mode == "points":
            for px, py in points:
                self._set(px, py, owner)
            return
        points = _reduce(points)
        prev = points[0]
        self._set(*prev, owner)
        for point in points[1:]:
            if series.mode == "steps":
                self._line(prev[0], prev[1], point[0], prev[1], owner)
                self._line(point[0], prev[1], point[0], point[1], owner)
            else:
                self._line(prev[0], prev[1], point[0], point[1], owner)
            prev = point

    def _line(self, xa: int, ya: int, xb: int, yb: int, owner: int) -> None:
        dx, dy = abs(xb - xa), -abs(yb - ya)
        sx, sy = (1 if xa < xb else -1), (1 if ya < yb else -1)
        err = dx + dy
        while True:
            self._set(xa, ya, owner)
            if xa == xb and ya == yb:
                return
            e2 = 2 * err
            if e2 >= dy:
                err += dy
                xa += sx
            if e2 <= dx:
                err += dx
                ya += sy

    def row_segments(self, row: int, styles: list[Style | str]) -> list[Segment]:
        segments: list[Segment] = []
        run_style: Style | str | None = None
        run_chars: list[str] = []
        for cx in range(self.width):
            bits = self.dots[row][cx]
            owner = self.owner[row][cx]
            style = styles[owner] if bits and owner >= 0 else ""
            char = chr(_BRAILLE_BASE + bits) if bits else " "
            if style != run_style and run_chars:
                segments.append(Segment("".join(run_chars), _style(run_style)))
                run_chars = []
            run_style = style
            run_chars.append(char)
        if run_chars:
            segments.append(Segment("".join(run_chars), _style(run_style)))
        return segments


def _style(style: Style | str | None) -> Style | None:
    if not style:
        return None
    return style if isinstance(style, Style) else Style.parse(style)


def _reduce(points: list[tuple[int, int]]) -> list[tuple[int, int]]:
    """Keep the first, min, max and last y of each dot column: the drawn line is unchanged, the work bounded."""
    if len(points) < 64:
        return points
    out: list[tuple[int, int]] = []
    column: list[tuple[int, int]] = []
    for point in points:
        if column and point[0] != column[0][0]:
            out.extend(_column_extremes(column))
            column = []
        column.append(point)
    out.extend(_column_extremes(column))
    return out


def _column_extremes(column: list[tuple[int, int]]) -> list[tuple[int, int]]:
    if len(column) <= 2:
        return column
    low = min(column, key=lambda p: p[1])
    high = max(column, key=lambda p: p[1])
    inner = sorted({low, high}, key=column.index)
    return [column[0], *[p for p in inner if p not in (column[0], column[-1])], column[-1]]


def loss_range(curves: Sequence[Sequence[tuple[float, float]]]) -> tuple[float, float] | None:
    """A y range that shows where curves are compared, not the first steps' huge losses.

    The top is the highest loss after the first 10% of each curve's points (early training falls off
    the top edge), the bottom the lowest loss seen.
    """
    tails = [y for c in curves for _, y in c[len(c) // 10:] if y is not None and math.isfinite(y)]
    everything = [y for c in curves for _, y in c if y is not None and math.isfinite(y)]
    if not everything:
        return None
    return min(everything), max(tails or everything)
