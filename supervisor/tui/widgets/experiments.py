"""The trial tables: every trial (sortable, filterable) and the flagged keeps against the noise floor."""

from __future__ import annotations

from typing import Any

from rich.text import Text
from textual.binding import Binding
from textual.message import Message
from textual.widgets import DataTable

from supervisor.core.types import Trial, TrialStatus
from supervisor.tui import format as fmt
from supervisor.tui.state import (
    FILTERS,
    SORTS,
    filter_trials,
    sort_trials,
)
from supervisor.tui.widgets.common import ThemedMixin, palette, status_style

DESCRIPTION_LIMIT = 300  # characters of a trial's description the table holds
HELD_SYMBOL = "⊘"  # held for review: judged, not kept, because the guards found something
UNSANDBOXED_MARK = "[unsandboxed] "


def status_cell(t: Trial, c: dict[str, str]) -> Text:
    """A trial's status with its symbol; held trials in the warning colour (the reason is in the trial's pane)."""
    if t.status == TrialStatus.HELD:
        return Text(f"{HELD_SYMBOL} {t.status}", style=f"bold {c['warning']}")
    return Text(f"{fmt.STATUS_SYMBOL.get(t.status, ' ')} {t.status}", style=status_style(t.status, c))


def description_cell(t: Trial, c: dict[str, str]) -> Text:
    """The description; a trial that ran without the sandbox says so first."""
    text = Text(no_wrap=True, overflow="ellipsis")
    if t.unsandboxed:
        text.append(UNSANDBOXED_MARK, style=f"bold {c['warning']}")
    text.append(fmt.one_line(t.description or "", DESCRIPTION_LIMIT))
    return text


class ExperimentsTable(ThemedMixin, DataTable):
    """Every trial: id, status, val_bpb, delta, steps, MFU, VRAM, flag, description. Sortable, filterable."""

    # (key, header, width). The description's width is what the others leave (_fit_description).
    COLUMNS = (("id", "id", 4), ("status", "status", 9), ("val_bpb", "val_bpb", 7), ("delta", "delta", 8),
               ("steps", "steps", 5), ("MFU", "MFU", 4), ("VRAM", "VRAM", 7), ("flag", "⚑", 2),
               ("scale", "scale", 6), ("description", "description", 24))
    # The scale-transfer label of a keep (`autoresearch transfer`), shown once a keep has one (the review screen).
    SCALE_WORDS = {"scale-stable": "stable", "scale-bound": "bound", "unknown": "?"}
    # Shown only once a trial has the number (a CPU reports neither): the description gets their room.
    OPTIONAL = {"MFU": "mfu_percent", "VRAM": "peak_vram_mb"}  # column -> the Trial attribute it shows
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
        self.trials: list[Trial] = []
        self.filter_name = "all"
        self.sort_name = "id"
        self.sort_reverse = False
        self._keys: list[str] = []
        self._cells: dict[str, tuple] = {}
        self._follow = True  # keep the newest trial in view until the person moves the cursor
        self.shown_columns: tuple[str, ...] = ()
        self.scale_labels: dict[int, str] = {}  # trial id -> its transfer label at the last scale checked

    def on_mount(self) -> None:
        self.watch_theme()
        self._set_columns()

    def _wanted_columns(self) -> tuple[str, ...]:
        # Judged on every trial, not the filtered ones, so a filter does not make columns come and go.
        # A zero is no reading either (a trainer on a CPU may print peak_vram_mb: 0.0).
        return tuple(key for key, _, _ in self.COLUMNS
                     if (key != "scale" or self.scale_labels)
                     and (key not in self.OPTIONAL or any(getattr(t, self.OPTIONAL[key]) for t in self.trials)))

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
        longest = max((len(description_cell(t, {"warning": ""})) for t in self.trials), default=0)
        width = left if left >= self.MIN_DESCRIPTION else max(self.MIN_DESCRIPTION, longest)
        if width != column.width:
            column.width = width
            self._require_update_dimensions = True
            self._clear_caches()  # rows already drawn at the old width are drawn again
            self.refresh()
        self.call_after_refresh(self._keep_cursor_in_view)

    def show(self, trials: list[Trial], scale_labels: dict[int, str] | None = None) -> None:
        self.trials = trials
        self.scale_labels = scale_labels or {}
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

    def visible_trials(self) -> list[Trial]:
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

    def _row(self, t: Trial, c: dict[str, str]) -> tuple:
        delta = t.delta
        flag = ("⚑" if t.flagged else "") + ("!" if t.suspicions else "")
        cells = {
            "id": Text(str(t.id), justify="right"),
            "status": status_cell(t, c),
            "val_bpb": Text(fmt.num(t.val_bpb, 5), justify="right"),
            "delta": Text(fmt.signed(delta, 5), justify="right",
                          style=(c["success"] if delta is not None and delta < 0 else "dim")),
            "steps": Text(fmt.integer(t.num_steps, ""), justify="right"),
            "MFU": Text(fmt.num(t.mfu_percent, 1, ""), justify="right"),
            "VRAM": Text(fmt.mb(t.peak_vram_mb, ""), justify="right"),
            "flag": Text(flag, style=f"bold {c['accent']}" if t.flagged else f"bold {c['error']}"),
            "scale": self._scale_cell(t, c),
            "description": description_cell(t, c),
        }
        return tuple(cells[key] for key in self.shown_columns)

    def _scale_cell(self, t: Trial, c: dict[str, str]) -> Text:
        label = self.scale_labels.get(t.id)
        style = {"scale-stable": c["success"], "scale-bound": f"bold {c['error']}"}.get(label or "", "dim")
        return Text(self.SCALE_WORDS.get(label or "", ""), style=style)

    def _rebuild(self, force: bool = False) -> None:
        if not self.is_mounted:
            return
        selected = self.selected_trial_id()
        at_end = self.row_count == 0 or self.cursor_row >= self.row_count - 1
        if self._wanted_columns() != self.shown_columns:
            self._set_columns()  # MFU or VRAM appeared: every row is drawn again with them
            force = True
        c = palette(self.app)
        rows = [(str(t.id), self._row(t, c)) for t in self.visible_trials()]
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


