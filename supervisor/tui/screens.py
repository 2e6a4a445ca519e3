"""The screens: live (watch and steer), review (read-only), a trial, the journal, help and the dialogs."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from rich.markdown import Markdown as RichMarkdown
from rich.text import Text
from textual import on, work
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, Vertical, VerticalScroll
from textual.screen import ModalScreen, Screen
from textual.timer import Timer
from textual.widgets import (
    Button,
    DataTable,
    Footer,
    Input,
    Label,
    Markdown,
    OptionList,
    Static,
    TabbedContent,
    TabPane,
)
from textual.widgets.option_list import Option
from textual.widgets.tabbed_content import ContentTab, ContentTabs

from supervisor.store.journal_files import journal_entry_markdown, reflection_markdown
from supervisor.store.ledger import Trial
from supervisor.tui import format as fmt
from supervisor.tui import state as st
from supervisor.tui.widgets import (
    DiffView,
    ExperimentsTable,
    FlaggedTable,
    HintLine,
    JournalPane,
    LiveReply,
    LossChart,
    StatusBar,
    TelemetryPane,
    TrajectoryChart,
    TranscriptView,
    journal_markdown_widget,
    palette,
    status_style,
)

if TYPE_CHECKING:
    from supervisor.tui.app import SupervisorApp

WIDE_MIN_WIDTH = 130
WIDE_MIN_HEIGHT = 34


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
            text = ("no trial yet: they start once the noise floor is measured" if self.app.view.state == "noise"
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


class LiveScreen(RunScreen):
    """The night as it happens: curves, telemetry, the agent, the experiments; pause, steer, stop."""

    BINDINGS = [
        Binding("p", "pause", "Pause/resume"),
        Binding("s", "steer", "Steer"),
        Binding("x", "stop_trial", "Stop trial"),
        # Not in the footer: enter opens a row too (the hint says so), and 80 columns fit help and quit then.
        Binding("o", "open_trial", "Open trial", show=False),
        Binding("j", "journal", "Journal"),
        Binding("f", "filter", "Filter"),
        Binding("v", "sort", "Sort", show=False),
    ]
    CONTROLS = ("pause", "steer", "stop_trial")  # nothing to do on a run that is over

    def __init__(self) -> None:
        super().__init__()
        self._wide: bool | None = None
        self._transcript: TranscriptView | None = None
        self._live_reply: LiveReply | None = None
        self._switching = False

    def compose(self) -> ComposeResult:
        yield StatusBar(id="status")
        with Horizontal(id="charts"):
            yield LossChart(id="loss")
            yield TrajectoryChart(id="trajectory")
            yield TelemetryPane(id="telemetry")
        with Horizontal(id="lower"):
            with TabbedContent(id="tabs", initial="experiments"):
                with TabPane("Experiments", id="experiments"):
                    yield ExperimentsTable(id="experiments-table")
                    yield HintLine(id="table-hint")
                with TabPane("Agent", id="agent"):
                    yield Vertical(id="agent-slot")
                with TabPane("Diff", id="diff"):
                    yield DiffView(empty="no trial yet", id="diff-view")
                with TabPane("Flagged", id="flagged"):
                    yield FlaggedTable(id="flagged-table")
                    yield HintLine(id="flagged-hint")
                with TabPane("Journal", id="journal"):
                    yield JournalPane(id="journal-pane")
            yield Vertical(id="side")
        yield Footer()

    async def on_mount(self) -> None:
        self.query_one("#trajectory").border_title = "val_bpb by trial"
        self.query_one("#side").border_title = "agent"
        self.query_one("#flagged-hint", HintLine).text = (
            "keeps whose gain is under the noise floor: re-test them with new seeds before building on them")
        self._hint()
        await self._arrange()
        if self.app.view.tag:  # a poll landed before this screen: show it (the transcript is already set)
            self.update_view(self.app.view, frozenset({st.RUN, st.STATUS, st.TRIAL, st.METRICS, st.REFERENCE,
                                                       st.JOURNAL, st.TELEMETRY, st.NOISE}))

    async def on_resize(self) -> None:
        await self._arrange()

    async def _arrange(self) -> None:
        """Wide terminals show the transcript beside the tabs; small ones give it a tab of its own."""
        wide = self.size.width >= WIDE_MIN_WIDTH and self.size.height >= WIDE_MIN_HEIGHT
        self._fit_footer()
        if wide == self._wide or self._switching:
            return
        self._switching = True
        try:
            self._wide = wide
            self.set_class(wide, "-wide")
            self.set_class(not wide, "-narrow")
            tabs = self.query_one(TabbedContent)
            if self._transcript is not None:
                await self._transcript.remove()
            if self._live_reply is not None:
                await self._live_reply.remove()
            self._transcript = TranscriptView(id="transcript")
            self._live_reply = LiveReply(id="live-reply")
            target = self.query_one("#side" if wide else "#agent-slot")
            await target.mount(self._transcript)
            await target.mount(self._live_reply)
            self._transcript.set_items(self.app.view.transcript)
            self._live_reply.show(self.app.view.live_reply)
            if wide:
                if tabs.active == "agent":
                    tabs.active = "experiments"
                tabs.hide_tab("agent")
            else:
                tabs.show_tab("agent")
        finally:
            self._switching = False

    def update_view(self, view: st.RunView, changed: frozenset[str]) -> None:
        self.query_one(StatusBar).show(view)
        if st.RUN in changed:
            self.refresh_bindings()  # a run that just ended loses its controls
        if st.STATUS in changed:
            self.table().show(view.trials)
            self.query_one(TrajectoryChart).show(view.trials, view.noise_floor)
            self.query_one(FlaggedTable).show(view.status.get("flagged", []), view.noise_floor)
            self._hint()
        if st.NOISE in changed:
            self.query_one(TrajectoryChart).show_noise(view.noise)
        if changed & {st.TRIAL, st.METRICS, st.REFERENCE, st.NOISE}:
            focus = view.focus
            if view.noise is not None and not view.running:
                self.query_one(LossChart).show_noise(view.noise)
            else:
                self.query_one(LossChart).show(focus.id if focus else None, view.focus_metrics,
                                               view.reference.id if view.reference else None,
                                               view.reference_metrics)
        if st.TRIAL in changed:
            focus = view.focus
            diff_view = self.query_one(DiffView)
            if focus is None:
                diff_view.show("", "no trial yet")
            else:
                diff_view.show(focus.diff, f"trial {focus.id} changed nothing")
                self.query_one(TabbedContent).get_tab("diff").label = f"Diff #{focus.id}"
        if changed & {st.TELEMETRY, st.METRICS, st.TRIAL}:
            self.query_one(TelemetryPane).show(view)
        if st.JOURNAL in changed:
            self.query_one(JournalPane).show(view)
        if st.TRANSCRIPT in changed and self._transcript is not None:
            self._transcript.append(view.new_transcript)
        if st.LIVE_REPLY in changed and self._live_reply is not None:
            self._live_reply.show(view.live_reply)

    # ---- controls -------------------------------------------------------------------------------------------
    def action_pause(self) -> None:
        self.app.toggle_pause()

    def action_steer(self) -> None:
        self.app.push_screen(SteerScreen(self.app.view.tag), self.app.send_steering)

    def action_stop_trial(self) -> None:
        view = self.app.view
        if not view.running or view.focus is None:
            self.notify("no trial is running", severity="warning", timeout=3)
            return
        trial = view.focus
        question = (f"Stop trial {trial.id} ({fmt.one_line(trial.description, 60)})?\n"
                    "It is recorded as aborted, not counted, and its change is reverted (the diff stays).")

        def answer(yes: bool | None) -> None:
            if yes:
                self.app.send_command("stop-trial")

        self.app.push_screen(ConfirmScreen(question, yes="Stop the trial", no="Keep it running"), answer)

    def check_action(self, action: str, parameters: tuple[object, ...]) -> bool | None:
        # A run that is over has no next turn or trial: its controls are neither shown nor run.
        return not (action in self.CONTROLS and self.app.view.over)

    def help_markdown(self) -> str:
        view = self.app.view
        agent = ("- **agent** (beside the tabs): what the agent says and the tools it calls; refusals in red, your "
                 "steering messages and when they reached the agent." if self._wide else
                 "- **Agent** tab: what the agent says and the tools it calls; refusals in red, your steering "
                 "messages and when they reached the agent.")
        tabs = ", ".join(label for _, label in self.visible_tabs())
        lines = [
            "# Panes", "",
            "- **loss**: the running trial's training loss over training seconds, with the curve of the keep it "
            "was built on behind it; while the noise floor is measured, the running seed's curve in front of "
            "the finished seeds'.",
            "- **val_bpb by trial**: keeps as the best-so-far staircase, discards as dim points, crashes as marks "
            "along the top, sub-floor (flagged) keeps highlighted; while the noise floor is measured, each seed "
            "and its result.",
            "- **telemetry**: GPU utilisation, MFU, VRAM used and peak, temperature (NVML); CPU and RAM when "
            "there is no GPU.",
            agent,
            f"- **tabs** ({tabs}): the experiments table, the current trial's diff, flagged keeps with their gain "
            "against the noise floor, and the latest journal entry and reflection. In the table, `home` and "
            "`end` go to the first and the last trial, and `end` keeps the newest one in view as trials finish.",
            "",
        ]
        if view.over:
            lines.append("This run is over (finished): there is nothing left to pause, steer or stop. "
                         f"`autoresearch review --tag {view.tag}` shows it read-only.")
        else:
            lines.append("The app is a client of the run: quitting it can leave the run going, and "
                         f"`autoresearch attach --tag {view.tag or 'TAG'}` brings you back.")
        return "\n".join(lines)


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
            self.table().show(view.trials)
            self.query_one(TrajectoryChart).show(view.trials, view.noise_floor)
            self.query_one(FlaggedTable).show(view.status.get("flagged", []), view.noise_floor)
            self.query_one("#plans-md", Markdown).update(plans_markdown(view.status.get("plans", [])))
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


def plans_markdown(plans: list[dict[str, Any]]) -> str:
    if not plans:
        return "*The plan queue is empty.*"
    lines = ["| # | status | idea | outcome |", "|---|---|---|---|"]
    for p in plans:
        outcome = ""
        if p["status"] == "dropped":
            outcome = f"dropped: {p.get('reason') or ''}"
        elif p["status"] == "tried" and p.get("trial_id"):
            outcome = f"tried in trial {p['trial_id']}"
        idea = fmt.one_line(p["idea"], 120).replace("|", "\\|")
        lines.append(f"| {p['id']} | {p['status']} | {idea} | {outcome.replace('|', '/')} |")
    return "\n".join(lines)


def trial_summary(t: Trial, c: dict[str, str], compact: bool = False) -> Text:
    text = Text()
    text.append(f"Trial {t.id} ", style="bold")
    text.append(f"{fmt.STATUS_SYMBOL.get(t.status, '')} {t.status}", style=status_style(t.status, c))
    if t.flagged:
        text.append(" ⚑ flagged", style=f"bold {c['accent']}")
    text.append(f"  val_bpb {fmt.num(t.val_bpb, 6)}")
    if t.delta is not None:
        text.append(f" ({fmt.signed(t.delta, 6)} vs parent {fmt.num(t.parent_val_bpb, 6)})",
                    style=c["success"] if t.delta < 0 else "dim")
    text.append(f"\n{fmt.one_line(t.description, 200)}", style="italic")
    if t.decision:
        text.append(f"\ndecision: {fmt.one_line(t.decision, 240)}", style="dim")
    if t.crash_reason:
        text.append(f"\ncrash: {fmt.one_line(t.crash_reason, 240)}", style=c["error"])
    parent = f"trial {t.parent_trial}" if t.parent_trial else "the starting point"
    text.append(f"\ncommit {t.short_commit or '—'} on {parent} ({(t.parent_commit or '')[:7] or '—'})", style="dim")
    if not compact:
        text.append(f" · budget {fmt.duration(t.budget_s)} · seed {t.seed if t.seed is not None else '—'}"
                    f" · started {fmt.stamp(t.started)}", style="dim")
    text.append(f"\nsteps {fmt.integer(t.num_steps)} · {fmt.rate(t.tokens_per_s)} tok/s · MFU "
                f"{fmt.percent(t.mfu_percent, 1)} · peak {fmt.mb(t.peak_vram_mb)} · "
                f"{fmt.num(t.num_params_m, 2)} M params · wall {fmt.duration(t.wall_seconds)}", style="dim")
    if not compact and t.extra_values:
        text.append(f"\nconfirmation runs: {', '.join(fmt.num(v, 6) for v in t.extra_values)}", style="dim")
    return text


# ---- a trial ------------------------------------------------------------------------------------------------------
class TrialScreen(Screen):
    """One trial: its numbers, its diff against its parent, the log's tail, its curve and its journal entry."""

    BINDINGS = [
        Binding("escape,q", "close", "Back"),
        Binding("left_square_bracket", "step(-1)", "Previous"),
        Binding("right_square_bracket", "step(1)", "Next"),
        Binding("1", "tab('trial-diff')", "Diff", show=False),
        Binding("2", "tab('trial-log')", "Log", show=False),
        Binding("3", "tab('trial-curve')", "Curve", show=False),
        Binding("4", "tab('trial-journal')", "Journal", show=False),
    ]

    app: SupervisorApp

    def __init__(self, trial_id: int) -> None:
        super().__init__()
        self.trial_id = trial_id
        self.trial: Trial | None = None

    def compose(self) -> ComposeResult:
        yield Static("loading…", id="trial-head")
        with TabbedContent(id="trial-tabs", initial="trial-diff"):
            with TabPane("Diff", id="trial-diff"):
                yield DiffView(empty="loading…", id="trial-diff-view")
            with TabPane("Log", id="trial-log"):
                with VerticalScroll():
                    yield Static(id="trial-log-text")
            with TabPane("Curve", id="trial-curve"):
                yield LossChart(id="trial-loss")
            with TabPane("Journal", id="trial-journal"):
                with VerticalScroll():
                    yield journal_markdown_widget(id="trial-journal-md")
        yield Footer()

    def on_mount(self) -> None:
        self._load(self.trial_id)

    @work(thread=True, exclusive=True, group="trial")
    def _load(self, trial_id: int) -> None:
        ledger = self.app.ledger
        trial = ledger.trial(trial_id)
        if trial is None:
            self.app.call_from_thread(self.notify, f"there is no trial {trial_id}", severity="warning")
            return
        metrics = ledger.metrics(trial_id)
        parent = ledger.metrics(trial.parent_trial) if trial.parent_trial else []
        journal = ledger.journal_for(trial_id)
        self.app.call_from_thread(self._show, trial, metrics, parent, journal)

    def _show(self, trial: Trial, metrics: list[dict[str, Any]], parent: list[dict[str, Any]],
              journal: dict[str, Any] | None) -> None:
        self.trial, self.trial_id = trial, trial.id
        self.query_one("#trial-head", Static).update(trial_summary(trial, palette(self.app)))
        self.query_one("#trial-diff-view", DiffView).show(trial.diff, f"trial {trial.id} changed nothing")
        log = trial.log_tail.strip() or ("the trial is still running: its log is in "
                                         f"{self.app.run_dir / 'trials' / f'{trial.id:04d}' / 'log.txt'}"
                                         if trial.status == "running" else "no log recorded")
        self.query_one("#trial-log-text", Static).update(Text(log))
        self.query_one("#trial-loss", LossChart).show(trial.id, metrics, trial.parent_trial, parent)
        self.query_one("#trial-journal-md", Markdown).update(
            journal_entry_markdown(trial, journal) if journal else
            "*No journal entry for this trial yet.*" if trial.kind == "trial" else "*Imported trial: no journal.*")

    def action_close(self) -> None:
        self.dismiss()

    def action_step(self, offset: int) -> None:
        ids = [t["id"] for t in self.app.view.trials]
        if self.trial_id not in ids:
            return
        index = ids.index(self.trial_id) + offset
        if 0 <= index < len(ids):
            self.trial_id = ids[index]
            self._load(self.trial_id)

    def action_tab(self, tab: str) -> None:
        self.query_one("#trial-tabs", TabbedContent).active = tab

    def update_view(self, view: st.RunView, changed: frozenset[str]) -> None:
        if self.trial is None or self.trial.status != "running":
            return
        if st.STATUS in changed:  # it may have finished: read its numbers, log and journal again
            self._load(self.trial_id)
        elif st.METRICS in changed and view.focus is not None and view.focus.id == self.trial_id:
            self.query_one("#trial-loss", LossChart).show(self.trial_id, view.focus_metrics,
                                                          view.reference.id if view.reference else None,
                                                          view.reference_metrics)


# ---- the journal ----------------------------------------------------------------------------------------------------
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
            t = trials.get(j["trial_id"])
            if t is None:
                continue
            md = journal_entry_markdown(t, j)
            items.append(JournalItem(f"j{j['id']}", j["created"], "entry",
                                     f"#{t.id} {t.status}{' ⚑' if t.flagged else ''} {fmt.one_line(t.description, 60)}",
                                     md, md.lower()))
        for r in ledger.reflections():
            md = reflection_markdown(r)
            items.append(JournalItem(f"r{r['id']}", r["created"], "reflection",
                                     f"Reflection {r['id']} (after #{r['after_trial']})", md, md.lower()))
        for s in ledger.steering():
            md = f"> **Steering from the person** ({fmt.stamp(s['created'])}): {s['message']}\n"
            items.append(JournalItem(f"s{s['id']}", s["created"], "steering",
                                     f"you: {fmt.one_line(s['message'], 50)}", md, md.lower()))
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


# ---- help and dialogs ----------------------------------------------------------------------------------------------
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
