"""The live screen: the night as it happens, with the controls to pause, steer and stop."""

from __future__ import annotations

from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, Vertical
from textual.widgets import (
    Footer,
    TabbedContent,
    TabPane,
)

from supervisor.core.commands import STOP_TRIAL
from supervisor.tui import format as fmt
from supervisor.tui import state as st
from supervisor.tui.screens.dialogs import ConfirmScreen, SteerScreen
from supervisor.tui.screens.run_screen import RunScreen
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
)

WIDE_MIN_WIDTH = 130
WIDE_MIN_HEIGHT = 34


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
            self.query_one(FlaggedTable).show(view.flagged, view.noise_floor)
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
                self.app.send_command(STOP_TRIAL)

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
