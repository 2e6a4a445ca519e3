"""What an agent sees (a TurnContext built fresh from durable state) and what it returns (tool calls).

Agents only turn model output into tool calls; they never touch git, the ledger or the trainer.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

from supervisor.core.errors import UserError
from supervisor.core.types import JournalEntry, Plan, Reflection


@dataclass
class ToolCall:
    name: str
    input: dict[str, Any]
    id: str | None = None
    # Set when the model's call could not be read (invalid JSON, not an object, cut off): the loop answers
    # it with this error instead of running it, so the model can fix the call on its next turn.
    problem: str | None = None


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


@dataclass(frozen=True)
class Machine:
    """What every trial of the run trains on and with: the same at every turn, so the prompt keeps it in its
    cached part. Strings are as the platform record has them ("unknown" when it could not be found out)."""

    accelerator: str               # cuda | rocm | mps | cpu | unknown: where the trainer's torch runs
    device: str                    # the GPU's name as torch sees it (a trial uses the first one), or "cpu"
    memory_mb: float | None        # the GPU's memory; on cpu and mps the machine's RAM
    cpu: str                       # the CPU model
    cpu_threads: str               # CPUs this process may use (torch's threads come from these)
    torch: str
    profile: str | None = None     # the data cache's profile ("small", "full")
    seq_len: int | None = None
    vocab_size: int | None = None
    train_tokens: int | None = None
    eval_tokens: int | None = None
    peak_flops: float | None = None  # what MFU is measured against; None: no MFU on this machine
    no_peak_reason: str = ""         # why there is no peak


@dataclass(frozen=True)
class SeedRun:
    """One seed of a noise measurement: what it scored and how far it got in the budget."""

    seed: int | None
    val_bpb: float
    num_steps: int | None


@dataclass(frozen=True)
class NoiseView:
    """The measurement behind the noise floor: each seed's val_bpb and steps, not only the spread."""

    seeds: tuple[SeedRun, ...]
    sd: float | None
    factor: float
    budget_s: float
    commit: str                    # the commit that was re-run
    trial_id: int | None           # the trial whose code that is, when one is


@dataclass(frozen=True)
class StepSize:
    """Tokens per optimizer step of one trial's script (from its summary), and which trial that is."""

    trial_id: int
    tokens: int
    role: str                      # "the last keep", "the last trial"


@dataclass
class TurnContext:
    """Everything one turn is built from, read fresh from the ledger and the workspace."""

    program: str
    editable: str
    train_py: str
    results: list[dict[str, Any]]
    recent_journal: list[JournalEntry]
    latest_reflection: Reflection | None
    plans: list[Plan]
    steering: list[str]               # the person's messages not yet acknowledged, oldest first
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
    # Trials the person stopped with the stop-trial command (status "aborted"), oldest first: never measured,
    # so not in `results`, yet a rejected change an agent should not run again.
    stopped: list[dict[str, Any]] = field(default_factory=list)
    # Lines of the editable file changed since the last keep and not yet run (an edit whose run_trial failed).
    uncommitted_lines: int = 0
    budget_tokens: int | None = None  # a token budget (--budget-tokens): then speed does not count
    # The machine and data every trial uses (None where it is not known: a context built by hand).
    machine: Machine | None = None
    # The latest noise measurement at this budget, seed by seed.
    noise: NoiseView | None = None
    # Tokens per step of the script as kept, and of the last trial when that differs.
    step_sizes: list[StepSize] = field(default_factory=list)
    steering_ids: list[int] = field(default_factory=list)  # the numbers of `steering`'s messages, same order


class Agent(Protocol):
    """What the loop drives. Optional extras an agent may have (the loop looks for them with getattr):

    - `on_text: Callable[[str], None] | None`, an attribute the loop sets: called with each piece of the
      reply's text as it streams in, so a UI can show the agent's words as they come;
    - `probe() -> dict | None`: a cheap request that raises AgentUnavailable while the API is still down,
      and returns the usage it cost (or None) once it answers; the loop uses it to end an outage pause.
    """

    name: str

    def turn(self, ctx: TurnContext) -> AgentTurn: ...

    def close(self) -> None: ...


TextListener = Callable[[str], None]


# ---- what can go wrong with a model API --------------------------------------------------------------
class AgentError(RuntimeError):
    """An agent could not produce a turn. The subclasses say what the loop should do about it."""


class AgentUnavailable(AgentError):
    """The API did not answer usefully even after the SDK's own retries: rate limited, overloaded, a server
    error, a timeout or a dropped connection. The loop waits and tries again, and pauses after an outage."""

    def __init__(self, message: str, *, retry_after: float | None = None, status: int | None = None) -> None:
        super().__init__(message)
        self.retry_after = retry_after
        self.status = status


class AgentRequestError(AgentError):
    """The API refused this request for a reason retrying will not fix (too long, quota exhausted, bad
    parameter). The loop pauses and says why; the person fixes it and resumes."""


class AgentAuthError(UserError, AgentError):
    """The API key is missing or was rejected. The run stops; the message names the variable to set."""


class AgentConfigError(UserError, AgentError):
    """The agent's settings are wrong (unknown model, wrong base URL). The run stops; the message says how."""
