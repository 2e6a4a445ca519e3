"""The agent-tool interface: a small, sharp set of tools, their schemas, and the gate in front of them.

Every call comes back as a ToolOutcome the model can act on: a refusal says what is missing and which tool
to call instead. The gate is the supervisor's discipline: after a trial, only `write_journal`; when a
reflection is due, only `write_reflection`.
"""

from __future__ import annotations

import difflib
import re
from collections.abc import Callable
from typing import Any, Protocol

from supervisor.agents.base import ToolCall, ToolOutcome
from supervisor.core.categories import CATEGORIES
from supervisor.store.ledger import Ledger
from supervisor.trial.edits import EditError, edit_file, read_file

JOURNAL_FIELDS = ("hypothesis", "change", "interpretation", "next_step")
REFLECTION_FIELDS = ("load_bearing", "dead_ends", "retest", "plan")

_text = {"type": "string"}

TOOL_SCHEMAS: list[dict[str, Any]] = [
    {
        "name": "read_file",
        "description": "Read a file of the workspace with line numbers (e.g. trainer/train.py, trainer/prepare.py, "
                       "program.md). Optionally a line range.",
        "input_schema": {
            "type": "object",
            "properties": {"path": _text, "start_line": {"type": "integer"}, "end_line": {"type": "integer"}},
            "required": ["path"],
        },
    },
    {
        "name": "edit_file",
        "description": "Edit the training script by exact search and replace. `search` must occur exactly once "
                       "in the file, whitespace included; include enough surrounding lines to make it unique. "
                       "Only the training script may be edited.",
        "input_schema": {
            "type": "object",
            "properties": {"path": _text, "search": _text, "replace": _text},
            "required": ["path", "search", "replace"],
        },
    },
    {
        "name": "run_trial",
        "description": "Commit the current training script and run one fixed-budget training trial. Blocks until "
                       "it ends and returns val_bpb, the keep/discard decision (the supervisor's, by its policy) "
                       "and throughput. Afterwards you must write the journal entry before anything else.",
        "input_schema": {
            "type": "object",
            "properties": {
                "description": {"type": "string", "description": "one line: what this trial changes"},
                "category": {"type": "string", "enum": list(CATEGORIES)},
                "plan_id": {"type": "integer", "description": "the plan queue item this trial tries, if any"},
            },
            "required": ["description"],
        },
    },
    {
        "name": "write_journal",
        "description": "The lab-journal entry for the trial that just finished. The supervisor fills in the "
                       "numbers (val_bpb, deltas, throughput); you write the reasoning, each field a real "
                       "sentence or more.",
        "input_schema": {
            "type": "object",
            "properties": {
                "hypothesis": {"type": "string", "description": "what you expected and why"},
                "change": {"type": "string", "description": "what exactly changed in the code"},
                "interpretation": {"type": "string", "description": "what the result means, noise included"},
                "next_step": {"type": "string", "description": "what to do next because of it"},
            },
            "required": list(JOURNAL_FIELDS),
        },
    },
    {
        "name": "write_reflection",
        "description": "A reflection checkpoint: step back from single trials and look at the whole run.",
        "input_schema": {
            "type": "object",
            "properties": {
                "load_bearing": {"type": "string", "description": "what in the current script matters, and the evidence"},
                "dead_ends": {"type": "string", "description": "directions that failed and should be left alone"},
                "retest": {"type": "string", "description": "earlier near-misses worth re-testing under current conditions"},
                "plan": {"type": "string", "description": "the updated plan for the next trials"},
            },
            "required": list(REFLECTION_FIELDS),
        },
    },
    {
        "name": "get_results",
        "description": "The results table of this run (id, status, val_bpb, delta to parent, flag, steps, MFU, "
                       "VRAM, description).",
        "input_schema": {
            "type": "object",
            "properties": {
                "last": {"type": "integer", "description": "only the last N trials"},
                "status": {"type": "string", "enum": ["all", "keep", "discard", "crash"]},
            },
        },
    },
    {
        "name": "show_diff",
        "description": "A trial's diff against its parent, or with no trial_id the uncommitted change to the "
                       "training script.",
        "input_schema": {"type": "object", "properties": {"trial_id": {"type": "integer"}}},
    },
    {
        "name": "plan_add",
        "description": "Add an idea to the plan queue (ambitious ideas belong here, so they are not forgotten).",
        "input_schema": {
            "type": "object",
            "properties": {"idea": _text, "rationale": _text},
            "required": ["idea"],
        },
    },
    {
        "name": "plan_drop",
        "description": "Drop a planned idea. A stated reason is required; dropped plans stay visible.",
        "input_schema": {
            "type": "object",
            "properties": {"plan_id": {"type": "integer"}, "reason": _text},
            "required": ["plan_id", "reason"],
        },
    },
]

TOOL_NAMES = tuple(t["name"] for t in TOOL_SCHEMAS)
_SCHEMA_BY_NAME = {t["name"]: t for t in TOOL_SCHEMAS}

