"""The real Textual app driven by its pilot: every key binding and screen, on real ledgers.

The live-control test runs the real loop (offline agent, stand-in trainer, real git and subprocesses) in a
thread and steers it from the app, through the ledger, exactly as `autoresearch attach` does.
"""

from __future__ import annotations

import dataclasses
import io
import json
import shutil
import threading
import time
from pathlib import Path

import pytest
from rich.console import Console
from textual.command import CommandList, CommandPalette

from supervisor.agents.offline import OfflineAgent
from supervisor.run.loop import Supervisor
from supervisor.store.ledger import Ledger
from supervisor.store.lock import RunLock
from supervisor.trial.platform_info import telemetry_sample
from supervisor.tui.app import SupervisorApp
from supervisor.tui.screens import (
    ConfirmScreen,
    HelpScreen,
    JournalScreen,
    LiveScreen,
    QuitScreen,
    ReviewScreen,
    SteerScreen,
    TrialScreen,
)
from supervisor.tui.widgets import DiffView, ExperimentsTable, LossChart, TrajectoryChart, TranscriptView
from tests.loop_support import FAKE_SOURCE, fake_config
from tests.tui_support import CPU_SAMPLE, noise_phase, offline_run, synthetic_ledger

pytestmark = pytest.mark.asyncio


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory) -> Path:
    """A real run of 3 trials (offline agent, stand-in trainer); tests copy it before writing to it."""
    config = offline_run(tmp_path_factory.mktemp("tui-run"), tag="night", trials=3)
    return config.run_dir


def copy_run(run_dir: Path, tmp_path: Path) -> Path:
    target = tmp_path / "journals" / run_dir.name
    shutil.copytree(run_dir, target, ignore=shutil.ignore_patterns("workspace"))
    return target


def make_app(run_dir: Path, review: bool = False, **kwargs) -> SupervisorApp:
    ledger = Ledger(run_dir / "ledger.sqlite", readonly=review)
    return SupervisorApp(ledger, run_dir, review=review, telemetry=telemetry_sample, poll_s=0.2, **kwargs)


async def until(pilot, predicate, timeout: float = 20.0, what: str = "") -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        await pilot.pause(0.05)
    raise AssertionError(f"timed out waiting for {what or predicate}")


async def type_text(pilot, text: str) -> None:
    await pilot.press(*["space" if ch == " " else ch for ch in text])


async def run_from_palette(pilot, words: str, title: str) -> None:
    """Type `words` in the command palette and run the command once `title` is the highlighted result."""
    await pilot.press("ctrl+p")
    await until(pilot, lambda: isinstance(pilot.app.screen, CommandPalette), what="the palette")
    await type_text(pilot, words)
    results = pilot.app.screen.query_one(CommandList)

    def found() -> bool:
        index = results.highlighted
        return index is not None and title in str(results.get_option_at_index(index).prompt)

    await until(pilot, found, what=f"{title!r} in the palette")
    await pilot.press("enter")


def set_state(run_dir: Path, state: str) -> None:
    """E.g. "stopped": a run that a --resume continues, so its controls are offered (a finished one has none)."""
    ledger = Ledger(run_dir / "ledger.sqlite")
    try:
        ledger.set_state(state)
    finally:
        ledger.close()


def commands(run_dir: Path) -> list[dict]:
    ledger = Ledger(run_dir / "ledger.sqlite", readonly=True)
    try:
        return [dict(r) for r in ledger._query("SELECT * FROM commands ORDER BY id")]
    finally:
        ledger.close()


