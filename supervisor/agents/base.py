"""What an agent sees (a TurnContext built fresh from durable state) and what it returns (tool calls).

Agents only turn model output into tool calls; they never touch git, the ledger or the trainer.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Protocol


@dataclass
class ToolCall:
    name: str
    input: dict[str, Any]
    id: str | None = None


@dataclass
class ToolOutcome:
    """The result of one tool call, as the agent will see it next turn."""

    tool: str
    ok: bool
    content: str
    refused: bool = False
    call_id: str | None = None


@dataclass
class AgentTurn:
    text: str = ""
    calls: list[ToolCall] = field(default_factory=list)
    done: bool = False  # the agent has nothing more to do (a script that ran out)
    usage: dict[str, Any] | None = None


@dataclass
class TurnContext:
    """Everything one turn is built from, read fresh from the ledger and the workspace."""

    program: str
    editable: str
    train_py: str
    results_table: str
    results: list[dict[str, Any]]
    recent_journal: list[dict[str, Any]]
    latest_reflection: dict[str, Any] | None
    plans: list[dict[str, Any]]
    steering: list[str]
    last_outcomes: list[ToolOutcome]
    obligation: str | None            # None | "journal" | "reflection"
    obligation_message: str
    pending_trial: dict[str, Any] | None  # the trial awaiting its journal entry
    trials_done: int
    max_trials: int | None
    budget_s: float
    policy: str
    noise_floor: float | None
    best: dict[str, Any] | None
    profile: str | None
    tools: list[dict[str, Any]]


class Agent(Protocol):
    name: str

    def turn(self, ctx: TurnContext) -> AgentTurn: ...

    def close(self) -> None: ...
