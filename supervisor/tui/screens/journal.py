"""The journal browser: every entry, reflection and steering message, filtered by words or kind."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from rich.text import Text
from textual import on, work
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, VerticalScroll
from textual.screen import Screen
from textual.timer import Timer
from textual.widgets import (
    Footer,
    Input,
    Markdown,
    OptionList,
)
from textual.widgets.option_list import Option

from supervisor.store.journal_files import journal_entry_markdown, reflection_markdown, steering_state_text
from supervisor.tui import format as fmt
from supervisor.tui.widgets import (
    journal_markdown_widget,
    palette,
)

if TYPE_CHECKING:
    from supervisor.tui.app import SupervisorApp


@dataclass(frozen=True)
class JournalItem:
    key: str
    time: float
    kind: str  # entry | reflection | steering | noise
    label: str
    markdown: str
    search: str


class JournalScreen(Screen):
    """Every journal entry, reflection and steering message, as markdown; filter by text or kind."""

    BINDINGS = [
        Binding("escape", "close", "Back"),
        Binding("slash", "focus_filter", "Filter"),
        Binding("e", "kind('entry')", "Entries"),
        Binding("r", "kind('reflection')", "Reflections"),
        Binding("a", "kind(None)", "All"),
    ]

    app: SupervisorApp

    def __init__(self) -> None:
        super().__init__()
        self.items: list[JournalItem] = []
        self.kind: str | None = None
        self.shown: list[JournalItem] = []
        self._filter_timer: Timer | None = None

    def compose(self) -> ComposeResult:
        yield Input(placeholder="filter: words in the entries (/ to focus, escape to go back)", id="journal-filter")
        with Horizontal(id="journal-body"):
            yield OptionList(id="journal-list")
            with VerticalScroll(id="journal-view"):
                yield journal_markdown_widget("loading…", id="journal-md")
        yield Footer()

    def on_mount(self) -> None:
        self._load()

    @work(thread=True, exclusive=True, group="journal")
    def _load(self) -> None:
        ledger = self.app.ledger
        trials = {t.id: t for t in ledger.trials()}
        items: list[JournalItem] = []
        for j in ledger.journal_entries():
            t = trials.get(j.trial_id)
            if t is None:
                continue
            md = journal_entry_markdown(t, j)
            items.append(JournalItem(f"j{j.id}", j.created, "entry",
                                     f"#{t.id} {t.status}{' ⚑' if t.flagged else ''} {fmt.one_line(t.description, 60)}",
                                     md, md.lower()))
        for r in ledger.reflections():
            md = reflection_markdown(r)
            items.append(JournalItem(f"r{r.id}", r.created, "reflection",
                                     f"Reflection {r.id} (after #{r.after_trial})", md, md.lower()))
        for s in ledger.steering():
            md = (f"> **Steering from the person** ({fmt.stamp(s.created)}): {s.message}\n"
                  f"> _{steering_state_text(s)}_\n")
            items.append(JournalItem(f"s{s.id}", s.created, "steering",
                                     f"you: {fmt.one_line(s.message, 50)}", md, md.lower()))
        items.sort(key=lambda item: item.time)
        self.app.call_from_thread(self._loaded, items)

    def _loaded(self, items: list[JournalItem]) -> None:
        self.items = items
        self._refilter()
        self.query_one(OptionList).focus()

    def _refilter(self) -> None:
        words = self.query_one("#journal-filter", Input).value.lower().split()
        self.shown = [i for i in self.items if (self.kind is None or i.kind == self.kind)
                      and all(w in i.search for w in words)]
        options = self.query_one(OptionList)
        options.clear_options()
        c = palette(self.app)
        style = {"entry": "", "reflection": f"bold {c['primary']}", "steering": c["accent"]}
        options.add_options([Option(Text(i.label, style=style.get(i.kind, "")), id=i.key) for i in self.shown])
        count = len(self.shown)
        kinds = {"entry": "entry", "reflection": "reflection", None: "item"}
        self.query_one("#journal-view").border_title = fmt.plural(count, kinds.get(self.kind, "item"))
        if self.shown:
            options.highlighted = count - 1
            self._show(self.shown[-1])
        else:
            self.query_one("#journal-md", Markdown).update("*Nothing matches.*" if self.items else
                                                           "*The journal is empty so far.*")

    def _show(self, item: JournalItem) -> None:
        self.query_one("#journal-md", Markdown).update(item.markdown)

    @on(OptionList.OptionHighlighted)
    def _highlighted(self, event: OptionList.OptionHighlighted) -> None:
        index = event.option_index
        if 0 <= index < len(self.shown):
            self._show(self.shown[index])

    @on(Input.Changed, "#journal-filter")
    def _filter_changed(self) -> None:
        # Wait for a pause in the typing: re-filtering a long night on every key would lag behind it.
        if self._filter_timer is not None:
            self._filter_timer.stop()
        self._filter_timer = self.set_timer(0.15, self._refilter)

    @on(Input.Submitted, "#journal-filter")
    def _filter_done(self) -> None:
        if self._filter_timer is not None:
            self._filter_timer.stop()
            self._filter_timer = None
        self._refilter()
        self.query_one(OptionList).focus()

    def action_focus_filter(self) -> None:
        self.query_one("#journal-filter", Input).focus()

    def action_kind(self, kind: str | None) -> None:
        self.kind = kind
        self._refilter()

    def action_close(self) -> None:
        if self.focused is self.query_one("#journal-filter") and self.query_one("#journal-filter", Input).value:
            self.query_one("#journal-filter", Input).value = ""
            return
        self.dismiss()