async def test_live_screen_shows_the_run(finished_run, tmp_path):
    run_dir = copy_run(finished_run, tmp_path)
    app = make_app(run_dir)
    async with app.run_test(size=(100, 30)) as pilot:
        await until(pilot, lambda: app.view.tag == "night" and app.view.telemetry, what="first poll")
        await pilot.pause()
        screen = app.screen
        assert isinstance(screen, LiveScreen) and screen.has_class("-narrow")
        table = screen.query_one(ExperimentsTable)
        assert table.row_count == 3
        assert [t.status for t in app.view.trials][0] == "keep"
        # Tool calls and the agent's words are in the transcript; the focus is the last trial with its diff.
        kinds = {item.kind for item in app.view.transcript}
        assert {"agent", "tool"} <= kinds
        assert app.view.focus is not None and app.view.focus.id == 3
        assert screen.query_one("#diff-view", DiffView).diff.startswith("diff --git")
        assert app.view.telemetry["kind"] in ("cpu", "gpu")  # the real sampler
        # Tabs by number; the Agent tab holds the transcript in a small terminal.
        for key, tab in (("2", "agent"), ("3", "diff"), ("4", "flagged"), ("5", "journal"), ("1", "experiments")):
            await pilot.press(key)
            await pilot.pause()
            assert screen.query_one("#tabs").active == tab
        assert screen.query_one("#agent-slot").query(TranscriptView)
        # Not live: pause and stop-trial are refused with a message, nothing reaches the ledger.
        await pilot.press("p")
        await pilot.press("x")
        await pilot.pause(0.3)
        assert commands(run_dir) == []
        # Quitting a run that is not going does not ask.
        await pilot.press("q")
    assert app.return_value is None


async def test_transcript_moves_beside_the_tabs_in_a_large_terminal(finished_run, tmp_path):
    run_dir = copy_run(finished_run, tmp_path)
    app = make_app(run_dir)
    async with app.run_test(size=(80, 24)) as pilot:
        await until(pilot, lambda: app.view.tag == "night")
        screen = app.screen
        assert screen.query_one("#agent-slot").query(TranscriptView)
        await pilot.resize_terminal(180, 50)
        await until(pilot, lambda: screen.has_class("-wide"), what="wide layout")
        await pilot.pause()
        assert screen.query_one("#side").query(TranscriptView)
        assert not screen.query_one("#agent-slot").query(TranscriptView)
        transcript = screen.query_one(TranscriptView)
        assert len(transcript.items) == len(app.view.transcript) > 0
        # The Agent tab is hidden (its pane is beside the tabs): the number keys follow the tabs on screen.
        assert [label for _, label in screen.visible_tabs()][:2] == ["Experiments", "Diff #3"]
        await pilot.press("2")
        await pilot.pause()
        assert screen.query_one("#tabs").active == "diff"


async def test_trial_screen_keys(finished_run, tmp_path):
    run_dir = copy_run(finished_run, tmp_path)
    app = make_app(run_dir)
    async with app.run_test(size=(100, 30)) as pilot:
        await until(pilot, lambda: app.view.tag == "night")
        await pilot.pause()
        table = app.screen.query_one(ExperimentsTable)
        table.focus()
        table.move_cursor(row=0)
        await pilot.press("enter")  # enter on a row opens it
        await until(pilot, lambda: isinstance(app.screen, TrialScreen) and app.screen.trial is not None)
        screen = app.screen
        assert screen.trial.id == 1  # the baseline: the unchanged script
        await pilot.press("right_square_bracket")
        await until(pilot, lambda: screen.trial.id == 2, what="next trial")
        assert screen.query_one("#trial-diff-view", DiffView).diff.startswith("diff --git")
        await pilot.press("left_square_bracket")
        await until(pilot, lambda: screen.trial.id == 1, what="previous trial")
        for key, tab in (("2", "trial-log"), ("3", "trial-curve"), ("4", "trial-journal"), ("1", "trial-diff")):
            await pilot.press(key)
            await pilot.pause()
            assert screen.query_one("#trial-tabs").active == tab
        journal = str(screen.query_one("#trial-journal-md").source)
        assert "Hypothesis" in journal and "Trial 1" in journal
        assert len(screen.query_one("#trial-loss").metrics) > 0  # the trial's curve from the ledger
        await pilot.press("escape")
        await pilot.pause()
        assert isinstance(app.screen, LiveScreen)
        await pilot.press("o")  # o opens the highlighted row too
        await until(pilot, lambda: isinstance(app.screen, TrialScreen))
        await pilot.press("q")  # q closes the trial screen, not the app
        await pilot.pause()
        assert isinstance(app.screen, LiveScreen)


