"""The app in a real terminal (tmux): `autoresearch run` starts the loop in its own process and opens the UI;
quitting can leave the night running; `attach` comes back and stops it. The screen is read with capture-pane.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import time

import pytest

from supervisor.ledger import Ledger
from supervisor.lock import RunLock
from tests.loop_support import FAKE_SOURCE, PROJECT

pytestmark = pytest.mark.skipif(shutil.which("tmux") is None, reason="tmux is not installed (.ci/run installs it)")


class Tmux:
    """A private tmux server (its own socket), so tests never touch anyone's sessions."""

    def __init__(self, name: str) -> None:
        self.socket = f"autoresearch-test-{os.getpid()}-{name}"

    def __call__(self, *args: str) -> str:
        return subprocess.run(["tmux", "-L", self.socket, *args], capture_output=True, text=True,
                              check=True).stdout

    def start(self, window: str, command: str, width: int = 100, height: int = 30) -> None:
        if window == "main":
            self("new-session", "-d", "-s", "t", "-n", window, "-x", str(width), "-y", str(height), command)
        else:
            self("new-window", "-t", "t", "-n", window, command)

    def screen(self, window: str) -> str:
        return self("capture-pane", "-p", "-t", f"t:{window}")

    def keys(self, window: str, *keys: str) -> None:
        self("send-keys", "-t", f"t:{window}", *keys)

    def wait_for(self, window: str, *texts: str, timeout: float = 60.0) -> str:
        deadline = time.monotonic() + timeout
        screen = ""
        while time.monotonic() < deadline:
            screen = self.screen(window)
            if all(t in screen for t in texts):
                return screen
            time.sleep(0.25)
        raise AssertionError(f"{texts} never appeared on the screen:\n{screen}")

    def close(self) -> None:
        subprocess.run(["tmux", "-L", self.socket, "kill-server"], capture_output=True)


def _wait(predicate, timeout: float = 60.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.2)
    return False


def test_run_opens_the_app_and_the_night_survives_it(tmp_path):
    source = tmp_path / "source"
    shutil.copytree(FAKE_SOURCE, source)
    train = source / "trainer/train.py"
    train.write_text(train.read_text().replace("STEPS = 10", "STEPS = 40").replace("SLEEP = 0.05", "SLEEP = 0.1"))
    cache = tmp_path / "cache"
    cache.mkdir()
    (cache / "manifest.json").write_text(json.dumps({"profile": "small"}))
    journals = tmp_path / "journals"
    run_dir = journals / "tm"
    env = f"PYTHONPATH={PROJECT} "
    common = f"--journals {journals} --cache {cache}"
    run = (f"cd {PROJECT} && {env} python -m supervisor.cli run --tag tm --trainer-dir {source} {common} "
           f"--budget 30 --grace 30 --max-trials 40; echo APP-EXITED $?; sleep 60")
    tmux = Tmux("run")
    loop_pid = None
    try:
        tmux.start("main", run)
        # The UI draws the run: its tag, a running trial with its budget bar, the experiments table.
        holder = None
        assert _wait(lambda: RunLock.holder(run_dir / "run.lock") is not None, timeout=90)
        holder = RunLock.holder(run_dir / "run.lock")
        loop_pid = int(holder.split()[1])
        # The footer shows the keys.
        tmux.wait_for("main", " tm ", "▶ trial", "Experiments", "val_bpb", "Pause/resume", "Steer", timeout=90)
        assert (run_dir / "supervisor.log").exists()
        # Quit, and leave the night running.
        tmux.keys("main", "q")
        tmux.wait_for("main", "still going", "Leave running")
        tmux.keys("main", "l")
        screen = tmux.wait_for("main", "APP-EXITED 0", timeout=20)
        assert "attach --tag tm" in screen
        # The loop is another process, in its own session: it goes on, and finishes more trials.
        ledger = Ledger(run_dir / "ledger.sqlite", readonly=True)
        try:
            done = len(ledger.finished_trials())
            assert _wait(lambda: len(ledger.finished_trials()) > done, timeout=60), "the run stopped with the UI"
            assert RunLock.holder(run_dir / "run.lock") == holder
            assert os.getsid(loop_pid) != os.getsid(0)
        finally:
            ledger.close()
        # attach comes back to it; quitting with "stop" ends the run.
        tmux.start("attach", f"cd {PROJECT} && {env} python -m supervisor.cli attach --tag tm --journals {journals}; "
                             "echo ATTACH-EXITED $?; sleep 60")
        tmux.wait_for("attach", " tm ", "Experiments", timeout=60)
        tmux.keys("attach", "q")
        tmux.wait_for("attach", "still going")
        tmux.keys("attach", "s")
        tmux.wait_for("attach", "ATTACH-EXITED 0", timeout=20)
        assert _wait(lambda: RunLock.holder(run_dir / "run.lock") is None, timeout=60), "the run did not stop"
        ledger = Ledger(run_dir / "ledger.sqlite", readonly=True)
        try:
            assert ledger.run_row()["state"] == "stopped"
        finally:
            ledger.close()
        loop_pid = None
    finally:
        tmux.close()
        if loop_pid is not None:  # the loop this test started: end it, by its own pid
            try:
                os.kill(loop_pid, 15)
            except ProcessLookupError:
                pass
