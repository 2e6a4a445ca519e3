"""The app in a real terminal (tmux): `autoresearch run` starts the loop in its own process and opens the UI;
quitting can leave the night running; `attach` comes back and stops it. The screen is read with capture-pane.

Every wait here is on a condition (a text on the screen, a lock, a ledger row), never on a duration: the
ceilings only end a test that is truly stuck, and are generous so that a loaded machine passes. A failure
shows every window's screen and the end of the run's own log.
"""

from __future__ import annotations

import json
import os
import shlex
import shutil
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from supervisor.store.ledger import Ledger
from supervisor.store.lock import RunLock
from tests.loop_support import FAKE_SOURCE, PROJECT

pytestmark = [
    pytest.mark.skipif(shutil.which("tmux") is None, reason="tmux is not installed (.ci/run installs it)"),
    # Room for every ceiling below; none of them is reached unless something is broken.
    pytest.mark.timeout(1800),
]

CEILING_S = 300.0  # how long one step may take before the test calls it stuck
POLL_S = 0.25  # how often a condition is looked at again (the granularity of a wait, not an assumption)
LOG_TAIL_LINES = 40


class Tmux:
    """A private tmux server (its own socket), so tests never touch anyone's sessions."""

    def __init__(self, name: str, run_dir: Path | None = None) -> None:
        self.socket = f"autoresearch-test-{os.getpid()}-{name}"
        self.windows: list[str] = []
        self.run_dir = run_dir  # whose supervisor.log a failure shows

    def __call__(self, *args: str) -> str:
        return subprocess.run(["tmux", "-L", self.socket, *args], capture_output=True, text=True,
                              check=True).stdout

    def start(self, window: str, command: str, width: int = 100, height: int = 30) -> None:
        """Run a shell command in a new window. The window outlives its command (the shell then sleeps), so
        the last screen stays readable and the session stays up however long the next step takes."""
        command = f"{command}; exec sleep infinity"
        if not self.windows:
            self("new-session", "-d", "-s", "t", "-n", window, "-x", str(width), "-y", str(height), command)
        else:
            self("new-window", "-t", "t", "-n", window, command)
        self.windows.append(window)

    def screen(self, window: str) -> str:
        return self("capture-pane", "-p", "-t", f"t:{window}")

    def keys(self, window: str, *keys: str) -> None:
        self("send-keys", "-t", f"t:{window}", *keys)

    def wait_for(self, window: str, *texts: str, ceiling: float = CEILING_S) -> str:
        """The window's screen once every text is on it at the same time."""
        found: list[str] = []

        def shown() -> bool:
            found[:] = [self.screen(window)]
            return all(text in found[0] for text in texts)

        self.wait_until(shown, f"{texts} on the screen of {window!r}", ceiling)
        return found[0]

    def wait_until(self, condition: Callable[[], bool], what: str, ceiling: float = CEILING_S) -> None:
        deadline = time.monotonic() + ceiling
        while not condition():
            if time.monotonic() > deadline:
                raise AssertionError(f"waited {ceiling:.0f}s for {what}\n{self.report()}")
            time.sleep(POLL_S)

    def report(self) -> str:
        """Every window's screen and the end of the run's log: what a failure needs to be understood."""
        parts = []
        for window in self.windows:
            try:
                parts.append(f"--- screen of {window!r} ---\n{self.screen(window).rstrip()}")
            except subprocess.CalledProcessError as exc:
                parts.append(f"--- screen of {window!r}: unreadable ({exc.stderr.strip()}) ---")
        log = self.run_dir / "supervisor.log" if self.run_dir else None
        if log and log.exists():
            tail = log.read_text(errors="replace").splitlines()[-LOG_TAIL_LINES:]
            parts.append(f"--- end of {log} ---\n" + "\n".join(tail))
        return "\n".join(parts)

    def close(self) -> None:
        subprocess.run(["tmux", "-L", self.socket, "kill-server"], capture_output=True)


def _finished_trials(run_dir: Path) -> int:
    ledger = Ledger(run_dir / "ledger.sqlite", readonly=True)
    try:
        return len(ledger.finished_trials())
    finally:
        ledger.close()


