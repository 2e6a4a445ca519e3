"""Credentials leave the environment of every `autoresearch` process that runs the agent's code.

Why: a trial runs as the same user, and any process of that user can read ``/proc/<pid>/environ`` of the
supervisor. That file is the environment the process was *started* with; ``del os.environ[...]`` does not
change it. So the entry point (:func:`move_secrets_out`, called by ``supervisor.cli.main.entry``) does this
before anything else, for every command that may run the agent's code or talk to its API:

1. the credentials are the variables :func:`is_secret_name` or :func:`is_secret_value` flags
   (ANTHROPIC_API_KEY, OPENAI_API_KEY, ANTHROPIC_AUTH_TOKEN, the provider's base URL, ...);
2. their values are written as one JSON object into a fresh pipe, whose write end is then closed;
3. the process re-executes itself (``os.execve``: the same pid, interpreter and argv) with those variables
   removed and only the pipe's read end, by number, in ``AUTORESEARCH_SECRETS_FD``;
4. the new image (:func:`receive`) reads the pipe to its end, closes it, and keeps the values in memory
   (supervisor.core.secrets), where the agents take their key from.

The new image has no credential in its environment, so it never re-executes again, and every process it
starts inherits a clean environment. The one child that needs the keys, the headless loop that `run`
starts under the terminal UI, gets them the same way, over a pipe of its own (:func:`popen_with_secrets`).
Everything here is POSIX (pipes, execve, fork); elsewhere the variables are only removed from
``os.environ``.
"""

from __future__ import annotations

import json
import os
import selectors
import stat
import subprocess
import sys
from collections.abc import Callable, Mapping, MutableMapping, Sequence
from typing import Any

from supervisor.core.secrets import SECRETS_FD_VARIABLE, store
from supervisor.trial.environment import is_secret_name, is_secret_value

