"""The modal screens: help, steering, confirmation and the quit question."""

from __future__ import annotations

from collections.abc import Iterable

from rich.markdown import Markdown as RichMarkdown
from textual import on
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, Vertical, VerticalScroll
from textual.screen import ModalScreen
from textual.widgets import (
    Button,
    Input,
    Label,
    Static,
)


class HelpScreen(ModalScreen[None]):
    """Every key of the screen underneath, and what the panes show."""

    BINDINGS = [Binding("escape,q,question_mark,f1", "close", "Close")]

    def __init__(self, keys: Iterable[tuple[str, str]], panes: str) -> None:
        super().__init__()
        self.keys = list(keys)
        self.panes = panes  # what the screen underneath shows, in its mode and at its size

    def compose(self) -> ComposeResult:
        lines = ["# Keys", "", "| key | does |", "|---|---|"]
        lines += [f"| `{k}` | {d} |" for k, d in self.keys]
        lines += ["", "Every action is also in the command palette (`ctrl+p`).", "", self.panes]
        self.text = "\n".join(lines)
        with Vertical(id="help-box"):
            with VerticalScroll(id="help-body"):
                yield Static(RichMarkdown(self.text), id="help-text")
            yield Button("Close (esc)", id="help-close", variant="primary")

    @on(Button.Pressed, "#help-close")
    def action_close(self) -> None:
        self.dismiss()


class SteerScreen(ModalScreen[str | None]):
    """Type a message for the agent; it is delivered at the agent's next turn."""

    BINDINGS = [Binding("escape", "cancel", "Cancel")]

    def __init__(self, tag: str) -> None:
        super().__init__()
        self.tag = tag

    def compose(self) -> ComposeResult:
        with Vertical(id="dialog"):
            yield Label(f"Steer the agent of {self.tag}", id="dialog-title")
            yield Static("The message reaches the agent at its next turn (after the current trial, if one is "
                         "running) and stays in the journal.", id="dialog-text")
            yield Input(placeholder="e.g. stop tuning learning rates, try shorter attention windows", id="steer-input")
            with Horizontal(id="dialog-buttons"):
                yield Button("Send", id="send", variant="primary")
                yield Button("Cancel", id="cancel")

    def on_mount(self) -> None:
        self.query_one(Input).focus()

    @on(Input.Submitted)
    @on(Button.Pressed, "#send")
    def _send(self) -> None:
        text = self.query_one(Input).value.strip()
        if not text:
            self.notify("type a message first (escape cancels)", severity="warning", timeout=3)
            return
        self.dismiss(text)

    @on(Button.Pressed, "#cancel")
    def action_cancel(self) -> None:
        self.dismiss(None)


class ConfirmScreen(ModalScreen[bool]):
    BINDINGS = [Binding("escape,n", "no", "No"), Binding("y", "yes", "Yes")]

    def __init__(self, question: str, yes: str = "Yes", no: str = "No") -> None:
        super().__init__()
        self.question, self.yes, self.no = question, yes, no

    def compose(self) -> ComposeResult:
        with Vertical(id="dialog"):
            yield Static(self.question, id="dialog-text")
            with Horizontal(id="dialog-buttons"):
                yield Button(f"{self.yes} (y)", id="yes", variant="error")
                yield Button(f"{self.no} (n)", id="no", variant="primary")

    def on_mount(self) -> None:
        self.query_one("#no", Button).focus()

    @on(Button.Pressed, "#yes")
    def action_yes(self) -> None:
        self.dismiss(True)

    @on(Button.Pressed, "#no")
    def action_no(self) -> None:
        self.dismiss(False)


class QuitScreen(ModalScreen[str | None]):
    """Quitting the app while the run goes on: stop the run, or leave it running?"""

    BINDINGS = [Binding("l", "answer('leave')", "Leave running"), Binding("s", "answer('stop')", "Stop the run"),
                Binding("escape,c", "answer(None)", "Cancel")]

    def __init__(self, tag: str) -> None:
        super().__init__()
        self.tag = tag

    def compose(self) -> ComposeResult:
        with Vertical(id="dialog"):
            yield Label(f"Quit: the run {self.tag} is still going", id="dialog-title")
            yield Static("Leave it running (come back with `autoresearch attach --tag "
                         f"{self.tag}`), or stop it? A stop records the current trial as aborted; "
                         f"`autoresearch run --tag {self.tag} --resume` continues later.", id="dialog-text")
            with Horizontal(id="dialog-buttons"):
                yield Button("Leave running (l)", id="leave", variant="primary")
                yield Button("Stop the run (s)", id="stop", variant="error")
                yield Button("Cancel (esc)", id="cancel")

    def on_mount(self) -> None:
        self.query_one("#leave", Button).focus()

    @on(Button.Pressed)
    def _pressed(self, event: Button.Pressed) -> None:
        self.action_answer(None if event.button.id == "cancel" else event.button.id)

    def action_answer(self, answer: str | None) -> None:
        self.dismiss(answer)
