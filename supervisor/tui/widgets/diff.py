"""A unified diff, syntax-highlighted."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from rich.syntax import Syntax
from rich.text import Text
from textual.containers import VerticalScroll
from textual.widget import Widget
from textual.widgets import Static

from supervisor.tui.widgets.common import ThemedMixin


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
