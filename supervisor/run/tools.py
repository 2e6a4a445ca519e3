"""The agent-tool interface: a small, sharp set of tools, their schemas, and the gate in front of them.

Every call comes back as a ToolOutcome the model can act on: a refusal says what is missing and which tool
to call instead. The gate is the supervisor's discipline: after a trial, only `write_journal`; when a
reflection is due, only `write_reflection`.
"""

from __future__ import annotations

import difflib
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any, Protocol

from supervisor.agents.base import ToolCall, ToolOutcome
from supervisor.core import events as ev
from supervisor.core import prompts
from supervisor.core.categories import CATEGORIES
from supervisor.core.failpoints import failpoint
from supervisor.core.types import JournalEntry, PlanStatus, Reflection, Trial
from supervisor.store.journal_files import JournalFiles
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


class TrialHost(Protocol):
    """What the tools need of the trials (the loop's TrialExecutor implements it; tests may too)."""

    @property
    def root(self) -> Path: ...

    @property
    def editable(self) -> str: ...

    def trial_budget_left(self) -> int | None: ...

    def run_trial(self, description: str, category: str | None, plan_id: int | None) -> ToolOutcome: ...

    def working_diff(self) -> str: ...

    def result_text(self, trial: Trial, parent: Trial | None) -> str: ...

    def results_table(self, last: int | None = None, status: str | None = None) -> str: ...


def obligation(ledger: Ledger) -> tuple[str | None, str]:
    """What must happen before anything else, derived from the ledger: ("journal" | "reflection", why)."""
    missing = ledger.trials_missing_journal()
    if missing:
        t = missing[0]
        return "journal", prompts.OBLIGATION_JOURNAL.format(
            trial_id=t.id, status=t.status, val_bpb=prompts.fmt(t.val_bpb), fields=", ".join(JOURNAL_FIELDS))
    triggers = ledger.open_triggers()
    if triggers:
        why = "; ".join(f"{t.kind}: {t.detail}" for t in triggers)
        return "reflection", prompts.OBLIGATION_REFLECTION.format(why=why, fields=", ".join(REFLECTION_FIELDS))
    return None, ""


def call_problem(call: ToolCall) -> str | None:
    """Why a call cannot be run as sent (unreadable, an unknown tool, input off the schema), or None."""
    if call.problem:
        return f"{call.name}: {call.problem}"
    if call.name not in TOOL_NAMES:
        return f"unknown tool {call.name!r}"
    return validate_input(call.name, call.input)


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
        return prompts.INPUT_NOT_OBJECT.format(name=name, fields=list(schema["properties"]))
    missing = [k for k in schema.get("required", []) if k not in args or args[k] is None]
    if missing:
        return prompts.INPUT_MISSING.format(name=name, missing=", ".join(missing))
    unknown = sorted(set(args) - set(schema["properties"]))
    if unknown:
        return prompts.INPUT_UNKNOWN.format(name=name, unknown=", ".join(unknown),
                                            fields=", ".join(schema["properties"]))
    for key, value in args.items():
        spec = schema["properties"][key]
        if value is not None and not _type_ok(value, spec):
            return prompts.INPUT_WRONG_TYPE.format(name=name, key=key, kind=spec.get("type"),
                                                   got=type(value).__name__)
        if "enum" in spec and value is not None and value not in spec["enum"]:
            return prompts.INPUT_NOT_IN_ENUM.format(name=name, key=key, choices=", ".join(spec["enum"]), value=value)
    return None


def _normal(text: Any) -> str:
    return " ".join(str(text or "").lower().split())