async def test_journal_browser(finished_run, tmp_path):
    run_dir = copy_run(finished_run, tmp_path)
    app = make_app(run_dir)
    async with app.run_test(size=(120, 36)) as pilot:
        await until(pilot, lambda: app.view.tag == "night")
        await pilot.press("j")
        await until(pilot, lambda: isinstance(app.screen, JournalScreen) and app.screen.items)
        screen = app.screen
        entries = [i for i in screen.items if i.kind == "entry"]
        reflections = [i for i in screen.items if i.kind == "reflection"]
        assert len(entries) == 3
        assert len(screen.shown) == len(screen.items)
        await pilot.press("e")
        assert all(i.kind == "entry" for i in screen.shown) and len(screen.shown) == 3
        await pilot.press("r")
        assert len(screen.shown) == len(reflections)
        await pilot.press("a")
        await pilot.press("slash")
        await type_text(pilot, "baseline unmodified")
        await pilot.pause(0.3)
        assert screen.shown and all("baseline" in i.search and "unmodified" in i.search for i in screen.shown)
        assert len(screen.shown) < len(screen.items)
        await pilot.press("enter")  # back to the list
        await pilot.pause()
        await pilot.press("escape")
        await pilot.pause()
        assert isinstance(app.screen, LiveScreen)


async def test_filter_sort_help_theme_palette(finished_run, tmp_path):
    run_dir = copy_run(finished_run, tmp_path)
    set_state(run_dir, "stopped")
    app = make_app(run_dir)
    async with app.run_test(size=(120, 36)) as pilot:
        await until(pilot, lambda: app.view.tag == "night")
        await pilot.pause()
        table = app.screen.query_one(ExperimentsTable)
        statuses = [t.status for t in app.view.trials]
        await pilot.press("f")  # all -> keeps
        assert table.filter_name == "keeps" and table.row_count == statuses.count("keep")
        await pilot.press("f", "f")  # -> flagged -> crashes
        assert table.filter_name == "crashes" and table.row_count == statuses.count("crash")
        await pilot.press("f")  # -> graveyard
        assert table.row_count == sum(s in ("discard", "crash", "aborted") for s in statuses)
        await pilot.press("f")  # -> suspicious (held for review, or with guard findings)
        assert table.filter_name == "suspicious"
        await pilot.press("f")  # -> all
        assert table.filter_name == "all" and table.row_count == 3
        await pilot.press("v")  # sort by val_bpb, best first
        assert table.sort_name == "val_bpb"
        values = [t.val_bpb for t in table.visible_trials() if t.val_bpb is not None]
        assert values == sorted(values)
        await pilot.press("question_mark")
        await pilot.pause()
        assert isinstance(app.screen, HelpScreen)
        help_text = app.screen.text
        for key in ("Pause/resume", "Steer", "Stop trial", "Open trial", "Journal", "Filter"):
            assert key in help_text
        await pilot.press("escape")
        await pilot.pause()
        dark = app.current_theme.dark
        await pilot.press("t")
        await pilot.pause()
        assert app.current_theme.dark is not dark
        # The command palette offers the same actions.
        commands_seen = [c.title for c in app.get_system_commands(app.screen)]
        for title in ("Pause or resume the run", "Steer the agent", "Stop the current trial",
                      "Open the selected trial", "Journal browser", "Show flagged", "Sort by delta"):
            assert title in commands_seen
        await run_from_palette(pilot, "journal browser", "Journal browser")
        await until(pilot, lambda: isinstance(app.screen, JournalScreen), what="palette opened the journal")


