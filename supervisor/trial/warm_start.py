"""Warm start: the next trial's interpreter starts while the agent is still thinking.

A trial spends seconds before its first step that have nothing to do with the change under test: the
interpreter starts and imports torch (1.3 s on the CPU machine here), and torch.optim's first constructor
imports torch._dynamo (1.2 s more). Those seconds are on the critical path of every trial. A warm start
moves them off it: as soon as a trial ends, a Python process is started with the next trial's environment,
working directory and limits, imports the third-party modules the training script imports, and then waits
on its stdin. The agent's journal and edit turns take seconds to minutes, so by the time ``run_trial`` comes
the imports are done; the supervisor renames the waiting process's log to the trial's, sends it the trial's
environment (with the per-trial variables), and the process runs the script as a fresh ``__main__``, as
``python script.py`` would. The script itself (and the harness it imports) is read only then, after the
commit and the harness check. When the previous trial compiled, the compile stack is imported ahead too.

A warm process is used only when nothing it did early can differ from a cold start:

* the command is a plain ``PYTHON SCRIPT.py`` (an upstream ``uv run train.py`` always starts cold);
* its environment, working directory and memory cap equal the trial's, except the four per-trial
  ``AUTORESEARCH_*`` variables, which no import reads;
* the script does not write the environment (``os.environ[...] =``, ``putenv``...): a variable set before
  ``import torch`` would have no effect in a process that imported torch already.

Otherwise the waiting process is killed and the trial starts cold. While it waits it dies with the
supervisor (Linux: ``PR_SET_PDEATHSIG``; elsewhere at the end of its imports, when stdin closes); once it has
its trial it is an ordinary trial process, which outlives a killed supervisor like a cold one and is swept
up by ``--resume``.
"""

from __future__ import annotations

import ast
import json
import logging
import os
import re
import signal
import subprocess
import sys
from pathlib import Path

from supervisor.trial.runner import TrialSpec, trial_argv, trial_environment

log = logging.getLogger(__name__)

# Set per trial at hand-over; everything else in the environment must match the warm process's.
LATE_VARIABLES = ("AUTORESEARCH_TIME_BUDGET", "AUTORESEARCH_SEED", "AUTORESEARCH_METRICS",
                  "AUTORESEARCH_MODEL_OUT")

# Modules imported lazily by the ones a trainer imports, worth loading ahead: torch.optim's first
# constructor imports torch._dynamo (1.2 s on the CPU here), whether or not the trainer compiles.
# The hand-over at a trial's end exports the model: torch.export and its serializer are imported ahead too.
_FOLLOW_UPS = {"torch": ("torch._dynamo", "torch.export", "torch._export.serde.serialize")}
# What a trainer's first torch.compile call imports (0.8 s here; it cut that call from 3.7 s to 1.6 s).
# Loaded only when the previous trial compiled: an eager trial would wait for it for nothing.
COMPILE_MODULES = ("torch._inductor.compile_fx",)

# A script that writes its own environment must start cold (see the module docstring).
_WRITES_ENVIRONMENT = re.compile(
    r"environ\s*\[[^\]]*\]\s*=(?!=)|environ\.(setdefault|update|pop|clear)\b|\bputenv\b|\bunsetenv\b|"
    r"\bdel\s+[\w.]*environ\b")

_PYTHON_NAME = re.compile(r"^python[0-9.]*$")

