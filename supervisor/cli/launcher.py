"""`autoresearch run` and `demo` with the UI: start the loop as its own process, then open the app on it.

The loop must outlive the app: closing the terminal, the SSH connection or the app must not stop the night.
So the loop is `python -m supervisor.cli.main run --headless ...` in a new session (no controlling terminal, no
SIGHUP), writing to the run folder's supervisor.log, and the app is only a client of its ledger. Quitting
the app asks whether to stop the run or leave it running.
"""

from __future__ import annotations

import os
import shlex
import subprocess
import sys
import time
from pathlib import Path

from supervisor.cli.secret_handoff import popen_with_secrets, secrets_for_child
from supervisor.core.config import PROJECT_ROOT, RunConfig
from supervisor.core.errors import UserError
from supervisor.core.paths import RunPaths
from supervisor.store.lock import RunLock

START_TIMEOUT_S = 300.0  # the loop probes the platform (a torch import) before it takes the lock
STOP_WAIT_S = 30.0


class LaunchError(UserError):
    """The loop process did not start; the message holds the end of its log."""


def can_open() -> bool:
    """Whether there is a terminal to draw the app in (or a Textual driver, as under `serve`)."""
    return (sys.stdin.isatty() and sys.stdout.isatty()) or bool(os.environ.get("TEXTUAL_DRIVER"))


def loop_command(config: RunConfig, resume: bool) -> list[str]:
    """The headless command that runs exactly this configuration (the inverse of the run options' parsing)."""
    from supervisor.cli.main import RUN_OPTIONS

    cmd = [sys.executable, "-m", "supervisor.cli.main", "run", "--headless", "--tag", config.tag,
           "--journals", str(Path(config.journals_root).resolve()), "--cache", str(Path(config.cache_dir).resolve())]
    if resume:
        cmd.append("--resume")
    elif config.upstream_repo is not None:
        cmd += ["--upstream", str(config.upstream_repo), "--train-command", shlex.join(config.layout.command)]
    else:
        cmd += ["--trainer-dir", str(Path(config.source_dir).resolve())]
    for option, field_name in RUN_OPTIONS.items():
        value = getattr(config, field_name, None)
        flag = "--" + option.replace("_", "-")
        if value is None:
            continue
        if isinstance(value, bool):  # the switches are BooleanOptionalAction: --x and --no-x
            cmd.append(flag if value else "--no-" + option.replace("_", "-"))
        else:
            cmd += [flag, str(value)]
    return cmd


def start_loop(config: RunConfig, resume: bool) -> subprocess.Popen:
    """Start the loop detached from this terminal; its output goes to the run folder's supervisor.log."""
    paths = RunPaths(Path(config.run_dir))
    paths.run_dir.mkdir(parents=True, exist_ok=True)
    env = dict(os.environ)
    env["PYTHONPATH"] = str(PROJECT_ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    env["PYTHONUNBUFFERED"] = "1"
    env.pop("TEXTUAL_DRIVER", None)
    # The loop needs the agent's key, but not in its environment, where its trials could read it: it gets
    # the keys over a pipe, as this process got them from its own entry point.
    secrets = secrets_for_child(env)
    with open(paths.log, "ab") as log:
        log.write(f"\n=== {time.strftime('%Y-%m-%d %H:%M:%S')} {shlex.join(loop_command(config, resume))}\n".encode())
        log.flush()
        return popen_with_secrets(loop_command(config, resume), secrets, env=env, stdin=subprocess.DEVNULL,
                                  stdout=log, stderr=subprocess.STDOUT, start_new_session=True, close_fds=True,
                                  cwd=os.getcwd())


def _log_tail(run_dir: Path, lines: int = 12) -> str:
    try:
        text = RunPaths(run_dir).log.read_text(encoding="utf-8", errors="replace")
    except OSError:
        return ""
    last_start = text.rfind("\n=== ")
    return "\n".join(text[last_start + 1 if last_start >= 0 else 0:].splitlines()[1:][-lines:])


def wait_until_ready(proc: subprocess.Popen, config: RunConfig, timeout_s: float = START_TIMEOUT_S) -> None:
    """Return when the new process holds the run's lock and its ledger has the run; raise if it died."""
    from supervisor.store.ledger import Ledger, LedgerError

    run_dir = Path(config.run_dir)
    paths = RunPaths(run_dir)
    deadline = time.monotonic() + timeout_s
    while True:
        code = proc.poll()
        if code is not None:
            tail = _log_tail(run_dir)
            raise LaunchError(f"the run did not start (exit code {code}). From {paths.log}:\n{tail}")
        holder = RunLock.holder(paths.lock) or ""
        if f"pid {proc.pid} " in holder + " " and paths.ledger.exists():
            try:
                ledger = Ledger(paths.ledger, readonly=True)
                try:
                    ledger.run_row()
                    return
                finally:
                    ledger.close()
            except LedgerError:
                pass  # created but not yet initialised
        if time.monotonic() > deadline:
            raise LaunchError(f"the run process {proc.pid} has not taken the run after {timeout_s:.0f}s; it goes "
                              f"on in the background (log: {paths.log}). Try `autoresearch attach "
                              f"--tag {config.tag}` in a moment, or stop it with kill {proc.pid}.")
        time.sleep(0.2)


def launch(config: RunConfig, resume: bool = False) -> int:
    """Start the run in its own process, open the app on it, and say where things stand when the app closes."""
    from supervisor.cli.tui_commands import _say_after_quit, open_app

    paths = RunPaths(Path(config.run_dir))
    proc = start_loop(config, resume)
    print(f"run {config.tag}: starting the supervisor (pid {proc.pid}, log {paths.log}) …", file=sys.stderr)
    wait_until_ready(proc, config)
    answer = open_app(paths.run_dir, review=False)
    if answer == "stop":
        try:
            proc.wait(timeout=STOP_WAIT_S)
        except subprocess.TimeoutExpired:
            print(f"the run is still stopping (pid {proc.pid}); it records the current trial as aborted",
                  file=sys.stderr)
    _say_after_quit(config.tag, answer)
    if answer is None and proc.poll() is None:
        _say_after_quit(config.tag, "leave")
    elif proc.poll() is not None:
        print(f"run {config.tag} ended. Journal: {paths.journal_md}", file=sys.stderr)
    return 0