async def test_review_is_read_only(finished_run, tmp_path):
    run_dir = copy_run(finished_run, tmp_path)
    app = make_app(run_dir, review=True)
    assert app.control is None
    async with app.run_test(size=(140, 40)) as pilot:
        await until(pilot, lambda: app.view.tag == "night")
        await pilot.pause()
        screen = app.screen
        assert isinstance(screen, ReviewScreen) and screen.has_class("-wide")
        for key in ("p", "s", "x"):
            await pilot.press(key)
        await pilot.pause(0.3)
        assert isinstance(app.screen, ReviewScreen)  # no steer box, no confirmation
        table = screen.query_one(ExperimentsTable)
        table.focus()
        table.move_cursor(row=1)
        await until(pilot, lambda: screen._detail_id == 2, what="detail pane")
        assert screen.query_one("#detail-diff", DiffView).diff.startswith("diff --git")
        for key, tab in (("2", "flagged"), ("3", "plans"), ("1", "experiments")):
            await pilot.press(key)
            await pilot.pause()
            assert screen.query_one("#tabs").active == tab
        await pilot.press("q")
    assert app.return_value is None
    assert commands(run_dir) == []


async def test_quit_can_leave_a_live_run_running(finished_run, tmp_path):
    run_dir = copy_run(finished_run, tmp_path)
    lock = RunLock(run_dir / "run.lock")
    lock.acquire("night")  # this test process stands for a live supervisor
    try:
        app = make_app(run_dir)
        async with app.run_test(size=(100, 30)) as pilot:
            await until(pilot, lambda: app.view.live)
            await pilot.press("q")
            await pilot.pause()
            assert isinstance(app.screen, QuitScreen)
            assert "`autoresearch run --tag night --resume`" in str(app.screen.query_one("#dialog-text").content)
            await pilot.press("escape")  # cancel: back to the run
            await pilot.pause()
            assert isinstance(app.screen, LiveScreen)
            await pilot.press("q")
            await pilot.pause()
            await pilot.press("l")
        assert app.return_value == "leave"
        assert commands(run_dir) == []
    finally:
        lock.release()


def _slow_source(tmp_path: Path) -> Path:
    source = tmp_path / "source"
    shutil.copytree(FAKE_SOURCE, source)
    train = source / "trainer/train.py"
    train.write_text(train.read_text().replace("STEPS = 10", "STEPS = 400").replace("SLEEP = 0.05", "SLEEP = 0.05"))
    return source


async def test_live_controls_reach_the_loop(tmp_path):
    """Pause, stop-trial, steer, resume and stop, sent from the app, act on a real loop in another thread."""
    config = fake_config(tmp_path, tag="live", source_dir=_slow_source(tmp_path), budget_s=60.0, grace_s=30.0,
                         max_trials=10)
    supervisor = Supervisor(config, OfflineAgent())
    result: dict[str, str] = {}
    thread = threading.Thread(target=lambda: result.setdefault("end", supervisor.run()), daemon=True)
    thread.start()
    ledger = Ledger(config.run_dir / "ledger.sqlite")
    app = SupervisorApp(ledger, config.run_dir, telemetry=telemetry_sample, poll_s=0.2)
    try:
        async with app.run_test(size=(120, 36)) as pilot:
            await until(pilot, lambda: app.view.running and app.view.focus_metrics, what="a running trial")
            trial_id = app.view.focus.id
            await pilot.press("p")  # pause: takes effect after the current turn
            await pilot.press("x")
            await pilot.pause()
            assert isinstance(app.screen, ConfirmScreen)
            await pilot.press("y")
            await until(pilot, lambda: ledger.trial(trial_id).status == "aborted", what="trial aborted")
            await until(pilot, lambda: app.view.state == "paused", what="paused")
            await pilot.press("s")
            await pilot.pause()
            assert isinstance(app.screen, SteerScreen)
            await type_text(pilot, "try shorter windows")
            await pilot.press("enter")
            await until(pilot, lambda: any(i.kind == "steering" for i in app.view.transcript), what="steering shown")
            await pilot.press("p")  # resume: the agent's next turn gets the message
            await until(pilot, lambda: any(i.kind == "delivered" for i in app.view.transcript), timeout=30,
                        what="steering delivered")
            assert ledger.steering()[0].message == "try shorter windows"
            assert ledger.steering()[0].delivered is not None
            await until(pilot, lambda: app.view.running, timeout=30, what="next trial")
            await pilot.press("q")
            await pilot.pause()
            assert isinstance(app.screen, QuitScreen)
            await pilot.press("s")
        assert app.return_value == "stop"
        thread.join(timeout=30)
        assert result.get("end") == "stopped"
        sent = [c["command"] for c in commands(config.run_dir)]
        assert sent == ["pause", "stop-trial", "steer", "resume", "stop"]
        assert all(c["consumed"] is not None for c in commands(config.run_dir))
    finally:
        supervisor.stop()
        thread.join(timeout=30)
        ledger.close()