# Runs in the trial's interpreter, so it imports only the standard library. argv: parent pid, JSON list
# of modules to import ahead, the script as the command names it. Then one JSON line on stdin: {"env": the
# trial's whole environment}; EOF means discarded.
BOOTSTRAP = r"""
import json, os, sys

def _bootstrap():
    parent, modules, argv0 = int(sys.argv[1]), json.loads(sys.argv[2]), sys.argv[3]
    libc = None
    if sys.platform.startswith("linux"):
        try:
            import ctypes
            libc = ctypes.CDLL(None, use_errno=True)
            libc.prctl(1, 9)  # PR_SET_PDEATHSIG = SIGKILL: die with the supervisor while waiting
        except Exception:
            libc = None
    if parent and os.getppid() != parent:  # it died before the line above (0: in a sandbox, bwrap sees to it)
        os._exit(0)
    # As `python script.py` has them: sys.path[0] is the script's real folder, __file__ its absolute path.
    sys.path[0] = os.path.dirname(os.path.realpath(argv0))
    for name in modules:
        try:
            __import__(name)
        except Exception:
            pass  # the script imports it again and its log shows the error, as in a cold start
    line = sys.stdin.readline()
    if not line:
        os._exit(0)
    go = json.loads(line)
    if libc is not None:
        libc.prctl(1, 0)  # from here on an ordinary trial, which outlives a killed supervisor
    null = os.open(os.devnull, os.O_RDONLY)
    os.dup2(null, 0)
    os.close(null)
    os.environ.clear()
    os.environ.update(go["env"])
    script = os.path.abspath(argv0)
    sys.argv = [argv0]

    def trimmed_hook(kind, value, tb, default=sys.excepthook):
        # Show the traceback from the script down, as a cold start would print it.
        while tb is not None and tb.tb_frame.f_code.co_filename != script:
            tb = tb.tb_next
        # None when no frame is the script's (a SyntaxError in it): then no frames, as a cold start shows.
        value = value.with_traceback(tb)  # the default hook prints the exception's own traceback
        default(kind, value, tb)

    sys.excepthook = trimmed_hook
    # What `python script.py` does (runpy.run_path would set argv[0] to the absolute path): a fresh
    # __main__ module holding the compiled script.
    import builtins, importlib.machinery, types
    main = types.ModuleType("__main__")
    main.__file__, main.__builtins__, main.__spec__ = script, builtins, None
    main.__loader__ = importlib.machinery.SourceFileLoader("__main__", script)
    sys.modules["__main__"] = main
    with open(script, "rb") as source:
        code = compile(source.read(), script, "exec")
    exec(code, main.__dict__)

_bootstrap()
"""


def is_python_script(command: list[str]) -> bool:
    """Whether a trial command is ``PYTHON SCRIPT.py`` and nothing more: the only shape a warm start serves."""
    return (len(command) == 2 and command[1].endswith(".py")
            and (command[0] == sys.executable or bool(_PYTHON_NAME.match(Path(command[0]).name))))


def writes_environment(source: str) -> bool:
    return bool(_WRITES_ENVIRONMENT.search(source))


def modules_to_preload(script: Path) -> list[str]:
    """The script's top-level imports that are not files beside it (those are read at hand-over, the harness
    among them), then their known lazy follow-ups. Unparseable source preloads nothing."""
    try:
        tree = ast.parse(script.read_text(encoding="utf-8"))
    except (OSError, SyntaxError, ValueError):
        return []
    here = script.parent
    names: list[str] = []

    def add(name: str) -> None:
        top = name.split(".")[0]
        if top == "__future__" or (here / f"{top}.py").exists() or (here / top).is_dir():
            return
        for candidate in (name, *_FOLLOW_UPS.get(name, ())):
            if candidate not in names:
                names.append(candidate)

    for node in tree.body:
        if isinstance(node, ast.Import):
            for alias in node.names:
                add(alias.name)
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            add(node.module)
    return names


def _env_without_late(env: dict[str, str]) -> dict[str, str]:
    return {k: v for k, v in env.items() if k not in LATE_VARIABLES}


