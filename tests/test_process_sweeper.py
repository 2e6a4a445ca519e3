"""ProcessSweeper through psutil: real process trees whose members leave the trial's group and session.

Each test starts a real "trial" in its own session (as the runner does), lets it plant a process that
escapes the group with setsid(), and checks that the sweeper finds it and kills it. Waits are on conditions
(a pid file written, a process gone), never on fixed sleeps.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import psutil
import pytest

from supervisor.trial import process as process_module
from supervisor.trial.process import ProcessSweeper, has_exited, wait_group_gone

pytestmark = [
    pytest.mark.timeout(60),
    pytest.mark.skipif(sys.platform == "win32", reason="process groups and sessions are POSIX"),
]


def wait_for(condition: Callable[[], bool], timeout: float = 15.0) -> bool:
    until = time.monotonic() + timeout
    while time.monotonic() < until:
        if condition():
            return True
        time.sleep(0.02)
    return condition()


def is_gone(proc: psutil.Process) -> bool:
    """Dead: exited, a zombie waiting for its reaper, or its pid now someone else's."""
    try:
        return not proc.is_running() or proc.status() in (psutil.STATUS_ZOMBIE, psutil.STATUS_DEAD)
    except psutil.NoSuchProcess:
        return True


def read_pid(path: Path) -> int | None:
    try:
        return int(path.read_text())
    except (OSError, ValueError):
        return None  # not written yet, or half written


@pytest.fixture
def leftovers() -> Iterator[list[psutil.Process]]:
    """Processes a test planted; killed at the end whatever happened, so a failing test leaves none."""
    planted: list[psutil.Process] = []
    yield planted
    for proc in planted:
        try:
            proc.kill()
        except psutil.Error:
            pass


def start_trial(tmp_path: Path, body: str) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-c", textwrap.dedent(body)],
        cwd=tmp_path,
        start_new_session=True,  # as the runner starts a trial: its own session and process group
        stdin=subprocess.DEVNULL,
    )


# The trial forks a child that leaves the session with setsid() and sleeps; the trial waits until told to
# exit (the "exit" file), so that the test can snapshot while it is alive, as the runner does.
SETSID_CHILD = """
    import os, time
    pid = os.fork()
    if pid == 0:
        os.setsid()
        open("escapee.tmp", "w").write(str(os.getpid()))
        os.rename("escapee.tmp", "escapee")
        time.sleep(600)
        os._exit(0)
    while not os.path.exists("exit"):
        time.sleep(0.02)
"""

# The trial's child double-forks: the grandchild is orphaned (reparented to init, out of the trial's tree)
# while staying in the trial's group; that grandchild then starts a child that calls setsid(). That last
# process is neither in the group nor under the trial: only the orphaned group member leads to it.
ORPHAN_THEN_SETSID = """
    import os, time
    if os.fork() == 0:
        if os.fork() == 0:
            if os.fork() == 0:
                os.setsid()
                open("escapee.tmp", "w").write(str(os.getpid()))
                os.rename("escapee.tmp", "escapee")
                time.sleep(600)
                os._exit(0)
            open("orphan.tmp", "w").write(str(os.getpid()))
            os.rename("orphan.tmp", "orphan")
            time.sleep(600)
            os._exit(0)
        os._exit(0)
    while not os.path.exists("exit"):
        time.sleep(0.02)
"""


def test_a_child_that_left_the_session_is_found_and_killed(tmp_path: Path, leftovers: list) -> None:
    trial = start_trial(tmp_path, SETSID_CHILD)
    sweeper = ProcessSweeper(trial.pid)
    try:
        assert wait_for(lambda: read_pid(tmp_path / "escapee") is not None)
        escapee = psutil.Process(read_pid(tmp_path / "escapee"))
        leftovers.append(escapee)
        assert os.getsid(escapee.pid) == escapee.pid != trial.pid  # really out of the trial's session
        assert os.getpgid(escapee.pid) != trial.pid  # and of its group: killpg cannot reach it

        sweeper.snapshot()
        assert escapee in sweeper.known

        (tmp_path / "exit").write_text("")  # the trial exits and leaves its child behind
        assert wait_for(lambda: has_exited(trial))
        assert not is_gone(escapee)
        sweeper.kill_all()  # while the trial is unreaped, as the runner calls it
        assert wait_for(lambda: is_gone(escapee))
    finally:
        sweeper.kill_all()
        trial.wait(timeout=10)