async def test_synthetic_night_with_a_running_trial(tmp_path):
    """A long ledger with a trial mid-way: curves, the running row, flagged keeps and cost-free token counts."""
    run_dir = tmp_path / "journals" / "big"
    synthetic_ledger(run_dir, trials=60, running=True)
    app = make_app(run_dir)
    async with app.run_test(size=(160, 48)) as pilot:
        await until(pilot, lambda: app.view.tag == "big")
        await pilot.pause()
        screen = app.screen
        assert screen.has_class("-wide")
        assert app.view.focus.status == "running" and app.view.reference is not None
        assert len(screen.query_one("#loss").metrics) == 60 and len(screen.query_one("#loss").reference) == 120
        assert screen.query_one("#flagged-table").row_count == len(app.view.flagged) > 0
        assert "tokens" in (app.view.cost or "")
        assert any(i.kind == "refused" for i in app.view.transcript)
        table = screen.query_one(ExperimentsTable)
        assert table.row_count == 61
        assert table.selected_trial_id() == 61  # the newest trial is followed


async def test_streaming_reply_shows_while_the_agent_writes(tmp_path):
    """The loop writes a model's reply to agent_reply.live as it streams; the app shows it until the turn lands."""
    from supervisor.tui.widgets import LiveReply

    run_dir = tmp_path / "journals" / "stream"
    synthetic_ledger(run_dir, trials=3, running=True)
    lock = RunLock(run_dir / "run.lock")
    lock.acquire("stream")  # a live supervisor (the streaming file means nothing without one)
    try:
        app = make_app(run_dir)
        async with app.run_test(size=(160, 48)) as pilot:
            await until(pilot, lambda: app.view.tag == "stream")
            live = app.screen.query_one(LiveReply)
            assert not live.display
            (run_dir / "agent_reply.live").write_text("I will try a longer warmdown because the loss")
            await until(pilot, lambda: live.display, what="the streaming reply")
            assert "longer warmdown" in str(live.render())
            (run_dir / "agent_reply.live").unlink()  # the turn was recorded
            await until(pilot, lambda: not live.display, what="the reply to be cleared")
    finally:
        lock.release()


async def test_table_home_end_jump_rows_and_end_follows_new_trials(tmp_path):
    """home/end go to the first and last trial (not sideways), and end resumes following new trials."""
    run_dir = tmp_path / "journals" / "big"
    synthetic_ledger(run_dir, trials=60)
    app = make_app(run_dir, review=True)
    async with app.run_test(size=(160, 48)) as pilot:
        await until(pilot, lambda: app.view.tag == "big")
        table = app.screen.query_one(ExperimentsTable)
        table.focus()
        await pilot.pause()
        assert table.selected_trial_id() == 60
        trials = list(table.trials)

        def one_more() -> None:
            newest = dataclasses.replace(trials[-1], id=trials[-1].id + 1)
            trials.append(newest)
            table.show(list(trials))

        for key in ("home", "end", "ctrl+home", "ctrl+end"):
            await pilot.press(key)
            await pilot.pause()
            assert table.selected_trial_id() == (1 if "home" in key else len(trials)), key
        await pilot.press("up")  # the person looks at an older trial: a new one must not move the cursor
        one_more()
        await pilot.pause()
        assert table.selected_trial_id() == len(trials) - 2
        await pilot.press("end")
        one_more()
        await pilot.pause()
        assert table.selected_trial_id() == len(trials) == 62


