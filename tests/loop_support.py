"""Helpers for the loop's tests: runs on the stand-in trainer (a real subprocess that needs no torch)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any

from supervisor.agents.base import AgentTurn, ToolCall, TurnContext
from supervisor.core.config import RunConfig
from supervisor.core.events import Event

FAKE_SOURCE = Path(__file__).parent / "fake_trainer"
PROJECT = Path(__file__).resolve().parent.parent


def fake_config(tmp_path: Path, tag: str = "t", **overrides: Any) -> RunConfig:
    settings: dict[str, Any] = dict(
        tag=tag, journals_root=tmp_path / "journals", cache_dir=tmp_path / "cache", budget_s=5.0, grace_s=5.0,
        source_dir=FAKE_SOURCE,
    )
    settings.update(overrides)
    return RunConfig(**settings)


def write_script(path: Path, steps: list[dict[str, Any]]) -> Path:
    path.write_text("".join(json.dumps(s) + "\n" for s in steps))
    return path


def edit(search: str, replace: str, path: str = "trainer/train.py") -> dict[str, Any]:
    return {"tool": "edit_file", "input": {"path": path, "search": search, "replace": replace}}


def trial(description: str, **extra: Any) -> dict[str, Any]:
    return {"tool": "run_trial", "input": {"description": description, **extra}}


def journal(n: int = 0) -> dict[str, Any]:
    return {"tool": "write_journal", "input": {
        "hypothesis": f"Raising the learning rate should speed up early training (entry {n}).",
        "change": f"Changed the LR constant in the training script for trial number {n}.",
        "interpretation": f"The measured change is compared with the noise floor before believing it ({n}).",
        "next_step": f"Continue with the width constant next, then revisit the learning rate ({n}).",
    }}


def reflection(n: int = 0) -> dict[str, Any]:
    return {"tool": "write_reflection", "input": {
        "load_bearing": f"The learning rate matters most so far, judging by trials one to three ({n}).",
        "dead_ends": f"Very large learning rates diverge and should not be tried again here ({n}).",
        "retest": f"Re-test the width change now that the learning rate has moved ({n}).",
        "plan": f"Sweep the width, then try a longer warmdown of the schedule ({n}).",
    }}


def process_alive(pid: int, group: bool = False) -> bool:
    """Whether a process (or any process of its group) still runs; a zombie awaiting its reaper counts as gone
    (a sandbox's own init, orphaned when bwrap exits, waits for the machine's init to reap it)."""
    try:
        (os.killpg if group else os.kill)(pid, 0)
    except ProcessLookupError:
        return False
    if group and Path("/proc").is_dir():
        return any(_state_and_group(entry)[1] == pid and _state_and_group(entry)[0] not in ("Z", "X")
                   for entry in os.listdir("/proc") if entry.isdigit())
    stat = Path(f"/proc/{pid}/stat")
    return not (stat.exists() and stat.read_text().split()[2] == "Z")


def _state_and_group(entry: str) -> tuple[str, int]:
    try:
        raw = Path(f"/proc/{entry}/stat").read_text()
    except OSError:
        return "X", -1
    fields = raw[raw.rfind(")") + 2:].split()
    return fields[0], int(fields[2])


class Recorder:
    """Collects the bus's events for assertions."""

    def __init__(self) -> None:
        self.events: list[Event] = []
        self.lock = threading.Lock()

    def __call__(self, event: Event) -> None:
        with self.lock:
            self.events.append(event)

    def kinds(self, kind: str) -> list[Event]:
        with self.lock:
            return [e for e in self.events if e.kind == kind]


class CallbackAgent:
    """An agent whose turns are a Python function of the context: for tests that react to state."""

    name = "callback"

    def __init__(self, fn) -> None:
        self.fn = fn
        self.contexts: list[TurnContext] = []

    def turn(self, ctx: TurnContext) -> AgentTurn:
        self.contexts.append(ctx)
        result = self.fn(ctx, len(self.contexts))
        if result is None:
            return AgentTurn(done=True)
        if isinstance(result, AgentTurn):
            return result
        return AgentTurn(calls=[ToolCall(c["tool"], c["input"]) for c in result])

    def close(self) -> None:
        pass


def cli(*args: str, env: dict[str, str] | None = None, timeout: float = 300,
        cwd: Path | None = None) -> subprocess.CompletedProcess:
    """Run the real `autoresearch` entry point in a subprocess."""
    full_env = {**os.environ, **(env or {})}
    full_env["PYTHONPATH"] = str(PROJECT) + os.pathsep + full_env.get("PYTHONPATH", "")
    return subprocess.run([sys.executable, "-m", "supervisor.cli.main", *args], capture_output=True, text=True,
                          env=full_env, timeout=timeout, cwd=cwd or PROJECT)