def test_a_setsid_child_of_an_orphaned_group_member_is_killed_too(tmp_path: Path, leftovers: list) -> None:
    trial = start_trial(tmp_path, ORPHAN_THEN_SETSID)
    sweeper = ProcessSweeper(trial.pid)
    try:
        assert wait_for(lambda: None not in (read_pid(tmp_path / "orphan"), read_pid(tmp_path / "escapee")))
        orphan = psutil.Process(read_pid(tmp_path / "orphan"))
        escapee = psutil.Process(read_pid(tmp_path / "escapee"))
        leftovers.extend([orphan, escapee])
        # Wait until the orphan's parent (the trial's child) is gone, so the orphan is out of the trial's tree.
        assert wait_for(lambda: orphan not in psutil.Process(trial.pid).children(recursive=True))
        assert escapee not in psutil.Process(trial.pid).children(recursive=True)
        assert os.getpgid(orphan.pid) == trial.pid and os.getpgid(escapee.pid) != trial.pid

        sweeper.snapshot()
        assert {orphan, escapee} <= sweeper.known

        (tmp_path / "exit").write_text("")
        assert wait_for(lambda: has_exited(trial))
        sweeper.kill_all()
        assert wait_for(lambda: is_gone(orphan) and is_gone(escapee))
        assert wait_group_gone(trial.pid)
    finally:
        sweeper.kill_all()
        trial.wait(timeout=10)


def test_the_group_is_killed_even_without_a_snapshot(tmp_path: Path, leftovers: list) -> None:
    # A worker that stays in the group (a DataLoader worker) dies by killpg, known to the sweeper or not.
    trial = start_trial(
        tmp_path,
        """
        import os, time
        if os.fork() == 0:
            open("worker.tmp", "w").write(str(os.getpid()))
            os.rename("worker.tmp", "worker")
            time.sleep(600)
        time.sleep(600)
        """,
    )
    sweeper = ProcessSweeper(trial.pid)
    try:
        assert wait_for(lambda: read_pid(tmp_path / "worker") is not None)
        worker = psutil.Process(read_pid(tmp_path / "worker"))
        leftovers.append(worker)
        sweeper.known.clear()
        sweeper.signal_group(signal.SIGKILL)
        assert wait_for(lambda: has_exited(trial))
        sweeper.kill_all()
        assert wait_for(lambda: is_gone(worker))
        assert wait_group_gone(trial.pid)
    finally:
        sweeper.kill_all()
        trial.wait(timeout=10)


def test_a_recycled_pid_is_never_killed(tmp_path: Path) -> None:
    # A process the sweeper remembered has exited and its pid now names someone else: the start time
    # differs, and kill_all leaves the newcomer alone. Simulated with a bystander whose remembered identity
    # (psutil's (pid, start time) pair) has an earlier start, which is what a recycled pid looks like.
    bystander = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"])
    try:
        stale = psutil.Process(bystander.pid)
        pid, started = stale._ident
        stale._ident, stale._hash = (pid, started - 100.0), None  # the earlier holder started 100 s before
        sweeper = ProcessSweeper(os.getpid())
        sweeper.main = None  # nothing to walk: only the remembered process matters here
        sweeper.pid = 2**22 + 1  # a group that does not exist, so killpg hits nothing
        sweeper.known.add(stale)
        sweeper.kill_all()
        assert bystander.poll() is None  # still running
    finally:
        bystander.kill()
        bystander.wait(timeout=10)


def test_psutil_errors_are_handled_never_raised(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    trial = start_trial(tmp_path, "import time; time.sleep(600)")
    sweeper = ProcessSweeper(trial.pid)
    try:

        def denied(*_args: object, **_kwargs: object) -> None:
            raise psutil.AccessDenied(trial.pid)

        def vanished(*_args: object, **_kwargs: object) -> None:
            raise psutil.NoSuchProcess(trial.pid)

        monkeypatch.setattr(psutil.Process, "children", denied)
        sweeper.snapshot()  # /proc unreadable: nothing found, no traceback
        monkeypatch.setattr(psutil.Process, "kill", denied)
        sweeper.known.add(psutil.Process(trial.pid))
        sweeper.kill_all()  # not ours to kill: forgotten, no traceback
        assert not sweeper.known
        monkeypatch.setattr(psutil.Process, "status", vanished)
        monkeypatch.setattr(psutil, "pids", denied)
        assert process_module._live_members(trial.pid)  # cannot list: only killpg's answer counts
        monkeypatch.undo()
        # The group itself still dies by killpg, whatever psutil could or could not do.
        sweeper.kill_all()
        assert wait_for(lambda: has_exited(trial))
        assert wait_group_gone(trial.pid)
    finally:
        monkeypatch.undo()
        sweeper.kill_all()
        trial.wait(timeout=10)


def test_a_live_member_keeps_the_group_alive_and_zombies_do_not(tmp_path: Path) -> None:
    trial = start_trial(tmp_path, "import time; time.sleep(600)")
    try:
        assert process_module._live_members(trial.pid)
        os.killpg(trial.pid, signal.SIGKILL)
        # Unreaped, the trial is a zombie: still a member by killpg's account, but not a live one.
        assert wait_for(lambda: not process_module._live_members(trial.pid))
        assert wait_group_gone(trial.pid)
    finally:
        trial.kill()
        trial.wait(timeout=10)