PLACEHOLDERS = {
    "", "n/a", "na", "none", "nothing", "tbd", "todo", "-", "--", "...", "same", "same as above", "see above",
    "as above", "ok", "done", "no comment", "nil", "null", "x", "?", "lorem ipsum", "placeholder",
}
MIN_FIELD_WORDS = 3


class Host(Protocol):
    """What the tools need from the loop. The loop implements it; tests may too."""

    ledger: Ledger

    @property
    def workspace_root(self) -> Any: ...

    @property
    def editable(self) -> str: ...

    def obligation(self) -> tuple[str | None, str]: ...

    def trial_budget_left(self) -> int | None: ...

    def run_trial(self, description: str, category: str | None, plan_id: int | None) -> ToolOutcome: ...

    def write_journal(self, fields: dict[str, str]) -> ToolOutcome: ...

    def write_reflection(self, fields: dict[str, str]) -> ToolOutcome: ...

    def results_table(self, last: int | None = None, status: str | None = None) -> str: ...

    def working_diff(self) -> str: ...

    def notify_plan(self, plan_id: int, status: str) -> None: ...


def _type_ok(value: Any, spec: dict[str, Any]) -> bool:
    kind = spec.get("type")
    if kind == "string":
        return isinstance(value, str)
    if kind == "integer":
        return isinstance(value, int) and not isinstance(value, bool)
    return True


def validate_input(name: str, args: Any) -> str | None:
    """None when the input fits the tool's schema, else an error for the model."""
    schema = _SCHEMA_BY_NAME[name]["input_schema"]
    if not isinstance(args, dict):
        return f"{name}: the input must be a JSON object with fields {list(schema['properties'])}"
    missing = [k for k in schema.get("required", []) if k not in args or args[k] is None]
    if missing:
        return f"{name}: missing required field(s): {', '.join(missing)}"
    unknown = sorted(set(args) - set(schema["properties"]))
    if unknown:
        return f"{name}: unknown field(s) {', '.join(unknown)}; the fields are {', '.join(schema['properties'])}"
    for key, value in args.items():
        spec = schema["properties"][key]
        if value is not None and not _type_ok(value, spec):
            return f"{name}: field {key!r} must be a {spec.get('type')}, got {type(value).__name__}"
        if "enum" in spec and value is not None and value not in spec["enum"]:
            return f"{name}: field {key!r} must be one of {', '.join(spec['enum'])}, got {value!r}"
    return None


