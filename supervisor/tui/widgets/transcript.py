"""The transcript: what the agent says and the tools it calls, and its reply while it streams."""

from __future__ import annotations

from typing import Any

from rich.text import Text
from textual.widgets import RichLog, Static

from supervisor.tui import format as fmt
from supervisor.tui.state import (
    TranscriptItem,
    tool_input_summary,
)
from supervisor.tui.widgets.common import ThemedMixin, palette


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
