"""The agent-tool interface: a small, sharp set of tools, their schemas, and the gate in front of them.

Every call comes back as a ToolOutcome the model can act on: a refusal says what is missing and which tool
to call instead. The gate is the supervisor's discipline: after a trial, only `write_journal`; when a
reflection is due, only `write_reflection`; in both cases `inspect_trial` too, which changes nothing.
`run_trial` refuses a change an earlier trial already made (supervisor.core.repeats), before anything is
committed, unless the agent names that trial in `retest_of`: a deliberate re-test.

The model is an adversary of the metric and sometimes simply wrong, so no input may crash the supervisor:
every field is checked against its schema (type, bool is not an integer, integer bounds that fit SQLite,
string lengths, no NUL bytes, control characters or lone surrogates) before any handler sees it, each refusal
says what was wrong and what is accepted, and `ToolBox.dispatch` turns any exception that still escapes
a handler into a tool error (logged with its traceback), so that one bad call does not end the night.
Only a failing machine gets through: storage errors (OSError, sqlite3.Error), which the loop turns into a
clean stop that `--resume` continues, and UserError, which the person must fix.
"""

from __future__ import annotations

import difflib
import logging
import math
import re
import sqlite3
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any, Protocol

from supervisor.agents.base import ToolCall, ToolOutcome
from supervisor.core import events as ev
from supervisor.core import prompts
from supervisor.core.categories import CATEGORIES
from supervisor.core.errors import UserError
from supervisor.core.failpoints import failpoint
from supervisor.core.repeats import RepeatMatch, find_repeat
from supervisor.core.types import JournalEntry, PlanStatus, Reflection, Trial
from supervisor.run import trial_view
from supervisor.store.journal_files import JournalFiles
from supervisor.store.ledger import Ledger
from supervisor.trial.edits import MAX_PATH_CHARS, EditError, check_path_text, edit_file, printable, read_file

log = logging.getLogger(__name__)

JOURNAL_FIELDS = ("hypothesis", "change", "interpretation", "next_step")
REFLECTION_FIELDS = ("load_bearing", "dead_ends", "retest", "plan")

# Bounds of the tools' input, in their schemas (so the model is told them) and enforced by validate_input.
MAX_ID = 2**63 - 1  # plan and trial ids are SQLite integers: 64-bit
MAX_LINE_NUMBER = 1_000_000_000
MAX_RESULTS_ROWS = 10_000
MAX_EDIT_TEXT_CHARS = 100_000  # search or replace: the whole training script is ~30 KB
MAX_DESCRIPTION_CHARS = 200
MAX_JOURNAL_FIELD_CHARS = 4_000
MAX_REFLECTION_FIELD_CHARS = 8_000
MAX_PLAN_TEXT_CHARS = 2_000
# What a schema leaves unbounded: a string field without maxLength, an integer without minimum/maximum.
DEFAULT_MAX_STRING_CHARS = 10_000
_INT64 = (-(2**63), 2**63 - 1)
_MAX_NAME_CHARS = 100  # a tool name longer than this names no tool
# NUL and the other control characters but tab, newline, carriage return and form feed; C1 controls;
# lone surrogates (not encodable: SQLite and every file would refuse them).
_BAD_TEXT_CHAR = re.compile("[\x00-\x08\x0b\x0e-\x1f\x7f-\x9f\ud800-\udfff]")


def _text(limit: int, description: str | None = None) -> dict[str, Any]:
    spec: dict[str, Any] = {"type": "string", "maxLength": limit}
    if description:
        spec["description"] = description
    return spec


def _id(description: str | None = None) -> dict[str, Any]:
    spec: dict[str, Any] = {"type": "integer", "minimum": 1, "maximum": MAX_ID}
    if description:
        spec["description"] = description
    return spec


_path = _text(MAX_PATH_CHARS)
_line = {"type": "integer", "minimum": 1, "maximum": MAX_LINE_NUMBER}
_edit_text = _text(MAX_EDIT_TEXT_CHARS)
_plan_text = _text(MAX_PLAN_TEXT_CHARS)

