"""The real Textual app driven by its pilot: every key binding and screen, on real ledgers.

The live-control test runs the real loop (offline agent, stand-in trainer, real git and subprocesses) in a
thread and steers it from the app, through the ledger, exactly as `autoresearch attach` does.
"""

from __future__ import annotations

import shutil
import threading
import time
from pathlib import Path

import pytest

from supervisor.agents.offline import OfflineAgent
from supervisor.ledger import Ledger
from supervisor.lock import RunLock
from supervisor.loop import Supervisor
from supervisor.platform_info import telemetry_sample
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
from supervisor.tui.widgets import DiffView, ExperimentsTable, TranscriptView
from tests.loop_support import FAKE_SOURCE, fake_config
from tests.tui_support import offline_run, synthetic_ledger

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


def commands(run_dir: Path) -> list[dict]:
    ledger = Ledger(run_dir / "ledger.sqlite", readonly=True)
    try:
        return [dict(r) for r in ledger._query("SELECT * FROM commands ORDER BY id")]  # noqa: SLF001
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
        assert [t["status"] for t in app.view.trials][0] == "keep"
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
        await pilot.press("2")  # the Agent key focuses the transcript beside the tabs
        await pilot.pause()
        assert app.focused is transcript


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
    app = make_app(run_dir)
    async with app.run_test(size=(120, 36)) as pilot:
        await until(pilot, lambda: app.view.tag == "night")
        await pilot.pause()
        table = app.screen.query_one(ExperimentsTable)
        statuses = [t["status"] for t in app.view.trials]
        await pilot.press("f")  # all -> keeps
        assert table.filter_name == "keeps" and table.row_count == statuses.count("keep")
        await pilot.press("f", "f")  # -> flagged -> crashes
        assert table.filter_name == "crashes" and table.row_count == statuses.count("crash")
        await pilot.press("f")  # -> graveyard
        assert table.row_count == sum(s in ("discard", "crash", "aborted") for s in statuses)
        await pilot.press("f")  # -> all
        assert table.row_count == 3
        await pilot.press("v")  # sort by val_bpb, best first
        assert table.sort_name == "val_bpb"
        values = [t["val_bpb"] for t in table.visible_trials() if t["val_bpb"] is not None]
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
        await pilot.press("ctrl+p")
        await pilot.pause()
        await type_text(pilot, "journal browser")
        await pilot.pause(0.5)
        await pilot.press("enter")
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
        await until(pilot, lambda: screen._detail_id == 2, what="detail pane")  # noqa: SLF001
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
            assert ledger.steering()[0]["message"] == "try shorter windows"
            assert ledger.steering()[0]["delivered"] is not None
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
        assert screen.query_one("#flagged-table").row_count == len(app.view.status["flagged"]) > 0
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
            newest = dict(trials[-1], id=trials[-1]["id"] + 1)
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
        await until(pilot, lambda: screen._detail_id == 60, what="the newest trial's detail")  # noqa: SLF001
        read: list[int] = []
        original = app.ledger.trial
        app.ledger.trial = lambda trial_id: read.append(trial_id) or original(trial_id)
        for _ in range(10):  # back to back, as a held key delivers them: each move posts a RowHighlighted
            table.action_cursor_up()
        await until(pilot, lambda: screen._detail_id == 50, what="the detail of the row it rests on")  # noqa: SLF001
        assert read == [50]
        assert screen.query_one("#detail").border_title.startswith("trial 50 ")