async def test_review_loads_the_detail_once_the_cursor_rests(tmp_path):
    """A held key passes many rows: the detail pane reads and draws only the one the cursor stops on."""
    run_dir = tmp_path / "journals" / "big"
    synthetic_ledger(run_dir, trials=60)
    app = make_app(run_dir, review=True)
    async with app.run_test(size=(160, 48)) as pilot:
        await until(pilot, lambda: app.view.tag == "big")
        screen = app.screen
        table = screen.query_one(ExperimentsTable)
        await until(pilot, lambda: screen._detail_id == 60, what="the newest trial's detail")
        read: list[int] = []
        original = app.ledger.trial
        app.ledger.trial = lambda trial_id: read.append(trial_id) or original(trial_id)
        for _ in range(10):  # back to back, as a held key delivers them: each move posts a RowHighlighted
            table.action_cursor_up()
        await until(pilot, lambda: screen._detail_id == 50, what="the detail of the row it rests on")
        assert read == [50]
        assert screen.query_one("#detail").border_title.startswith("trial 50 ")


def screen_text(app: SupervisorApp) -> str:
    """The screen as a person reads it: every cell's character, line by line."""
    console = Console(width=app.size.width, height=app.size.height, file=io.StringIO(), force_terminal=True,
                      color_system="truecolor", record=True, legacy_windows=False, safe_box=False)
    console.print(app.screen._compositor.render_update(full=True, screen_stack=app._background_screens))
    return console.export_text()


def _night(tmp_path: Path, trials: int = 5, **kwargs) -> Path:
    run_dir = tmp_path / "journals" / "night"
    synthetic_ledger(run_dir, trials=trials, **kwargs)
    return run_dir


@pytest.mark.parametrize(("size", "review", "tabs"), [
    ((130, 40), False, ["experiments", "diff", "flagged", "journal"]),      # the transcript is beside the tabs
    ((80, 24), False, ["experiments", "agent", "diff", "flagged", "journal"]),
    ((130, 40), True, ["experiments", "flagged", "plans"]),
    ((80, 24), True, ["experiments", "flagged", "plans"]),
])
async def test_number_keys_select_the_visible_tabs_in_order(tmp_path, size, review, tabs):
    run_dir = _night(tmp_path)
    app = make_app(run_dir, review=review)
    async with app.run_test(size=size) as pilot:
        await until(pilot, lambda: app.view.tag == "night")
        screen = app.screen
        await until(pilot, lambda: [pane for pane, _ in screen.visible_tabs()] == tabs, what="the layout's tabs")
        for number in [2, *range(len(tabs), 0, -1)]:
            await pilot.press(str(number))
            await until(pilot, lambda n=number: screen.query_one("#tabs").active == tabs[n - 1], what=f"tab {number}")
        await pilot.press(str(len(tabs) + 1))  # no such tab: nothing moves
        await pilot.pause()
        assert screen.query_one("#tabs").active == tabs[0]
        # The help says which number is which tab, as they are now.
        keys = dict(app._key_help(screen))
        assert keys[f"1–{len(tabs)}"].startswith("Tabs: 1 Experiments, 2 ")


async def test_the_palette_has_the_tab_commands(tmp_path):
    run_dir = _night(tmp_path)
    app = make_app(run_dir)
    async with app.run_test(size=(130, 40)) as pilot:
        await until(pilot, lambda: app.view.tag == "night" and app.screen.has_class("-wide"))
        titles = [c.title for c in app.get_system_commands(app.screen)]
        assert {"Go to the Experiments tab", "Go to the Flagged tab", "Go to the Journal tab"} <= set(titles)
        assert "Go to the Agent tab" not in titles  # hidden in this layout: the transcript is beside the tabs
        await run_from_palette(pilot, "go to the flagged tab", "Go to the Flagged tab")
        await until(pilot, lambda: app.screen.query_one("#tabs").active == "flagged", what="the palette's tab")
        await pilot.resize_terminal(80, 24)
        await until(pilot, lambda: app.screen.has_class("-narrow"))
        assert "Go to the Agent tab" in [c.title for c in app.get_system_commands(app.screen)]


