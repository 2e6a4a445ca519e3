"""Replays tool calls from a JSON-lines file, one call per turn: for tests and reproductions.

Each line is `{"tool": NAME, "input": {...}}`, optionally with `"text": "..."` (what the agent "says").
Blank lines and lines starting with `#` are skipped. When the script runs out, the agent is done.
A replayed call that is refused is recorded like any other; the script simply goes on.
"""

from __future__ import annotations

import json
from pathlib import Path

from supervisor.agents.base import AgentTurn, ToolCall, TurnContext
from supervisor.core.errors import UserError


class ScriptError(UserError, ValueError):
    """The script file cannot be read; the message names the line."""


def load_script(path: Path) -> list[tuple[str, ToolCall]]:
    path = Path(path)
    if not path.is_file():
        raise ScriptError(f"script file {path} does not exist")
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        line = path.read_bytes()[:exc.start].count(b"\n") + 1
        raise ScriptError(f"{path}:{line}: not UTF-8 text (byte {exc.object[exc.start]:#04x} at offset "
                          f"{exc.start}); save the script as UTF-8") from None
    except OSError as exc:
        raise ScriptError(f"cannot read the script file {path}: {exc.strerror}") from None
    steps: list[tuple[str, ToolCall]] = []
    for number, raw in enumerate(text.splitlines(), start=1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        try:
            item = json.loads(line)
        except json.JSONDecodeError as exc:
            raise ScriptError(f"{path}:{number}: not valid JSON ({exc.msg})") from exc
        if not isinstance(item, dict) or not isinstance(item.get("tool"), str):
            raise ScriptError(f'{path}:{number}: each line must be {{"tool": NAME, "input": {{...}}}}')
        tool_input = item.get("input", {})
        steps.append((str(item.get("text", "")), ToolCall(item["tool"], tool_input, id=f"script-{number}")))
    return steps


class ScriptedAgent:
    name = "script"

    def __init__(self, path: Path, start: int = 0) -> None:
        self.path = Path(path)
        self.steps = load_script(self.path)
        self.position = start

    def turn(self, ctx: TurnContext) -> AgentTurn:
        if self.position >= len(self.steps):
            return AgentTurn(text="(script finished)", done=True)
        text, call = self.steps[self.position]
        self.position += 1
        return AgentTurn(text=text, calls=[call])

    def close(self) -> None:
        pass
