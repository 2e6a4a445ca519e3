"""The review screen: a run read-only, with the highlighted trial's diff beside the table."""

from __future__ import annotations

from textual import on, work
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, Vertical, VerticalScroll
from textual.timer import Timer
from textual.widgets import (
    DataTable,
    Footer,
    Markdown,
    Static,
    TabbedContent,
    TabPane,
)

from supervisor.core.types import Plan, PlanStatus, Trial
from supervisor.tui import format as fmt
from supervisor.tui import state as st
from supervisor.tui.screens.run_screen import RunScreen
from supervisor.tui.screens.trial import trial_summary
from supervisor.tui.widgets import (
    DiffView,
    ExperimentsTable,
    FlaggedTable,
    HintLine,
    StatusBar,
    TrajectoryChart,
    journal_markdown_widget,
    palette,
)

# Longer than a key's autorepeat interval (~33 ms), short enough that one keypress feels immediate.
DETAIL_DELAY_S = 0.05


class ReviewScreen(RunScreen):
    """The morning after, or a look at a live run without touching it: read-only."""

    BINDINGS = [
        Binding("o", "open_trial", "Open trial"),
        Binding("j", "journal", "Journal"),
        Binding("f", "filter", "Filter"),
        Binding("v", "sort", "Sort"),
    ]

    def __init__(self) -> None:
        super().__init__()
        self._detail_id: int | None = None
        self._detail_timer: Timer | None = None

    def compose(self) -> ComposeResult:
        yield StatusBar(review=True, id="status")
        yield TrajectoryChart(id="trajectory")
        with Horizontal(id="lower"):
            with TabbedContent(id="tabs", initial="experiments"):
                with TabPane("Experiments", id="experiments"):
                    yield ExperimentsTable(id="experiments-table")
                    yield HintLine(id="table-hint")
                with TabPane("Flagged", id="flagged"):
                    yield FlaggedTable(id="flagged-table")
                with TabPane("Plans", id="plans"):
                    with VerticalScroll():
                        yield journal_markdown_widget(id="plans-md")
            with Vertical(id="detail"):
                yield Static(id="detail-head")
                yield DiffView(empty="select a trial", id="detail-diff")
        yield Footer()

    def on_mount(self) -> None:
        self.query_one("#trajectory").border_title = "val_bpb by trial"
        self.query_one("#detail").border_title = "trial"
        self._hint()
        self._arrange()
        if self.app.view.tag:
            self.update_view(self.app.view, frozenset({st.RUN, st.STATUS, st.NOISE}))
        self.table().focus()

    def on_resize(self) -> None:
        self._arrange()

    def _arrange(self) -> None:
        wide = self.size.width >= 110
        self._fit_footer()
        self.set_class(wide, "-wide")
        self.set_class(not wide, "-narrow")

    def update_view(self, view: st.RunView, changed: frozenset[str]) -> None:
        self.query_one(StatusBar).show(view)
        if st.STATUS in changed:
            self.table().show(view.trials, scale_labels(view.status))
            self.query_one(TrajectoryChart).show(view.trials, view.noise_floor)
            self.query_one(FlaggedTable).show(view.flagged, view.noise_floor)
            self.query_one("#plans-md", Markdown).update(plans_markdown(view.plans))
            self._hint()
        if st.NOISE in changed:
            self.query_one(TrajectoryChart).show_noise(view.noise)

    def help_markdown(self) -> str:
        detail = ("The right pane shows the highlighted trial's diff against its parent. " if self.has_class("-wide")
                  else "")
        tabs = ", ".join(label for _, label in self.visible_tabs())
        return ("# Review\n\nRead-only: nothing here can change the run. The table lists every trial; filter it "
                "(all, keeps, flagged, crashes, graveyard) and sort it (click a header or `v`). " + detail +
                "Enter or `o` opens the highlighted trial: its diff, log, curve and journal entry. In the table, "
                "`home` and `end` go to the first and the last trial; on a live run `end` keeps the newest in view."
                f"\n\nTabs: {tabs}.")

    @on(DataTable.RowHighlighted, "#experiments-table")
    def _highlighted(self, event: DataTable.RowHighlighted) -> None:
        if event.row_key.value is None or not self.has_class("-wide"):
            return
        # A held key moves the cursor ~30 times a second: load the detail once the cursor rests, not for
        # every row it passes (that doubled the CPU of scrolling; benchmarks/ui_cost.py).
        if self._detail_timer is not None:
            self._detail_timer.stop()
        trial_id = int(event.row_key.value)
        self._detail_timer = self.set_timer(DETAIL_DELAY_S, lambda: self._load_detail(trial_id))

    @work(thread=True, exclusive=True, group="detail")
    def _load_detail(self, trial_id: int) -> None:
        trial = self.app.ledger.trial(trial_id)
        if trial is not None:
            self.app.call_from_thread(self._show_detail, trial)

    def _show_detail(self, trial: Trial) -> None:
        self._detail_id = trial.id
        self.query_one("#detail").border_title = f"trial {trial.id} · diff against its parent"
        self.query_one("#detail-head", Static).update(trial_summary(trial, palette(self.app), compact=True))
        self.query_one("#detail-diff", DiffView).show(trial.diff, f"trial {trial.id} changed nothing")


def scale_labels(status: dict) -> dict[int, str]:
    """Each keep's scale-transfer label, from `status --json` (the last scale it was checked at)."""
    labels: dict[int, str] = {}
    for record in status.get("trials") or []:
        transfer = record.get("transfer") if isinstance(record, dict) else None
        if isinstance(transfer, dict) and transfer:
            labels[int(record["id"])] = str(list(transfer.values())[-1])
    return labels


def plans_markdown(plans: list[Plan]) -> str:
    if not plans:
        return "*The plan queue is empty.*"
    lines = ["| # | status | idea | outcome |", "|---|---|---|---|"]
    for p in plans:
        outcome = ""
        if p.status == PlanStatus.DROPPED:
            outcome = f"dropped: {p.reason or ''}"
        elif p.status == PlanStatus.TRIED and p.trial_id:
            outcome = f"tried in trial {p.trial_id}"
        idea = fmt.one_line(p.idea, 120).replace("|", "\\|")
        lines.append(f"| {p.id} | {p.status} | {idea} | {outcome.replace('|', '/')} |")
    return "\n".join(lines)