def _run_state(run_dir: Path) -> str:
    ledger = Ledger(run_dir / "ledger.sqlite", readonly=True)
    try:
        return ledger.run_row().state
    finally:
        ledger.close()


def _slow_fake_trainer(tmp_path: Path) -> Path:
    """The stand-in trainer, streaming for a few seconds per trial so that a trial is on screen."""
    source = tmp_path / "source"
    shutil.copytree(FAKE_SOURCE, source)
    train = source / "trainer/train.py"
    text = train.read_text().replace("STEPS = 10", "STEPS = 40").replace("SLEEP = 0.05", "SLEEP = 0.1")
    train.write_text(text)
    return source


def test_run_opens_the_app_and_the_night_survives_it(tmp_path: Path) -> None:
    source = _slow_fake_trainer(tmp_path)
    cache = tmp_path / "cache"
    cache.mkdir()
    (cache / "manifest.json").write_text(json.dumps({"profile": "small"}))
    journals = tmp_path / "journals"
    run_dir = journals / "tm"
    lock_path = run_dir / "run.lock"
    # This interpreter, not whatever `python` the tmux shell finds first on its PATH.
    project = shlex.quote(str(PROJECT))
    cli = f"cd {project} && PYTHONPATH={project} {shlex.quote(sys.executable)} -m supervisor.cli.main"
    common = f"--journals {shlex.quote(str(journals))} --cache {shlex.quote(str(cache))}"
    # The budget and grace only bound a trial that hangs; 40 trials are far more than the test needs.
    run = (f"{cli} run --tag tm --trainer-dir {shlex.quote(str(source))} {common} "
           f"--budget 120 --grace 120 --max-trials 40; echo APP-EXITED $?")
    tmux = Tmux("run", run_dir)
    loop_pid = None
    try:
        tmux.start("main", run)
        # The loop runs in its own process, holding the run's lock; it writes its pid just after taking it.
        tmux.wait_until(lambda: (RunLock.holder(lock_path) or "").startswith("pid "),
                        "the loop to take the run's lock and write its pid")
        holder = RunLock.holder(lock_path)
        loop_pid = int(holder.split()[1])
        # The UI draws the run: its tag, a running trial, the experiments table, and the keys in the footer.
        tmux.wait_for("main", " tm ", "▶ trial", "Experiments", "val_bpb", "Pause/resume", "Steer")
        assert (run_dir / "supervisor.log").exists()
        # Quit, and leave the night running.
        tmux.keys("main", "q")
        tmux.wait_for("main", "still going", "Leave running")
        tmux.keys("main", "l")
        screen = tmux.wait_for("main", "APP-EXITED 0")
        assert "attach --tag tm" in screen, tmux.report()
        # The loop is another process, in its own session: it goes on, and finishes more trials.
        done = _finished_trials(run_dir)
        tmux.wait_until(lambda: _finished_trials(run_dir) > done, "another finished trial after the UI quit "
                                                                  "(the run stopped with the UI?)")
        assert RunLock.holder(lock_path) == holder, tmux.report()
        assert os.getsid(loop_pid) != os.getsid(0)
        # attach comes back to it; quitting with "stop" ends the run.
        attach = f"{cli} attach --tag tm --journals {shlex.quote(str(journals))}; echo ATTACH-EXITED $?"
        tmux.start("attach", attach)
        tmux.wait_for("attach", " tm ", "Experiments")
        tmux.keys("attach", "q")
        tmux.wait_for("attach", "still going")
        tmux.keys("attach", "s")
        tmux.wait_for("attach", "ATTACH-EXITED 0")
        tmux.wait_until(lambda: RunLock.holder(lock_path) is None, "the run to stop and release its lock")
        assert _run_state(run_dir) == "stopped", tmux.report()
        loop_pid = None
    finally:
        tmux.close()
        if loop_pid is not None:  # the loop this test started: end it, by its own pid
            try:
                os.kill(loop_pid, 15)
            except ProcessLookupError:
                pass