def entry_problems(fields: dict[str, str], names: tuple[str, ...],
                   previous: dict[str, str] | None = None) -> list[str]:
    """Why an entry is empty or boilerplate (an empty list: it is acceptable)."""
    problems = []
    for name in names:
        text = " ".join(str(fields.get(name) or "").split())
        if text.lower().strip(" .!") in PLACEHOLDERS:
            problems.append(f"{name} is empty or a placeholder")
        elif len(re.findall(r"[A-Za-z0-9][\w.+-]*", text)) < MIN_FIELD_WORDS:
            problems.append(f"{name} is too short to say anything (write at least one real sentence)")
    norm = [" ".join(str(fields.get(n) or "").lower().split()) for n in names]
    if len(names) > 1 and len(set(norm)) == 1 and norm[0]:
        problems.append("all fields are the same text")
    if previous and not problems:
        repeated = [n for n in names if norm[names.index(n)] and
                    norm[names.index(n)] == " ".join(str(previous.get(n) or "").lower().split())]
        if len(repeated) >= max(2, len(names) // 2):
            problems.append(f"{', '.join(repeated)} repeat the previous entry word for word")
    return problems


class ToolBox:
    """Dispatches the agent's tool calls to the loop, behind the journal/reflection gate."""

    def __init__(self, host: Host) -> None:
        self.host = host
        self._handlers: dict[str, Callable[[dict[str, Any]], ToolOutcome]] = {
            "read_file": self._read_file,
            "edit_file": self._edit_file,
            "run_trial": self._run_trial,
            "write_journal": self._write_journal,
            "write_reflection": self._write_reflection,
            "get_results": self._get_results,
            "show_diff": self._show_diff,
            "plan_add": self._plan_add,
            "plan_drop": self._plan_drop,
        }

    def dispatch(self, call: ToolCall) -> ToolOutcome:
        name = call.name
        if name not in self._handlers:
            close = difflib.get_close_matches(name, TOOL_NAMES, n=1)
            hint = f" Did you mean {close[0]!r}?" if close else ""
            return self._error(call, f"unknown tool {name!r}.{hint} The tools are: {', '.join(TOOL_NAMES)}.")
        problem = validate_input(name, call.input)
        if problem:
            return self._error(call, problem)
        kind, message = self.host.obligation()
        allowed = {"journal": "write_journal", "reflection": "write_reflection"}.get(kind or "")
        if allowed and name != allowed:
            return ToolOutcome(name, ok=False, refused=True, call_id=call.id,
                               content=f"refused: {message}")
        try:
            outcome = self._handlers[name](call.input)
        except EditError as exc:
            outcome = ToolOutcome(name, ok=False, content=f"error: {exc}")
        outcome.call_id = call.id
        return outcome

    @staticmethod
    def _error(call: ToolCall, message: str) -> ToolOutcome:
        return ToolOutcome(call.name, ok=False, content=f"error: {message}", call_id=call.id)

    # ---- handlers --------------------------------------------------------------------------------------
    def _read_file(self, args: dict[str, Any]) -> ToolOutcome:
        text = read_file(self.host.workspace_root, self._path(args["path"]), args.get("start_line"),
                         args.get("end_line"), editable=self.host.editable)
        return ToolOutcome("read_file", ok=True, content=text)

    def _path(self, path: str) -> str:
        """Let the model say `train.py` for the editable file, whatever the layout."""
        editable = self.host.editable
        if path.strip() in (editable.rsplit("/", 1)[-1], "./" + editable):
            return editable
        return path

    def _edit_file(self, args: dict[str, Any]) -> ToolOutcome:
        result = edit_file(self.host.workspace_root, self._path(args["path"]), args["search"], args["replace"],
                           editable=self.host.editable)
        return ToolOutcome("edit_file", ok=True, content=f"edited {self.host.editable} "
                                                          f"(lines {result.start_line}-{result.end_line}):\n{result.diff}")

    def _run_trial(self, args: dict[str, Any]) -> ToolOutcome:
        description = " ".join(args["description"].split())
        if not description:
            return ToolOutcome("run_trial", ok=False, content="error: the description is empty; say in one line "
                                                              "what this trial changes")
        if len(description) > 200:
            return ToolOutcome("run_trial", ok=False,
                               content="error: the description must be one line of at most 200 characters")
        left = self.host.trial_budget_left()
        if left is not None and left <= 0:
            return ToolOutcome("run_trial", ok=False, refused=True,
                               content="refused: this run's trial budget (--max-trials) is spent; no more trials")
        plan_id = args.get("plan_id")
        if plan_id is not None:
            plan = self.host.ledger.plan(plan_id)
            if plan is None or plan["status"] != "open":
                return ToolOutcome("run_trial", ok=False,
                                   content=f"error: plan #{plan_id} is not an open plan; see the plan queue")
        return self.host.run_trial(description, args.get("category"), plan_id)

    def _write_journal(self, args: dict[str, Any]) -> ToolOutcome:
        return self.host.write_journal({k: args[k] for k in JOURNAL_FIELDS})

    def _write_reflection(self, args: dict[str, Any]) -> ToolOutcome:
        return self.host.write_reflection({k: args[k] for k in REFLECTION_FIELDS})

    def _get_results(self, args: dict[str, Any]) -> ToolOutcome:
        status = args.get("status")
        return ToolOutcome("get_results", ok=True,
                           content=self.host.results_table(args.get("last"), None if status == "all" else status))

    def _show_diff(self, args: dict[str, Any]) -> ToolOutcome:
        trial_id = args.get("trial_id")
        if trial_id is None:
            diff = self.host.working_diff()
            return ToolOutcome("show_diff", ok=True, content=diff or "(no uncommitted change)")
        trial = self.host.ledger.trial(trial_id)
        if trial is None:
            return ToolOutcome("show_diff", ok=False, content=f"error: there is no trial {trial_id}")
        head = f"trial {trial.id} ({trial.status}): {trial.description}\n"
        return ToolOutcome("show_diff", ok=True, content=head + (trial.diff or "(no change: a baseline or re-run)"))

    def _plan_add(self, args: dict[str, Any]) -> ToolOutcome:
        idea = " ".join(args["idea"].split())
        if len(idea) < 5:
            return ToolOutcome("plan_add", ok=False, content="error: describe the idea in a few words")
        plan_id = self.host.ledger.add_plan(idea, args.get("rationale") or "")
        self.host.notify_plan(plan_id, "open")
        return ToolOutcome("plan_add", ok=True, content=f"added plan #{plan_id}: {idea}")

    def _plan_drop(self, args: dict[str, Any]) -> ToolOutcome:
        plan = self.host.ledger.plan(args["plan_id"])
        if plan is None:
            return ToolOutcome("plan_drop", ok=False, content=f"error: there is no plan #{args['plan_id']}")
        if plan["status"] != "open":
            return ToolOutcome("plan_drop", ok=False, content=f"error: plan #{plan['id']} is already {plan['status']}")
        reason = " ".join(args["reason"].split())
        if entry_problems({"reason": reason}, ("reason",)):
            return ToolOutcome("plan_drop", ok=False, refused=True,
                               content="refused: dropping a plan needs a stated reason (a real sentence): why is "
                                       "it no longer worth trying?")
        self.host.ledger.drop_plan(plan["id"], reason)
        self.host.notify_plan(plan["id"], "dropped")
        return ToolOutcome("plan_drop", ok=True, content=f"dropped plan #{plan['id']}: {reason}")