class FlaggedTable(ThemedMixin, DataTable):
    """Keeps whose gain is under the noise floor, with the gain against the floor."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(cursor_type="row", **kwargs)
        self.flagged_rows: list[Trial] = []
        self.floor: float | None = None

    def on_mount(self) -> None:
        self.watch_theme()
        for name, width in (("id", 5), ("val_bpb", 9), ("gain", 9), ("floor", 8), ("gain/floor", 10),
                            ("description", None)):
            self.add_column(name, key=name, width=width)

    def on_theme_changed(self) -> None:
        self.show(self.flagged_rows, self.floor, force=True)

    def show(self, flagged: list[Trial], floor: float | None, force: bool = False) -> None:
        if not force and flagged == self.flagged_rows and floor == self.floor:
            return
        self.flagged_rows, self.floor = flagged, floor
        if not self.is_mounted:
            return
        c = palette(self.app)
        self.clear()
        for t in flagged:
            gain = -t.delta if t.delta is not None else None
            ratio = gain / floor if gain is not None and floor else None
            self.add_row(
                Text(str(t.id), justify="right"),
                Text(fmt.num(t.val_bpb, 5), justify="right"),
                Text(fmt.num(gain, 5), justify="right", style=c["accent"]),
                Text(fmt.num(floor, 4), justify="right", style="dim"),
                Text(f"{ratio:.2f}×" if ratio is not None else "—", justify="right", style=f"bold {c['accent']}"),
                Text(fmt.one_line(t.description or "", 200)),
                key=str(t.id),
            )

    def on_data_table_row_selected(self, event: DataTable.RowSelected) -> None:
        event.stop()
        if event.row_key.value is not None:
            self.post_message(ExperimentsTable.Open(int(event.row_key.value)))
