"""Screenshots of the main screens, compared with the accepted ones in __snapshots__/ (pytest-textual-snapshot).

The ledger is a synthetic night written through the Ledger API with every timestamp pinned, the wall clock
and the watcher's monotonic clock are pinned (a reading is taken on the first poll whatever the machine's
uptime), and the telemetry reading is a fixed sample, so a screenshot only changes when the UI does. After a
deliberate change to the UI: `python -m pytest tests/test_tui_snapshots.py --snapshot-update`, then look at
the new SVGs before committing them.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest

from supervisor.store.ledger import Ledger
from supervisor.store.lock import RunLock
from supervisor.tui.app import SupervisorApp
from supervisor.tui.widgets import ExperimentsTable
from tests.tui_support import CPU_SAMPLE, FIXED_START, GPU_SAMPLE, noise_phase, pin_times, synthetic_ledger

pytest.importorskip("pytest_textual_snapshot")


@pytest.fixture(autouse=True)
def utc():
    """Times on screen are local times: pin the zone too."""
    old = os.environ.get("TZ")
    os.environ["TZ"] = "UTC"
    time.tzset()
    yield
    if old is None:
        os.environ.pop("TZ", None)
    else:
        os.environ["TZ"] = old
    time.tzset()


@pytest.fixture
def night(tmp_path) -> Path:
    """A night with a trial half-way; this test holds the run's lock, as the loop would, so it reads as live."""
    run_dir = tmp_path / "journals" / "night"
    # Few enough trials that no table or transcript needs scrolling: scroll positions are timing-dependent.
    pin_times(synthetic_ledger(run_dir, trials=12, running=True))
    lock = RunLock(run_dir / "run.lock")
    lock.acquire("night")
    yield run_dir
    lock.release()


@pytest.fixture
def short_night(tmp_path) -> Path:
    """Five trials and one running: everything fits an 80x24 table without scrolling."""
    run_dir = tmp_path / "journals" / "night"
    pin_times(synthetic_ledger(run_dir, trials=5, running=True))
    lock = RunLock(run_dir / "run.lock")
    lock.acquire("night")
    yield run_dir
    lock.release()


def make_app(run_dir: Path, *, review: bool = False, sample: dict | None = None, theme: str | None = None,
             now: float | None = None):
    ledger = Ledger(run_dir / "ledger.sqlite", readonly=True)
    running = [t for t in ledger.trials() if t.status == "running"]
    started = running[0].started if running else 0.0
    now = started + 95.0 if now is None else now
    # One telemetry reading, on the first poll: the monotonic clock stands still at a machine just booted.
    return SupervisorApp(ledger, run_dir, review=review, telemetry=lambda: dict(sample or GPU_SAMPLE),
                         theme=theme, clock=lambda: now, telemetry_every_s=3600, monotonic=lambda: 5.0)


async def ready(pilot) -> None:
    """Wait for the first poll (and the telemetry reading, and a noise seed's curve) to be on screen."""
    app = pilot.app

    def polled() -> bool:
        view = app.view
        noise_ready = view.state != "noise" or (view.noise is not None and bool(view.noise.metrics))
        return bool(view.tag and (app.review or view.telemetry) and noise_ready)

    for _ in range(400):  # a bound on the waits, not a time: each is one pass of the event loop or a poll
        if polled():
            break
        await pilot.pause(0.05)
    assert polled(), "the first poll did not reach the screen"
    await settle(pilot)


async def settle(pilot) -> None:
    """Let layout, deferred renders and scrolling finish before the picture."""
    for _ in range(3):
        await pilot.wait_for_scheduled_animations()
        await pilot.pause(0.2)


@pytest.fixture
def noise_night(tmp_path) -> Path:
    """The first minutes of a run: seed 1 of the noise floor done, seed 2 half-way through its budget."""
    run_dir = tmp_path / "journals" / "night"
    pin_times(noise_phase(run_dir))
    lock = RunLock(run_dir / "run.lock")
    lock.acquire("night")
    yield run_dir
    lock.release()


def test_noise_phase_80x24(noise_night, snap_compare):
    app = make_app(noise_night, sample=CPU_SAMPLE, now=FIXED_START + 150.0)
    assert snap_compare(app, terminal_size=(80, 24), run_before=ready)


def test_noise_phase_130x40(noise_night, snap_compare):
    app = make_app(noise_night, sample=CPU_SAMPLE, now=FIXED_START + 150.0)
    assert snap_compare(app, terminal_size=(130, 40), run_before=ready)


def test_live_80x24(short_night, snap_compare):
    assert snap_compare(make_app(short_night), terminal_size=(80, 24), run_before=ready)


def test_live_large_terminal(night, snap_compare):
    assert snap_compare(make_app(night), terminal_size=(180, 50), run_before=ready)


def test_live_light_theme_without_gpu(night, snap_compare):
    app = make_app(night, sample=CPU_SAMPLE, theme="textual-light")
    assert snap_compare(app, terminal_size=(140, 40), run_before=ready)


def test_live_agent_tab(night, snap_compare):
    async def agent_tab(pilot) -> None:
        await ready(pilot)
        await pilot.press("2")
        await settle(pilot)

    assert snap_compare(make_app(night), terminal_size=(100, 30), run_before=agent_tab)


def test_review(night, snap_compare):
    async def select(pilot) -> None:
        await ready(pilot)
        screen = pilot.app.screen
        screen.query_one(ExperimentsTable).move_cursor(row=4, animate=False)
        for _ in range(200):
            if screen._detail_id == 5:
                break
            await pilot.pause(0.05)
        await settle(pilot)

    assert snap_compare(make_app(night, review=True), terminal_size=(140, 40), run_before=select)


def test_trial_screen(night, snap_compare):
    async def open_trial(pilot) -> None:
        await ready(pilot)
        pilot.app.open_trial(5)
        await pilot.pause(0.3)
        await settle(pilot)

    assert snap_compare(make_app(night, review=True), terminal_size=(100, 30), run_before=open_trial)


def test_journal_screen(night, snap_compare):
    async def open_journal(pilot) -> None:
        await ready(pilot)
        await pilot.press("j")
        await pilot.pause(0.3)
        await settle(pilot)

    assert snap_compare(make_app(night, review=True), terminal_size=(120, 36), run_before=open_journal)


def test_help_screen(night, snap_compare):
    async def open_help(pilot) -> None:
        await ready(pilot)
        await pilot.press("question_mark")
        await settle(pilot)

    assert snap_compare(make_app(night), terminal_size=(100, 30), run_before=open_help)
