"""What the live and review screens share: the experiments table, the tabs, how a trial is opened."""

from __future__ import annotations

from typing import TYPE_CHECKING

from textual import on
from textual.binding import Binding
from textual.screen import Screen
from textual.widgets import (
    Footer,
    TabbedContent,
)
from textual.widgets.tabbed_content import ContentTab, ContentTabs

from supervisor.core.types import RunState
from supervisor.tui import state as st
from supervisor.tui.screens.journal import JournalScreen
from supervisor.tui.widgets import (
    ExperimentsTable,
    HintLine,
)

if TYPE_CHECKING:
    from supervisor.tui.app import SupervisorApp


class RunScreen(Screen):
    """What the live and review screens share: the experiments table, the tabs and how a trial is opened."""

    # The number keys go to the tabs on screen, in order, whichever the layout hides.
    BINDINGS = [Binding(str(n), f"tab_number({n})", show=False) for n in range(1, 10)]

    app: SupervisorApp

    def visible_tabs(self) -> list[tuple[str, str]]:
        """(pane id, label) of each tab shown, left to right: what the number keys select."""
        tabs = self.query_one(TabbedContent).get_child_by_type(ContentTabs)
        return [(ContentTab.sans_prefix(tab.id or ""), tab.label_text) for tab in tabs.query(ContentTab)
                if not tab.has_class("-hidden")]

    def action_tab_number(self, number: int) -> None:
        visible = self.visible_tabs()
        if 1 <= number <= len(visible):
            self._show_tab(visible[number - 1][0])

    def key_help(self) -> list[tuple[str, str]]:
        """The number keys as they are now: one line for all the tabs on screen."""
        visible = self.visible_tabs()
        if not visible:
            return []
        keys = "1" if len(visible) == 1 else f"1–{len(visible)}"
        return [(keys, "Tabs: " + ", ".join(f"{n} {label}" for n, (_, label) in enumerate(visible, 1)))]

    def help_markdown(self) -> str:
        raise NotImplementedError

    def _fit_footer(self) -> None:
        # A narrow terminal cannot fit every key with the footer's usual spacing; compact, they do.
        self.query_one(Footer).compact = self.size.width < 120

    def table(self) -> ExperimentsTable:
        return self.query_one(ExperimentsTable)

    def update_view(self, view: st.RunView, changed: frozenset[str]) -> None:
        raise NotImplementedError

    def _hint(self) -> None:
        table = self.table()
        if not table.trials:  # nothing to filter or sort yet: say why the table is empty
            text = ("no trial yet: they start once the noise floor is measured" if self.app.view.state == RunState.NOISE
                    else "no trial yet")
        else:
            text = f"{table.describe()} · enter: open · f: filter · v: sort (click a header too)"
        self.query_one("#table-hint", HintLine).text = text

    def action_filter(self, name: str | None = None) -> None:
        table = self.table()
        if name:
            table.set_filter(name)
        else:
            table.cycle_filter()
        self._hint()
        self._show_tab("experiments")
        self.notify(f"showing {table.filter_name}", timeout=2)

    def action_sort(self, name: str | None = None) -> None:
        table = self.table()
        if name:
            table.set_sort(name)
        else:
            table.cycle_sort()
        self._hint()
        self._show_tab("experiments")

    def action_open_trial(self) -> None:
        trial_id = self.table().selected_trial_id()
        if trial_id is None and self.app.view.focus is not None:
            trial_id = self.app.view.focus.id
        if trial_id is None:
            self.notify("no trial yet", severity="warning", timeout=3)
            return
        self.app.open_trial(trial_id)

    def action_journal(self) -> None:
        self.app.push_screen(JournalScreen())

    def action_tab(self, tab: str) -> None:
        self._show_tab(tab)

    def _show_tab(self, tab: str) -> None:
        tabs = self.query_one(TabbedContent)
        tabs.active = tab
        pane = tabs.get_pane(tab)
        focusable = [w for w in pane.query("*") if w.focusable]
        if focusable:
            focusable[0].focus()

    @on(ExperimentsTable.Open)
    def _open(self, message: ExperimentsTable.Open) -> None:
        self.app.open_trial(message.trial_id)
