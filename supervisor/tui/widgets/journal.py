"""The journal pane: the latest journal entry and reflection, as markdown."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from markdown_it import MarkdownIt
from textual.containers import VerticalScroll
from textual.widget import Widget
from textual.widgets import Markdown

from supervisor.store.journal_files import journal_entry_markdown, reflection_markdown
from supervisor.tui.state import (
    RunView,
)


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