# Short commands that run none of the agent's code and make no API call: they keep their environment, so
# that, for example, `prepare` can still download through a proxy whose URL carries a password. Any other
# command gets the hand-over, including one added later and the UI's (attach, review, serve), which live
# through the night beside the trials.
NO_AGENT_COMMANDS = frozenset({"prepare", "status", "control", "export", "report", "import", "doctor"})
# A proxy URL with a password is moved out with the credentials, but the agent's own HTTPS client still has
# to go through it: it is put back into os.environ in memory only (see move_secrets_out).
PROXY_VARIABLES = frozenset({"HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "NO_PROXY"})
# How long the new image waits for the pipe's end: the writer closed its end before the exec (or is a
# helper that writes a few kilobytes), so anything longer means something is wrong.
READ_TIMEOUT_S = 30.0


def _say(message: str) -> None:
    print(f"autoresearch: {message}", file=sys.stderr)


def credential_names(environ: Mapping[str, str]) -> list[str]:
    """The variables of ``environ`` that are, or travel with, credentials."""
    return sorted(name for name, value in environ.items()
                  if name != SECRETS_FD_VARIABLE and (is_secret_name(name) or is_secret_value(value)))


def command_of(args: Sequence[str]) -> str | None:
    """The subcommand of an `autoresearch` command line (its first word that is not an option)."""
    return next((a for a in args if not a.startswith("-")), None)


# ---- the receiving side ---------------------------------------------------------------------------------
def _read_all(fd: int, timeout_s: float) -> bytes:
    chunks = []
    with selectors.DefaultSelector() as selector:  # poll/epoll/kqueue: no limit on the fd's number
        selector.register(fd, selectors.EVENT_READ)
        while True:
            if not selector.select(timeout_s):
                raise TimeoutError(f"nothing arrived in {timeout_s:.0f}s")
            chunk = os.read(fd, 65536)
            if not chunk:
                return b"".join(chunks)
            chunks.append(chunk)


def receive(environ: MutableMapping[str, str] | None = None, timeout_s: float = READ_TIMEOUT_S) -> bool:
    """Take the secrets a parent handed over (``AUTORESEARCH_SECRETS_FD``) into the store; True if any came.

    The variable is removed whatever happens, so no child of this process sees a number it cannot use.
    """
    env = os.environ if environ is None else environ
    text = env.pop(SECRETS_FD_VARIABLE, None)
    if text is None:
        return False
    try:
        fd = int(text)
        # Only a pipe, and never a standard stream: a stray number must not make us read a terminal.
        if fd <= 2 or not stat.S_ISFIFO(os.fstat(fd).st_mode):
            raise ValueError("not a pipe")
    except (ValueError, OSError):
        _say(f"ignoring {SECRETS_FD_VARIABLE}={text!r}: it does not name a pipe this process holds")
        return False
    try:
        values = json.loads(_read_all(fd, timeout_s).decode("utf-8"))
    except (OSError, TimeoutError, ValueError) as exc:
        _say(f"the credentials handed over by the parent process could not be read ({exc})")
        return False
    finally:
        os.close(fd)
    if not isinstance(values, dict) or not all(isinstance(k, str) and isinstance(v, str)
                                               for k, v in values.items()):
        _say("the credentials handed over by the parent process were not a JSON object of strings")
        return False
    store().update(values)
    return True


# ---- the sending side -----------------------------------------------------------------------------------
def _write_detached(fd: int, data: bytes) -> None:
    """Write what did not fit into the pipe from a grandchild (re-parented to init, so nobody has to reap
    it), which ends as soon as the reader has taken it all or has gone away."""
    pid = os.fork()
    if pid == 0:  # the child: start the writer and leave at once
        try:
            if os.fork() == 0:
                try:
                    os.set_blocking(fd, True)
                    view = memoryview(data)
                    while view:
                        view = view[os.write(fd, view):]
                finally:
                    os._exit(0)
        finally:
            os._exit(0)
    os.waitpid(pid, 0)


def write_secrets(fd: int, values: Mapping[str, str]) -> None:
    """Put ``values`` into the pipe's write end ``fd`` without blocking this process, and close it.

    A pipe holds 16-64 KiB; credentials almost always fit, and the rest (a very long certificate in a
    variable) goes through a short-lived helper, since nobody reads the pipe before the exec.
    """
    view = memoryview(json.dumps(dict(values)).encode("utf-8"))
    try:
        os.set_blocking(fd, False)
        while view:
            try:
                view = view[os.write(fd, view):]
            except BlockingIOError:
                _write_detached(fd, bytes(view))
                break
    finally:
        os.close(fd)


def _can_reexec(executable: str | None) -> bool:
    return os.name == "posix" and bool(executable) and os.path.exists(str(executable))


def reexec_without(values: Mapping[str, str], environ: Mapping[str, str], argv: Sequence[str],
                   executable: str, execve: Callable[[str, Sequence[str], Mapping[str, str]], Any] = os.execve
                   ) -> None:
    """Replace this process by itself without the variables in ``values``; their values go over a pipe.

    Returns only if the exec failed (the caller then keeps the values in memory as a fallback).
    """
    read_end, write_end = os.pipe()
    write_secrets(write_end, values)
    os.set_inheritable(read_end, True)
    env = {name: value for name, value in environ.items() if name not in values}
    env[SECRETS_FD_VARIABLE] = str(read_end)
    sys.stdout.flush()
    sys.stderr.flush()
    try:
        execve(executable, list(argv), env)
    except OSError as exc:
        _say(f"could not restart without the credentials in the environment ({exc}); going on")
    os.close(read_end)


def move_secrets_out(args: Sequence[str] | None = None, *, environ: MutableMapping[str, str] | None = None,
                     argv: Sequence[str] | None = None, executable: str | None = None,
                     execve: Callable[[str, Sequence[str], Mapping[str, str]], Any] = os.execve) -> None:
    """The entry point's first step: receive handed-over secrets, or hand our own over to a new image.

    ``args`` is the command line after the program name (default ``sys.argv[1:]``); ``argv`` and
    ``executable`` are what the exec repeats (default ``sys.orig_argv`` and ``sys.executable``, which keep
    the interpreter's own options and `-m`). Returns normally when there is nothing to move, for a command
    that runs no agent code, or when the exec is impossible; otherwise it does not return.
    """
    env = os.environ if environ is None else environ
    received = receive(env)
    names = credential_names(env)
    if names and command_of(sys.argv[1:] if args is None else args) not in NO_AGENT_COMMANDS:
        _move(names, env, received, argv, executable, execve)
    # The SDKs read proxies from os.environ. Set here, after the exec, they live only in this process's
    # memory: /proc/<pid>/environ shows the environment the image was started with, and the children that
    # run agent code get the allowlisted environment (trial/environment.py), which has no proxy.
    for name, value in store().as_dict().items():
        if name.upper() in PROXY_VARIABLES:
            env.setdefault(name, value)


def _move(names: list[str], env: MutableMapping[str, str], received: bool, argv: Sequence[str] | None,
          executable: str | None, execve: Callable[[str, Sequence[str], Mapping[str, str]], Any]) -> None:
    """Move ``names`` out of ``env``: by a re-exec when possible, else into the store and out of os.environ."""
    values = {name: env[name] for name in names}
    executable = sys.executable if executable is None else executable
    # A process that was just handed secrets never re-executes (no loop, whatever its environment holds).
    if not received and _can_reexec(executable):
        reexec_without(values, env, sys.orig_argv if argv is None else argv, executable, execve)
    # No exec (not POSIX, or it failed): keep them in memory and out of what children inherit. The
    # process's own /proc/<pid>/environ still shows them; only the exec can change that.
    store().update(values)
    for name in names:
        del env[name]


# ---- handing them on to a child ------------------------------------------------------------------------
def secrets_for_child(env: MutableMapping[str, str]) -> dict[str, str]:
    """Remove the credentials from a child's environment ``env``; return what the child must be handed:
    those, and everything this process holds in its store."""
    moved = {name: env.pop(name) for name in credential_names(env)}
    return {**moved, **store().as_dict()}


def popen_with_secrets(command: Sequence[str], secrets: Mapping[str, str], *, env: Mapping[str, str],
                       **popen_kwargs: Any) -> subprocess.Popen:
    """Start ``command`` (an `autoresearch` entry point) with ``secrets`` over a pipe, not in ``env``."""
    if not secrets:
        return subprocess.Popen(list(command), env=dict(env), **popen_kwargs)
    read_end, write_end = os.pipe()
    try:
        proc = subprocess.Popen(list(command), env={**env, SECRETS_FD_VARIABLE: str(read_end)},
                                pass_fds=(read_end,), **popen_kwargs)
    except BaseException:
        os.close(write_end)
        raise
    finally:
        os.close(read_end)
    try:
        data = memoryview(json.dumps(dict(secrets)).encode("utf-8"))
        while data:  # blocking: the child reads it all as the first thing it does
            data = data[os.write(write_end, data):]
    except BrokenPipeError:
        pass  # the child died before reading: its exit and its log say why
    finally:
        os.close(write_end)
    return proc
