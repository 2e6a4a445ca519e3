"""What every pane shares: the theme's colours, re-rendering on a theme change, the hint line."""

from __future__ import annotations

from rich.console import RenderableType
from rich.text import Text
from textual.app import App
from textual.reactive import reactive
from textual.widgets import Static

from supervisor.core.types import TrialStatus


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


def status_style(status: TrialStatus, colors: dict[str, str]) -> str:
    return {TrialStatus.KEEP: colors["success"], TrialStatus.DISCARD: "dim", TrialStatus.CRASH: colors["error"],
            TrialStatus.ABORTED: "dim italic", TrialStatus.RUNNING: f"bold {colors['primary']}",
            TrialStatus.HELD: colors["warning"]}.get(status, "")


class ThemedMixin:
    """Re-render when the theme changes: colours come from the theme, not from fixed ANSI names."""

    def watch_theme(self) -> None:
        self.app.theme_changed_signal.subscribe(self, lambda _theme: self.on_theme_changed())

    def on_theme_changed(self) -> None:
        self.refresh()


class HintLine(Static):
    """A one-line hint under a pane (the table's filter and sort, how to open a trial)."""

    text = reactive("")

    def render(self) -> RenderableType:
        return Text(self.text, style="dim", no_wrap=True, overflow="ellipsis")