def entry_problems(fields: dict[str, str], names: tuple[str, ...],
                   previous: JournalEntry | Reflection | None = None) -> list[str]:
    """Why an entry is empty or boilerplate (an empty list: it is acceptable); `previous` is the last entry."""
    problems = []
    for name in names:
        text = " ".join(str(fields.get(name) or "").split())
        if text.lower().strip(" .!") in PLACEHOLDERS:
            problems.append(prompts.FIELD_PLACEHOLDER.format(name=name))
        elif len(re.findall(r"[A-Za-z0-9][\w.+-]*", text)) < MIN_FIELD_WORDS:
            problems.append(prompts.FIELD_TOO_SHORT.format(name=name))
    norm = [_normal(fields.get(n)) for n in names]
    if len(names) > 1 and len(set(norm)) == 1 and norm[0]:
        problems.append(prompts.FIELDS_ALL_SAME)
    if previous and not problems:
        repeated = [n for n, text in zip(names, norm, strict=True) if text and text == _normal(getattr(previous, n, None))]
        if len(repeated) >= max(2, len(names) // 2):
            problems.append(prompts.FIELDS_REPEATED.format(names=", ".join(repeated)))
    return problems


class ToolBox:
    """Every tool's handler, behind the journal/reflection gate.

    Narrow collaborators: the ledger (the record), the journal files and the event bus (to show what
    changed), and the trials (commit, run, decide: the loop's TrialExecutor).
    """

    def __init__(self, ledger: Ledger, files: JournalFiles, bus: ev.EventBus, trials: TrialHost) -> None:
        self.ledger = ledger
        self.files = files
        self.bus = bus
        self.trials = trials
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
            hint = prompts.UNKNOWN_TOOL_HINT.format(close=close[0]) if close else ""
            return self._error(call, prompts.UNKNOWN_TOOL.format(name=name, hint=hint, tools=", ".join(TOOL_NAMES)))
        problem = validate_input(name, call.input)
        if problem:
            return self._error(call, problem)
        kind, message = obligation(self.ledger)
        allowed = {"journal": "write_journal", "reflection": "write_reflection"}.get(kind or "")
        if allowed and name != allowed:
            return ToolOutcome(name, ok=False, refused=True, call_id=call.id,
                               content=prompts.REFUSED.format(message=message))
        try:
            outcome = self._handlers[name](call.input)
        except EditError as exc:
            outcome = ToolOutcome(name, ok=False, content=prompts.ERROR.format(message=exc))
        outcome.call_id = call.id
        return outcome

    @staticmethod
    def _error(call: ToolCall, message: str) -> ToolOutcome:
        return ToolOutcome(call.name, ok=False, content=prompts.ERROR.format(message=message), call_id=call.id)

    def _notify_plan(self, plan_id: int, status: str) -> None:
        self.files.render()
        self.bus.emit(ev.PLAN, plan_id=plan_id, status=status)

    # ---- the workspace -----------------------------------------------------------------------------------
    def _read_file(self, args: dict[str, Any]) -> ToolOutcome:
        text = read_file(self.trials.root, self._path(args["path"]), args.get("start_line"),
                         args.get("end_line"), editable=self.trials.editable)
        return ToolOutcome("read_file", ok=True, content=text)

    def _path(self, path: str) -> str:
        """Let the model say `train.py` for the editable file, whatever the layout."""
        editable = self.trials.editable
        if path.strip() in (editable.rsplit("/", 1)[-1], "./" + editable):
            return editable
        return path

    def _edit_file(self, args: dict[str, Any]) -> ToolOutcome:
        result = edit_file(self.trials.root, self._path(args["path"]), args["search"], args["replace"],
                           editable=self.trials.editable)
        return ToolOutcome("edit_file", ok=True, content=prompts.EDITED.format(
            editable=self.trials.editable, start=result.start_line, end=result.end_line, diff=result.diff))

    def _show_diff(self, args: dict[str, Any]) -> ToolOutcome:
        trial_id = args.get("trial_id")
        if trial_id is None:
            diff = self.trials.working_diff()
            return ToolOutcome("show_diff", ok=True, content=diff or prompts.NO_UNCOMMITTED_CHANGE)
        trial = self.ledger.trial(trial_id)
        if trial is None:
            return ToolOutcome("show_diff", ok=False, content=prompts.NO_SUCH_TRIAL.format(trial_id=trial_id))
        head = prompts.DIFF_HEAD.format(trial_id=trial.id, status=trial.status, description=trial.description)
        return ToolOutcome("show_diff", ok=True, content=head + (trial.diff or prompts.DIFF_EMPTY))

    # ---- trials ------------------------------------------------------------------------------------------
    def _run_trial(self, args: dict[str, Any]) -> ToolOutcome:
        description = " ".join(args["description"].split())
        if not description:
            return ToolOutcome("run_trial", ok=False, content=prompts.DESCRIPTION_EMPTY)
        if len(description) > 200:
            return ToolOutcome("run_trial", ok=False, content=prompts.DESCRIPTION_TOO_LONG)
        left = self.trials.trial_budget_left()
        if left is not None and left <= 0:
            return ToolOutcome("run_trial", ok=False, refused=True, content=prompts.TRIAL_BUDGET_SPENT)
        plan_id = args.get("plan_id")
        if plan_id is not None:
            plan = self.ledger.plan(plan_id)
            if plan is None or plan.status != PlanStatus.OPEN:
                return ToolOutcome("run_trial", ok=False, content=prompts.PLAN_NOT_OPEN.format(plan_id=plan_id))
        return self.trials.run_trial(description, args.get("category"), plan_id)

    def _get_results(self, args: dict[str, Any]) -> ToolOutcome:
        status = args.get("status")
        return ToolOutcome("get_results", ok=True,
                           content=self.trials.results_table(args.get("last"), None if status == "all" else status))

    # ---- the journal and reflections ----------------------------------------------------------------------
    def _write_journal(self, args: dict[str, Any]) -> ToolOutcome:
        fields = {k: args[k] for k in JOURNAL_FIELDS}
        missing = self.ledger.trials_missing_journal()
        if not missing:
            return ToolOutcome("write_journal", ok=False, content=prompts.NO_JOURNAL_PENDING)
        trial = missing[0]
        entries = self.ledger.journal_entries()
        problems = entry_problems(fields, JOURNAL_FIELDS, entries[-1] if entries else None)
        if problems:
            return ToolOutcome("write_journal", ok=False, refused=True, content=prompts.JOURNAL_REFUSED.format(
                trial_id=trial.id, problems="; ".join(problems)))
        parent = self.ledger.trial(trial.parent_trial) if trial.parent_trial else None
        result = prompts.JOURNAL_RESULT.format(status=trial.status, flag=" (flagged)" if trial.flagged else "",
                                               result=self.trials.result_text(trial, parent), decision=trial.decision)
        self.ledger.add_journal(trial.id, result=result, **{k: " ".join(fields[k].split()) for k in JOURNAL_FIELDS})
        failpoint("journal_recorded")
        self.files.render()
        self.bus.emit(ev.JOURNAL, trial_id=trial.id)
        kind, message = obligation(self.ledger)
        follow = prompts.JOURNAL_NEXT.format(message=message) if kind else ""
        return ToolOutcome("write_journal", ok=True,
                           content=prompts.JOURNAL_RECORDED.format(trial_id=trial.id, follow=follow))

    def _write_reflection(self, args: dict[str, Any]) -> ToolOutcome:
        fields = {k: args[k] for k in REFLECTION_FIELDS}
        previous = self.ledger.reflections()
        problems = entry_problems(fields, REFLECTION_FIELDS, previous[-1] if previous else None)
        if problems:
            return ToolOutcome("write_reflection", ok=False, refused=True,
                               content=prompts.REFLECTION_REFUSED.format(problems="; ".join(problems)))
        finished = self.ledger.finished_trials()
        rid = self.ledger.add_reflection(after_trial=finished[-1].id if finished else None,
                                         **{k: fields[k].strip() for k in REFLECTION_FIELDS})
        failpoint("reflection_recorded")
        self.files.render()
        self.bus.emit(ev.REFLECTION, reflection_id=rid)
        return ToolOutcome("write_reflection", ok=True, content=prompts.REFLECTION_RECORDED.format(reflection_id=rid))

    # ---- the plan queue -----------------------------------------------------------------------------------
    def _plan_add(self, args: dict[str, Any]) -> ToolOutcome:
        idea = " ".join(args["idea"].split())
        if len(idea) < 5:
            return ToolOutcome("plan_add", ok=False, content=prompts.PLAN_IDEA_TOO_SHORT)
        plan_id = self.ledger.add_plan(idea, args.get("rationale") or "")
        self._notify_plan(plan_id, PlanStatus.OPEN)
        return ToolOutcome("plan_add", ok=True, content=prompts.PLAN_ADDED.format(plan_id=plan_id, idea=idea))

    def _plan_drop(self, args: dict[str, Any]) -> ToolOutcome:
        plan = self.ledger.plan(args["plan_id"])
        if plan is None:
            return ToolOutcome("plan_drop", ok=False, content=prompts.NO_SUCH_PLAN.format(plan_id=args["plan_id"]))
        if plan.status != PlanStatus.OPEN:
            return ToolOutcome("plan_drop", ok=False, content=prompts.PLAN_NOT_OPEN_ANY_MORE.format(
                plan_id=plan.id, status=plan.status))
        reason = " ".join(args["reason"].split())
        if entry_problems({"reason": reason}, ("reason",)):
            return ToolOutcome("plan_drop", ok=False, refused=True, content=prompts.PLAN_DROP_NEEDS_REASON)
        self.ledger.drop_plan(plan.id, reason)
        self._notify_plan(plan.id, PlanStatus.DROPPED)
        return ToolOutcome("plan_drop", ok=True, content=prompts.PLAN_DROPPED.format(plan_id=plan.id, reason=reason))