TOOL_SCHEMAS: list[dict[str, Any]] = [
    {
        "name": "read_file",
        "description": "Read a file of the workspace with line numbers (e.g. trainer/train.py, trainer/prepare.py, "
                       "program.md). Optionally a line range.",
        "input_schema": {
            "type": "object",
            "properties": {"path": _path, "start_line": _line, "end_line": _line},
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
            "properties": {"path": _path, "search": _edit_text, "replace": _edit_text},
            "required": ["path", "search", "replace"],
        },
    },
    {
        "name": "run_trial",
        "description": "Commit the current training script and run one fixed-budget training trial. Blocks until "
                       "it ends and returns val_bpb, the keep/discard decision (the supervisor's, by its policy) "
                       "and throughput. Afterwards you must write the journal entry before anything else. A change "
                       "an earlier trial already made (exactly, or written differently: whitespace, number "
                       "formats, quotes, comments) is refused, naming that trial and its result; to test it "
                       "again on purpose, send retest_of with that trial's id.",
        "input_schema": {
            "type": "object",
            "properties": {
                "description": _text(MAX_DESCRIPTION_CHARS, "one line: what this trial changes"),
                "category": {"type": "string", "enum": list(CATEGORIES)},
                "plan_id": _id("the plan queue item this trial tries, if any"),
                "retest_of": _id("only for a deliberate re-test: the earlier trial whose change this one runs "
                                 "again"),
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
                "hypothesis": _text(MAX_JOURNAL_FIELD_CHARS, "what you expected and why"),
                "change": _text(MAX_JOURNAL_FIELD_CHARS, "what exactly changed in the code"),
                "interpretation": _text(MAX_JOURNAL_FIELD_CHARS, "what the result means, noise included"),
                "next_step": _text(MAX_JOURNAL_FIELD_CHARS, "what to do next because of it"),
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
                "load_bearing": _text(MAX_REFLECTION_FIELD_CHARS,
                                      "what in the current script matters, and the evidence"),
                "dead_ends": _text(MAX_REFLECTION_FIELD_CHARS, "directions that failed and should be left alone"),
                "retest": _text(MAX_REFLECTION_FIELD_CHARS,
                                "earlier near-misses worth re-testing under current conditions"),
                "plan": _text(MAX_REFLECTION_FIELD_CHARS, "the updated plan for the next trials"),
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
                "last": {"type": "integer", "minimum": 1, "maximum": MAX_RESULTS_ROWS,
                         "description": "only the last N trials"},
                "status": {"type": "string", "enum": ["all", "keep", "discard", "crash", "held"]},
            },
        },
    },
    {
        "name": "show_diff",
        "description": "A trial's diff against its parent, or with no trial_id the uncommitted change to the "
                       "training script.",
        "input_schema": {"type": "object", "properties": {"trial_id": _id()}},
    },
    {
        "name": "inspect_trial",
        "description": "Look inside a trial, read-only (also while a journal entry or reflection is "
                       "due). part=curve: its training loss next to its parent's (or another trial's, with "
                       "`against`) at matched steps and at matched tokens; part=timing: where its time went "
                       "(start-up, compile, training, hand-over, evaluation) next to the other trial's; "
                       "part=log: the last `lines` lines of its log (its own stdout and stderr).",
        "input_schema": {
            "type": "object",
            "properties": {
                "trial_id": _id(),
                "part": {"type": "string", "enum": list(trial_view.PARTS)},
                "against": _id("compare with this trial instead of the parent"),
                "lines": {"type": "integer", "minimum": 1, "maximum": trial_view.LOG_LINES_MAX,
                          "description": f"log lines to show (default {trial_view.LOG_LINES_DEFAULT})"},
            },
            "required": ["trial_id", "part"],
        },
    },
    {
        "name": "revert_edits",
        "description": "Throw away the uncommitted change to the training script: it goes back to the last "
                       "keep. Use it to abandon an edit instead of running it.",
        "input_schema": {"type": "object", "properties": {}},
    },
    {
        "name": "acknowledge_steering",
        "description": "Acknowledge a message from the person (numbered #N in your prompt) and say what you will "
                       "do about it. A message stays in your prompt until you acknowledge it here or answer it "
                       "in a journal entry.",
        "input_schema": {
            "type": "object",
            "properties": {
                "steering_id": _id("the message's number"),
                "reply": _text(MAX_PLAN_TEXT_CHARS, "what you will do about it, in a sentence or more"),
            },
            "required": ["steering_id", "reply"],
        },
    },
    {
        "name": "plan_add",
        "description": "Add an idea to the plan queue (ambitious ideas belong here, so they are not forgotten).",
        "input_schema": {
            "type": "object",
            "properties": {"idea": _plan_text, "rationale": _plan_text},
            "required": ["idea"],
        },
    },
    {
        "name": "plan_drop",
        "description": "Drop a planned idea. A stated reason is required; dropped plans stay visible.",
        "input_schema": {
            "type": "object",
            "properties": {"plan_id": _id(), "reason": _plan_text},
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

    def run_trial(self, description: str, category: str | None, plan_id: int | None,
                  same_change_as: Trial | None = None) -> ToolOutcome: ...

    def working_diff(self) -> str: ...

    def revert_edits(self) -> str: ...

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
        return f"{_label(call.name)}: {printable(str(call.problem), 2000)}"
    if not isinstance(call.name, str) or call.name not in TOOL_NAMES:
        return f"unknown tool {_shown(call.name)}"
    return validate_input(call.name, call.input)


# ---- input validation: each refusal says what was wrong and what is accepted ----------------------------------
_KINDS = {
    "string": "a string",
    "integer": "a whole number (a JSON integer: not a string, a boolean or a decimal)",
    "number": "a finite number",
    "boolean": "true or false",
    "array": "a JSON array",
    "object": "a JSON object",
}


def _type_ok(value: Any, spec: dict[str, Any]) -> bool:
    kind = spec.get("type")
    if kind == "string":
        return isinstance(value, str)
    if kind == "integer":
        return isinstance(value, int) and not isinstance(value, bool)
    if kind == "number":
        return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)
    if kind == "boolean":
        return isinstance(value, bool)
    if kind == "array":
        return isinstance(value, list)
    if kind == "object":
        return isinstance(value, dict)
    return True


def _json_kind(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int):
        return "an integer"
    if isinstance(value, float):
        return "a decimal number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, dict):
        return "a JSON object"
    if isinstance(value, list | tuple):
        return "a JSON array"
    return f"a {type(value).__name__}"


def _shown(value: Any, limit: int = 60) -> str:
    """A short, printable rendering of a value the model sent (never the whole of a huge one)."""
    if isinstance(value, bool) or value is None:
        return "null" if value is None else str(value).lower()
    if isinstance(value, int):
        if value.bit_length() > 128:
            return f"an integer of {len(str(abs(value))) if value.bit_length() < 10_000 else 'thousands of'} digits"
        text = str(value)
    elif isinstance(value, float):
        text = repr(value)
    elif isinstance(value, str):
        text = repr(value[:limit]) + ("..." if len(value) > limit else "")
    else:
        return _json_kind(value)
    return printable(text, limit)


def _label(name: Any) -> str:
    """A tool name fit to show and to store, whatever the model sent as one."""
    if isinstance(name, str) and len(name) <= _MAX_NAME_CHARS and not _BAD_TEXT_CHAR.search(name):
        return name
    return _shown(name, 40)


def validate_input(name: str, args: Any) -> str | None:
    """None when the input fits the tool's schema, else an error for the model (what was wrong, what is accepted)."""
    schema = _SCHEMA_BY_NAME[name]["input_schema"]
    props: dict[str, dict[str, Any]] = schema["properties"]
    if not isinstance(args, dict):
        return prompts.INPUT_NOT_OBJECT.format(name=name, fields=list(props))
    required = schema.get("required", [])
    missing = [k for k in required if args.get(k) is None]
    if missing:
        return prompts.INPUT_MISSING_FIELDS.format(name=name, missing=", ".join(missing), fields=", ".join(props),
                                                   required=", ".join(required))
    unknown = [k for k in args if not isinstance(k, str) or k not in props]
    if unknown:
        shown = ", ".join(_shown(k, 40) for k in unknown[:5]) + (f" (and {len(unknown) - 5} more)"
                                                               if len(unknown) > 5 else "")
        return prompts.INPUT_UNKNOWN_FIELDS.format(name=name, unknown=shown, fields=", ".join(props))
    for key, value in args.items():
        if value is not None:
            problem = _value_problem(name, key, value, props[key])
            if problem:
                return problem
    return None


def _value_problem(name: str, key: str, value: Any, spec: dict[str, Any]) -> str | None:
    kind = spec.get("type")
    if not _type_ok(value, spec):
        got = _json_kind(value)
        if isinstance(value, str | int | float):
            got += f" ({_shown(value)})"
        return prompts.INPUT_WRONG_KIND.format(name=name, key=key, kind=_KINDS.get(str(kind), str(kind)), got=got)
    if "enum" in spec and value not in spec["enum"]:
        return prompts.INPUT_NOT_ONE_OF.format(name=name, key=key, choices=", ".join(map(str, spec["enum"])),
                                               value=_shown(value))
    if kind == "string":
        return _string_problem(name, key, value, spec)
    if kind == "integer":
        low, high = spec.get("minimum", _INT64[0]), spec.get("maximum", _INT64[1])
        if not low <= value <= high:
            return prompts.INPUT_OUT_OF_RANGE.format(name=name, key=key, minimum=low, maximum=high, value=_shown(value))
    return None


def _string_problem(name: str, key: str, value: str, spec: dict[str, Any]) -> str | None:
    limit = spec.get("maxLength", DEFAULT_MAX_STRING_CHARS)
    if len(value) > limit:
        return prompts.INPUT_TOO_LONG.format(name=name, key=key, length=len(value), limit=limit)
    if len(value) < spec.get("minLength", 0):
        return prompts.INPUT_TOO_SHORT.format(name=name, key=key, limit=spec["minLength"])
    bad = _BAD_TEXT_CHAR.search(value)
    if bad:
        char = bad.group()
        what = ("a NUL byte" if char == "\0" else "invalid unicode (a lone surrogate)" if "\ud800" <= char <= "\udfff"
                else "a control character")
        return prompts.INPUT_BAD_CHARACTER.format(name=name, key=key, what=what, char=ascii(char), pos=bad.start())
    if key == "path":
        try:
            check_path_text(value)
        except EditError as exc:
            return f"{name}: {exc}"
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


# Failures of the machine, not of the call: they stop the run as before (see Supervisor.run).
_MACHINE_FAILURES = (OSError, sqlite3.Error, UserError)


def _first_line(exc: BaseException, limit: int = 200) -> str:
    """The first line of an exception's message, short and printable (its __str__ may itself fail)."""
    try:
        text = str(exc)
    except Exception:
        text = ""
    return printable(next(iter(text.splitlines()), ""), limit) or "no message"


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
            "inspect_trial": self._inspect_trial,
            "revert_edits": self._revert_edits,
            "acknowledge_steering": self._acknowledge_steering,
            "plan_add": self._plan_add,
            "plan_drop": self._plan_drop,
        }

    def dispatch(self, call: ToolCall) -> ToolOutcome:
        """Run one call; whatever its input, the answer is a ToolOutcome and nothing is raised.

        An exception a handler did not foresee is a supervisor bug: it is logged with its traceback and the
        model gets a tool error naming it, so that the run goes on. What the model cannot fix is not its
        to see: a storage failure (the disk is full; the loop stops cleanly, every finished trial safe)
        and a UserError (the person must fix something) propagate as they always did.
        """
        try:
            outcome = self._dispatch(call)
            if not isinstance(outcome, ToolOutcome) or not isinstance(outcome.content, str):
                raise TypeError(f"the handler returned {type(outcome).__name__}, not a ToolOutcome with text")
        except _MACHINE_FAILURES:
            raise
        except Exception as exc:  # the last resort: one bad call must not end the night
            tool = _label(getattr(call, "name", None))
            log.exception("tool call %s failed inside the supervisor", tool)
            outcome = ToolOutcome(tool, ok=False, content=prompts.ERROR.format(message=prompts.TOOL_FAILED.format(
                tool=tool, kind=type(exc).__name__, detail=_first_line(exc))))
        outcome.call_id = getattr(call, "id", None)
        return outcome

    def _dispatch(self, call: ToolCall) -> ToolOutcome:
        name = call.name
        if not isinstance(name, str):
            return self._error(call, prompts.TOOL_NAME_NOT_TEXT.format(got=_json_kind(name), tools=", ".join(TOOL_NAMES)))
        if name not in self._handlers:
            close = difflib.get_close_matches(name, TOOL_NAMES, n=1) if len(name) <= _MAX_NAME_CHARS else []
            hint = prompts.UNKNOWN_TOOL_HINT.format(close=close[0]) if close else ""
            return self._error(call, prompts.UNKNOWN_TOOL.format(name=_label(name), hint=hint,
                                                                 tools=", ".join(TOOL_NAMES)))
        problem = validate_input(name, call.input)
        if problem:
            return self._error(call, problem)
        kind, message = obligation(self.ledger)
        allowed = {"journal": "write_journal", "reflection": "write_reflection"}.get(kind or "")
        # Looking inside a trial changes nothing, and a good journal entry or reflection is written from it.
        if allowed and name not in (allowed, "inspect_trial"):
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
        return ToolOutcome(_label(call.name), ok=False, content=prompts.ERROR.format(message=message),
                           call_id=call.id)

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

    def _inspect_trial(self, args: dict[str, Any]) -> ToolOutcome:
        ok, text = trial_view.inspect_trial(self.ledger, self.files.paths, args["trial_id"], args["part"],
                                            against=args.get("against"), lines=args.get("lines"))
        return ToolOutcome("inspect_trial", ok=ok, content=text)

    def _revert_edits(self, args: dict[str, Any]) -> ToolOutcome:  # noqa: ARG002 - it takes no arguments
        dropped = self.trials.revert_edits()
        if not dropped:
            return ToolOutcome("revert_edits", ok=True, content=prompts.NOTHING_TO_REVERT)
        return ToolOutcome("revert_edits", ok=True, content=prompts.REVERTED.format(
            editable=self.trials.editable, diff=dropped))

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
        trials = self.ledger.trials()
        best = self.ledger.best_keep()
        diff = self.trials.working_diff()
        repeat = find_repeat(diff, best.id if best else None, trials)
        if repeat is not None and args.get("retest_of") is None:
            return self._refuse_repeat(repeat, description)
        retest_of, retest_note = self._retest_link(args.get("retest_of"), repeat)
        if retest_of is not None and repeat is None and not diff.strip() and best and best.id == retest_of:
            retest_note = prompts.RETEST_RECORDED.format(trial_id=retest_of)  # the keep's code run again
        plan_id, note = self._plan_link(args.get("plan_id"))
        # A re-test of the change an earlier trial made to this same keep: their runs are judged together.
        same_change = repeat.trial if repeat is not None and repeat.same_parent and retest_of is not None else None
        outcome = self.trials.run_trial(description, args.get("category"), plan_id, same_change_as=same_change)
        # The trial it ran, if it ran one (a refusal inside, a changed harness, runs none): the next id.
        ran = self.ledger.trial(max((t.id for t in trials), default=0) + 1)
        if ran is not None and retest_of is not None:
            self.ledger.set_retest_of(ran.id, retest_of)
            self.files.render()
        notes = [n for n in (note, retest_note if ran is not None else "") if n]
        return replace(outcome, content="\n".join([*notes, outcome.content])) if notes else outcome

    def _refuse_repeat(self, repeat: RepeatMatch, description: str) -> ToolOutcome:
        """A change an earlier trial already measured, sent without retest_of: not run, counted, shown."""
        earlier = repeat.trial
        self.ledger.add_repeat(earlier.id, repeat.match, description)
        self.files.render()
        self.bus.emit(ev.NOTICE, level="info", message=prompts.REPEAT_NOTICE.format(
            description=description, trial_id=earlier.id, match=repeat.match,
            base=prompts.REPEAT_NOTICE_SAME if repeat.same_parent else prompts.REPEAT_NOTICE_OTHER))
        return ToolOutcome("run_trial", ok=False, refused=True, content=prompts.repeat_refused(
            repeat, self.ledger.journal_for(earlier.id), self.trials.editable))

    def _retest_link(self, asked: int | None, repeat: RepeatMatch | None) -> tuple[int | None, str]:
        """The earlier trial a deliberate re-test is linked to, and a note for the agent. An optional link never
        stops a trial: the trial the change repeats wins over a wrong id; an id that names no judged trial, with
        nothing repeated, is ignored."""
        if asked is None:
            return None, ""
        named = self.ledger.trial(asked)
        why = None
        if named is None:
            why = prompts.RETEST_NO_SUCH_TRIAL
        elif not named.status.finished:
            why = prompts.RETEST_NOT_JUDGED.format(status=named.status)
        if repeat is not None:
            match_id = repeat.trial.id
            if match_id == asked or asked in self._retest_chain(repeat.trial):
                return asked, prompts.RETEST_RECORDED.format(trial_id=asked)
            if why is None:
                return match_id, prompts.RETEST_OTHER_MATCH.format(match_id=match_id, asked=asked)
            return match_id, prompts.RETEST_UNKNOWN_MATCH.format(match_id=match_id, asked=asked, why=why)
        if why is not None:
            return None, prompts.RETEST_LINK_IGNORED.format(asked=asked, why=why)
        return asked, prompts.RETEST_NO_MATCH.format(trial_id=asked)

    def _retest_chain(self, trial: Trial) -> set[int]:
        """The trials a re-test re-tested, back to the first (a re-test of a re-test names the same change)."""
        chain: set[int] = set()
        while trial.retest_of is not None and trial.retest_of not in chain:
            chain.add(trial.retest_of)
            earlier = self.ledger.trial(trial.retest_of)
            if earlier is None:
                break
            trial = earlier
        return chain

    def _plan_link(self, plan_id: int | None) -> tuple[int | None, str]:
        """The plan a trial is linked to, and a note for the agent. An optional link never stops a trial:
        an unknown or dropped plan is ignored, a tried one is linked again as a re-test."""
        if plan_id is None:
            return None, ""
        plan = self.ledger.plan(plan_id)
        if plan is None or plan.status == PlanStatus.DROPPED:
            why = f"was dropped ({plan.reason})" if plan is not None else "is not in the plan queue"
            return None, prompts.PLAN_LINK_IGNORED.format(plan_id=plan_id, why=why)
        if plan.status == PlanStatus.TRIED:
            first = f" in trial {plan.trial_id}" if plan.trial_id else ""
            return plan_id, prompts.PLAN_RETEST.format(plan_id=plan_id, first=first)
        return plan_id, ""

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
        # The messages this turn's prompt showed are answered by the entry (the loop marks them delivered first).
        answered = [m.id for m in self.ledger.unacknowledged_steering() if m.delivered is not None]
        if answered:
            self.ledger.acknowledge_steering(answered, "journal", f"journal entry for trial {trial.id}")
        self.files.render()
        self.bus.emit(ev.JOURNAL, trial_id=trial.id)
        kind, message = obligation(self.ledger)
        follow = prompts.JOURNAL_NEXT.format(message=message) if kind else ""
        if answered:
            follow = prompts.JOURNAL_ACKNOWLEDGES.format(numbers=", ".join(f"#{i}" for i in answered)) + follow
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

    # ---- the person's messages -----------------------------------------------------------------------------
    def _acknowledge_steering(self, args: dict[str, Any]) -> ToolOutcome:
        number = args["steering_id"]
        message = next((m for m in self.ledger.steering() if m.id == number), None)
        if message is None:
            return ToolOutcome("acknowledge_steering", ok=False,
                               content=prompts.NO_SUCH_STEERING.format(steering_id=number))
        if message.acknowledged is not None:
            return ToolOutcome("acknowledge_steering", ok=True, content=prompts.STEERING_ALREADY_ACKNOWLEDGED.format(
                steering_id=number, how=message.ack_how or "earlier"))
        if message.delivered is None:  # typed while this reply was on its way: it has not been read yet
            return ToolOutcome("acknowledge_steering", ok=False,
                               content=prompts.NO_SUCH_STEERING.format(steering_id=number))
        reply = " ".join(args["reply"].split())
        if len(reply.split()) < MIN_FIELD_WORDS or reply.lower() in PLACEHOLDERS:
            return ToolOutcome("acknowledge_steering", ok=False, content=prompts.STEERING_REPLY_TOO_SHORT.format(
                steering_id=number, words=MIN_FIELD_WORDS))
        self.ledger.acknowledge_steering([number], "tool", reply)
        self.files.render()
        self.bus.emit(ev.STEERING_ACKNOWLEDGED, steering_id=number, reply=reply)
        return ToolOutcome("acknowledge_steering", ok=True,
                           content=prompts.STEERING_ACKNOWLEDGED.format(steering_id=number))

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
