"""The trial screen: one trial's numbers, diff, log tail, curve and journal entry."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from rich.text import Text
from textual import work
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import VerticalScroll
from textual.screen import Screen
from textual.widgets import (
    Footer,
    Markdown,
    Static,
    TabbedContent,
    TabPane,
)

from supervisor.core.paths import RunPaths
from supervisor.core.types import JournalEntry, Trial, TrialKind, TrialStatus
from supervisor.store.journal_files import journal_entry_markdown
from supervisor.tui import format as fmt
from supervisor.tui import state as st
from supervisor.tui.state import TRIAL_LOG_FILE
from supervisor.tui.widgets import (
    DiffView,
    LossChart,
    journal_markdown_widget,
    palette,
    status_style,
)

if TYPE_CHECKING:
    from supervisor.tui.app import SupervisorApp


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
    if not compact and t.audit_val_bpb is not None:  # the person's to see; the agent never is shown it
        gap = f" (gap {fmt.signed(t.audit_val_bpb - t.val_bpb, 6)})" if t.val_bpb is not None else ""
        text.append(f"\naudit split: val_bpb {fmt.num(t.audit_val_bpb, 6)}{gap} · not shown to the agent", style="dim")
    elif not compact and t.audit_note:
        text.append(f"\naudit split: {fmt.one_line(t.audit_note, 240)}", style="dim")
    return text


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
              journal: JournalEntry | None) -> None:
        self.trial, self.trial_id = trial, trial.id
        self.query_one("#trial-head", Static).update(trial_summary(trial, palette(self.app)))
        self.query_one("#trial-diff-view", DiffView).show(trial.diff, f"trial {trial.id} changed nothing")
        log = trial.log_tail.strip() or ("the trial is still running: its log is in "
                                         f"{RunPaths(self.app.run_dir).trial_dir(trial.id) / TRIAL_LOG_FILE}"
                                         if trial.status == TrialStatus.RUNNING else "no log recorded")
        self.query_one("#trial-log-text", Static).update(Text(log))
        self.query_one("#trial-loss", LossChart).show(trial.id, metrics, trial.parent_trial, parent)
        self.query_one("#trial-journal-md", Markdown).update(
            journal_entry_markdown(trial, journal) if journal else
            "*No journal entry for this trial yet.*" if trial.kind == TrialKind.TRIAL else
            "*Imported trial: no journal.*")

    def action_close(self) -> None:
        self.dismiss()

    def action_step(self, offset: int) -> None:
        ids = [t.id for t in self.app.view.trials]
        if self.trial_id not in ids:
            return
        index = ids.index(self.trial_id) + offset
        if 0 <= index < len(ids):
            self.trial_id = ids[index]
            self._load(self.trial_id)

    def action_tab(self, tab: str) -> None:
        self.query_one("#trial-tabs", TabbedContent).active = tab

    def update_view(self, view: st.RunView, changed: frozenset[str]) -> None:
        if self.trial is None or self.trial.status != TrialStatus.RUNNING:
            return
        if st.STATUS in changed:  # it may have finished: read its numbers, log and journal again
            self._load(self.trial_id)
        elif st.METRICS in changed and view.focus is not None and view.focus.id == self.trial_id:
            self.query_one("#trial-loss", LossChart).show(self.trial_id, view.focus_metrics,
                                                          view.reference.id if view.reference else None,
                                                          view.reference_metrics)