async def test_the_placeholder_goes_when_the_agent_speaks(tmp_path):
    run_dir = tmp_path / "journals" / "night"
    noise_phase(run_dir)  # the first minutes: the agent has said nothing yet
    app = make_app(run_dir)
    async with app.run_test(size=(80, 24)) as pilot:
        await until(pilot, lambda: app.view.tag == "night")
        await pilot.press("2")  # the Agent tab: the transcript is drawn once it has a size
        transcript = app.screen.query_one(TranscriptView)

        def shown() -> str:
            return "\n".join(line.text for line in transcript.lines)

        await until(pilot, lambda: "has not said anything yet" in shown(), what="the placeholder")
        ledger = Ledger(run_dir / "ledger.sqlite")
        try:
            ledger.add_turn("agent", "I will start with the learning rate.")
        finally:
            ledger.close()
        await until(pilot, lambda: "learning rate" in shown(), what="the agent's words")
        assert "has not said anything yet" not in shown()


async def test_attach_on_a_finished_run_says_it_is_over(finished_run, tmp_path):
    """No steering "delivered on --resume" that a resume of a finished run would never deliver: no controls."""
    run_dir = copy_run(finished_run, tmp_path)
    app = make_app(run_dir)
    notes: list[str] = []
    notify = app.notify
    app.notify = lambda message, **kwargs: notes.append(str(message)) or notify(message, **kwargs)
    async with app.run_test(size=(100, 30)) as pilot:
        await until(pilot, lambda: app.view.tag == "night")
        assert app.view.over and app.view.state == "finished"
        await until(pilot, lambda: any("is over" in note for note in notes), what="the notice")
        await until(pilot, lambda: "the run is over" in screen_text(app), what="the status line")
        for key in ("s", "p", "x"):
            await pilot.press(key)
        await pilot.pause()
        assert isinstance(app.screen, LiveScreen)  # no steer box, no confirmation
        titles = [c.title for c in app.get_system_commands(app.screen)]
        assert "Steer the agent" not in titles and "Pause or resume the run" not in titles
        assert "Journal browser" in titles
        footer = screen_text(app).splitlines()[-1]
        assert "Steer" not in footer and "Pause" not in footer and "Quit" in footer
        await pilot.press("question_mark")
        await until(pilot, lambda: isinstance(app.screen, HelpScreen))
        assert "Steer" not in app.screen.text and "is over" in app.screen.text
        await pilot.press("escape")
        app.send_steering("try shorter windows")  # the palette or anything else cannot send one either
        await pilot.pause()
    assert commands(run_dir) == []
    ledger = Ledger(run_dir / "ledger.sqlite", readonly=True)
    try:
        assert ledger.steering() == []
    finally:
        ledger.close()


async def test_empty_columns_leave_their_room_to_the_description(finished_run, tmp_path):
    """On a CPU no trial has MFU or VRAM: those columns go and the description gets the width."""
    run_dir = copy_run(finished_run, tmp_path)
    app = make_app(run_dir)
    async with app.run_test(size=(130, 40)) as pilot:
        await until(pilot, lambda: app.view.tag == "night")
        table = app.screen.query_one(ExperimentsTable)
        await until(pilot, lambda: table.row_count == 3)
        assert "MFU" not in table.shown_columns and "VRAM" not in table.shown_columns
        description = table.columns["description"]
        await until(pilot, lambda: description.width > 24, what="the description's width")
        others = sum(c.get_render_width(table) for key, c in table.columns.items() if key != "description")
        assert others + description.get_render_width(table) <= table.size.width  # no sideways scroll needed
        # A trial with MFU and VRAM: the columns come back; the description takes what is left.
        trials = list(app.view.trials)
        trials[-1] = dataclasses.replace(trials[-1], mfu_percent=41.5, peak_vram_mb=40_000.0)
        table.show(trials)
        await pilot.pause()
        assert "MFU" in table.shown_columns and "VRAM" in table.shown_columns and table.row_count == 3
        assert "41.5" in [str(cell) for cell in table.get_row(str(trials[-1].id))]