class WarmStarter:
    """Holds at most one waiting interpreter for the next trial. Used from the loop's thread only."""

    def __init__(self, staging_dir: Path) -> None:
        self.staging_dir = staging_dir
        self._proc: subprocess.Popen | None = None
        self._log: Path | None = None
        self._key: tuple | None = None

    @property
    def waiting_pid(self) -> int | None:
        return self._proc.pid if self._proc is not None and self._proc.poll() is None else None

    @staticmethod
    def _key_for(spec: TrialSpec, stable_env: dict[str, str]) -> tuple:
        """What a waiting interpreter must share with the trial it is handed: all but the per-trial values."""
        return (tuple(trial_argv(spec, spec.command)), str(spec.cwd), spec.memory_limit_mb,
                tuple(sorted(stable_env.items())))

    def prepare(self, spec: TrialSpec, also: tuple[str, ...] = ()) -> None:
        """Start an interpreter for a trial like ``spec`` (its log and metrics paths do not matter yet),
        importing ``also`` after the script's own imports when the script imports torch.

        Keeps the one already waiting if it fits. Never raises: a warm start is an optimisation.
        """
        if not is_python_script(spec.command):
            return
        env = _env_without_late(trial_environment(spec))
        key = (*self._key_for(spec, env), also)
        if self._proc is not None and self._proc.poll() is None and key == self._key:
            return
        self.discard()
        script = Path(spec.cwd) / spec.command[1]
        modules = modules_to_preload(script)
        if "torch" in modules:
            modules += [name for name in also if name not in modules]
        # The script's path ends the command line, as in a cold start: that is how --resume recognises an
        # orphaned trial before killing it (loop.kill_orphan_trial).
        parent = 0 if spec.sandbox is not None else os.getpid()  # the sandbox's pid namespace hides our pid
        command = [spec.command[0], "-c", BOOTSTRAP, str(parent), json.dumps(modules), spec.command[1]]
        try:
            self.staging_dir.mkdir(parents=True, exist_ok=True)
            log_path = self.staging_dir / f".warm-{os.getpid()}-{id(self)}.log"
            with open(log_path, "wb") as log_file:
                self._proc = subprocess.Popen(
                    trial_argv(spec, command), cwd=spec.cwd, env=env, stdin=subprocess.PIPE,
                    stdout=log_file, stderr=subprocess.STDOUT, start_new_session=True, close_fds=True)
        except OSError as exc:
            log.warning("warm start unavailable: %s", exc)
            self._proc = None
            return
        self._log, self._key = log_path, key

    def launch(self, spec: TrialSpec, env: dict[str, str]) -> subprocess.Popen | None:
        """Hand the waiting interpreter this trial and return it, or None (then start the trial cold).

        ``env`` is the trial's whole environment (:func:`trial_environment`). The trial's log is the waiting
        process's log, renamed: anything its imports printed stays at the top, as in a cold start.
        """
        proc, staged = self._proc, self._log
        if proc is None or staged is None or proc.poll() is not None:
            self.discard()
            return None
        if self._key is None or self._key_for(spec, _env_without_late(env)) != self._key[:-1]:  # changed since
            self.discard()
            return None
        script = Path(spec.cwd) / spec.command[1]
        try:
            if writes_environment(script.read_text(encoding="utf-8")):
                self.discard()
                return None
            os.replace(staged, spec.log_path)
        except OSError:
            self.discard()
            return None
        go = {"env": env}
        try:
            assert proc.stdin is not None
            proc.stdin.write((json.dumps(go) + "\n").encode())
            proc.stdin.close()
        except (OSError, ValueError):
            # It died between the check and the write: start cold, into a fresh log.
            self._proc = self._log = self._key = None
            _kill(proc)
            return None
        self._proc = self._log = self._key = None
        return proc

    def discard(self) -> None:
        """Kill the waiting interpreter, if any, and remove its staged log."""
        proc, staged = self._proc, self._log
        self._proc = self._log = self._key = None
        if proc is not None:
            _kill(proc)
        if staged is not None:
            staged.unlink(missing_ok=True)


def _kill(proc: subprocess.Popen) -> None:
    try:
        if proc.stdin is not None:
            proc.stdin.close()
    except OSError:
        pass
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass
    try:
        proc.wait(timeout=10)
    except subprocess.TimeoutExpired:
        log.warning("warm process %s did not exit after SIGKILL", proc.pid)