async def test_a_long_description_is_whole_when_scrolled(tmp_path):
    """Too narrow for the description: the table scrolls sideways and the whole description is there."""
    run_dir = _night(tmp_path, trials=3)  # GPU trials: MFU and VRAM take their room
    app = make_app(run_dir, review=True)
    async with app.run_test(size=(80, 24)) as pilot:
        await until(pilot, lambda: app.view.tag == "night")
        table = app.screen.query_one(ExperimentsTable)
        await until(pilot, lambda: table.row_count == 3)
        longest = max(len(t.description) for t in app.view.trials)
        await until(pilot, lambda: table.columns["description"].width >= longest, what="the whole description")
        assert table.fixed_columns == 1  # the trial's id stays in view while scrolled


async def test_noise_phase_shows_each_seed(tmp_path):
    """The first minute of a run: which seed runs, its live curve, each finished seed's val_bpb and steps."""
    run_dir = tmp_path / "journals" / "night"
    noise_phase(run_dir, repeats=2, done=0)
    app = make_app(run_dir)
    async with app.run_test(size=(80, 24)) as pilot:
        await until(pilot, lambda: app.view.noise is not None and app.view.noise.metrics, what="the noise seed")
        screen = app.screen
        await until(pilot, lambda: "seed 1 of 2" in screen_text(app), what="the seed on screen")
        loss = screen.query_one(LossChart)
        assert loss.border_title == "loss · seed 1 of 2" and len(loss.noise.metrics) == 20
        text = screen_text(app)
        assert "no metrics yet" not in text and "seed 2 waiting" in text
        assert "they start once the noise floor is measured" in text
        # Seed 1 ends, seed 2 starts: seed 1's val_bpb and steps are shown, its curve stays behind.
        progress = run_dir / "noise" / "progress.json"
        data = json.loads(progress.read_text())
        data["seeds"][0].update(status="ok", val_bpb=1.8342, num_steps=1204)
        data["seeds"].append({"index": 2, "seed": 2001, "status": "running", "started": 0.0, "dir": "noise/x-1"})
        progress.write_text(json.dumps(data))
        await until(pilot, lambda: "seed 2 of 2" in screen_text(app), what="the second seed")
        seeds = str(screen.query_one(TrajectoryChart).render())
        assert "seed 1 val_bpb 1.8342 (1,204 steps)" in seeds and "seed 2 ▶" in seeds
        assert 1 in loss.noise.curves
        # The floor is measured: back to the trials.
        ledger = Ledger(run_dir / "ledger.sqlite")
        try:
            ledger.set_state("running")
        finally:
            ledger.close()
        await until(pilot, lambda: app.view.noise is None and loss.noise is None, what="the end of the noise")
        assert screen.query_one(TrajectoryChart).noise is None


async def test_panes_fit_a_small_terminal(tmp_path):
    """At 80x24 the RAM reading and the chart legends are whole."""
    run_dir = _night(tmp_path, running=True)
    app = SupervisorApp(Ledger(run_dir / "ledger.sqlite", readonly=True), run_dir, poll_s=0.2,
                        telemetry=lambda: dict(CPU_SAMPLE))
    async with app.run_test(size=(80, 24)) as pilot:
        await until(pilot, lambda: app.view.telemetry and app.view.trials, what="the first poll")
        await until(pilot, lambda: "6.0/24.0 GB" in screen_text(app), what="the RAM reading")
        text = screen_text(app)
        for label in ("━ discard", "━ best keep", f"#{app.view.focus.id}"):
            assert label in text, label


async def test_help_describes_what_is_on_screen(tmp_path):
    run_dir = _night(tmp_path)
    app = make_app(run_dir, review=True)
    async with app.run_test(size=(80, 24)) as pilot:
        await until(pilot, lambda: app.view.tag == "night")
        await pilot.press("question_mark")
        await until(pilot, lambda: isinstance(app.screen, HelpScreen))
        assert "right pane" not in app.screen.text  # no detail pane at this size
        assert "Tabs: Experiments, Flagged, Plans" in app.screen.text
        await pilot.press("escape")
        await pilot.resize_terminal(140, 40)
        await until(pilot, lambda: app.screen.has_class("-wide"))
        await pilot.press("question_mark")
        await until(pilot, lambda: isinstance(app.screen, HelpScreen))
        assert "right pane shows the highlighted trial's diff" in app.screen.text
