"""No tool input crashes the supervisor: every tool, driven from its own JSON schema by hypothesis.

The model is an adversary of the metric and sometimes simply wrong, and a trial can leave anything in the
workspace. So every tool in TOOL_NAMES gets valid values, hostile values of the right type (NUL bytes, lone
surrogates, control characters, huge integers, strings over their limit and of a megabyte, paths out of the
workspace, to a hard link, a symlink out, a FIFO) and values of the wrong type (None, booleans, NaN and
infinities, lists, objects, nested garbage), with required keys missing and unknown keys added. The
strategies are built from TOOL_SCHEMAS, so a new tool is covered without touching this file.

Each call goes through a real ToolBox over a real ledger, journal files and git workspace; only the trial
itself is a stand-in (no training runs). Whatever the input: dispatch returns a ToolOutcome, its text is
short, storable and never a file from outside the workspace, the last-resort guard is never needed, and
the ledger is readable afterwards.
"""

from __future__ import annotations

import logging
import math
import os
import re
import threading
import time
import tracemalloc
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from supervisor.agents.base import ToolCall, ToolOutcome
from supervisor.core import events as ev
from supervisor.core import prompts
from supervisor.core.categories import CATEGORIES
from supervisor.core.config import Layout
from supervisor.core.types import PlanStatus, Trial
from supervisor.run.tools import (
    MAX_ID,
    TOOL_NAMES,
    TOOL_SCHEMAS,
    ToolBox,
    validate_input,
)
from supervisor.store.journal_files import JournalFiles
from supervisor.store.ledger import Ledger
from supervisor.trial.workspace import Workspace

PROJECT = Path(__file__).resolve().parent.parent
EDITABLE = "trainer/train.py"
SECRET = "outside-secret-7f3a9c1e: this text lives outside the workspace"
MAX_ERROR_CHARS = 20_000  # what a refusal may cost the model's context
MAX_CONTENT_CHARS = 60_000  # a read (20,000 characters and a note) or a diff (8,000) is far below
FAILED_MARK = "the supervisor failed while running"  # prompts.TOOL_FAILED: the last-resort guard fired
# The file names a trial could have left in the workspace (made by `hostile_workspace`).
HOSTILE_FILES = ["leak.txt", "out.txt", "pipe", "data", "data/notes.txt", "binary.bin", "up/secret.txt"]


# ---- the stand-in trial and the harness --------------------------------------------------------------------
class FakeTrials:
    """The TrialHost the tools see, over a real workspace and ledger; run_trial trains nothing.

    It notes any argument that reached it off its contract: the validation in front of it must have
    stopped those (an assertion here would be swallowed by dispatch's guard, so it is recorded instead).
    """

    def __init__(self, workspace: Workspace, ledger: Ledger) -> None:
        self.workspace = workspace
        self.ledger = ledger
        self.violations: list[str] = []
        self.runs = 0

    @property
    def root(self) -> Path:
        return self.workspace.root

    @property
    def editable(self) -> str:
        return EDITABLE

    def trial_budget_left(self) -> int | None:
        return None

    def run_trial(self, description: str, category: str | None, plan_id: int | None,
                  same_change_as=None) -> ToolOutcome:
        if not (isinstance(description, str) and 0 < len(description) <= 200):
            self.violations.append(f"description {description!r:.80}")
        if category is not None and category not in CATEGORIES:
            self.violations.append(f"category {category!r:.80}")
        if plan_id is not None and not (type(plan_id) is int and 1 <= plan_id <= MAX_ID):
            self.violations.append(f"plan_id {plan_id!r:.80}")
        self.runs += 1
        return ToolOutcome("run_trial", ok=True, content=f"trial ran (stand-in): {description}")

    def working_diff(self) -> str:
        return self.workspace.working_diff()

    def revert_edits(self) -> str:
        return self.workspace.revert_editable()

    def result_text(self, trial: Trial, parent: Trial | None) -> str:
        return prompts.result_text(trial, parent, None)

    def results_table(self, last: int | None = None, status: str | None = None) -> str:
        if last is not None and not (type(last) is int and last >= 1):
            self.violations.append(f"last {last!r:.80}")
        trials = [t for t in self.ledger.finished_trials() if not status or t.status == status]
        return prompts.results_table(trials[-last:] if last else trials, None, "flag")


class Harness:
    def __init__(self, base: Path) -> None:
        self.base = base
        self.workspace = Workspace.create(base / "ws", PROJECT, Layout(), "autoresearch/fuzz")
        self.root = self.workspace.root
        self.original_train = (self.root / EDITABLE).read_bytes()
        self.prepare = (self.root / "trainer/prepare.py").read_bytes()
        self.outside = base / "outside"
        self.outside.mkdir()
        (self.outside / "secret.txt").write_text(SECRET + "\n")
        hostile_workspace(self.root, self.outside / "secret.txt")
        run_dir = base / "run"
        self.ledger = Ledger(run_dir / "ledger.sqlite", create=True)
        self.ledger.init_run("fuzz", "{}")
        self.files = JournalFiles(self.ledger, run_dir)
        self.trials = FakeTrials(self.workspace, self.ledger)
        self.box = ToolBox(self.ledger, self.files, ev.EventBus(), self.trials)
        for n in range(1, 4):
            self.add_trial(journal=True, n=n)
        self.seed_inside_of_trials(run_dir)
        for idea in ("try a wider model with fewer layers", "sliding window attention", "drop weight decay"):
            self.ledger.add_plan(idea, "seed")
        self.ledger.drop_plan(3, "seeded as dropped so plan_drop meets a closed plan too")
        self.files.render()

    def add_trial(self, journal: bool, n: int = 0) -> int:
        head = self.workspace.head()
        tid = self.ledger.start_trial(commit_sha=head, parent_commit=head, parent_trial=None,
                                      description=f"seeded trial {n}", category=None, plan_id=None,
                                      diff="--- a/trainer/train.py\n+++ b/trainer/train.py\n", budget_s=5.0,
                                      platform={"gpu": "none"}, seed=42)
        self.ledger.finish_trial(tid, status="discard", val_bpb=1.2 + n / 1000, decision="seeded")
        if journal:
            self.ledger.add_journal(tid, hypothesis=f"seeded hypothesis number {n} here",
                                    change=f"seeded change number {n} here", result="seeded",
                                    interpretation=f"seeded interpretation number {n}",
                                    next_step=f"seeded next step number {n}")
        return tid

    def seed_inside_of_trials(self, run_dir: Path) -> None:
        """What inspect_trial reads: curves and summaries (trials 2 and 3 built on trial 1), and the logs a
        trial that ran unsandboxed could have left: a symlink to a file outside (trial 1), a FIFO (trial 2), a
        hard link to a file outside (trial 3)."""
        for tid in (1, 2, 3):
            rows = [{"step": s, "elapsed": s * 0.1, "loss": 5.0 / s + tid / 10} for s in range(1, 30)]
            self.ledger.add_metrics(tid, 0, rows)
            self.ledger.finish_trial(tid, parent_trial=1 if tid > 1 else None, wall_seconds=9.0,
                                     summary={"num_steps": "29",
                                              "total_tokens_M": f"{29 * 1024 * tid / 1e6:.6f}",
                                              "training_seconds": "2.9", "total_seconds": "6.0",
                                              "compile_seconds": "1.0", "handover_seconds": "0.5",
                                              "supervisor.handover_seconds": "7.0",
                                              "supervisor.evaluation_seconds": "2.0"})
        folders = [run_dir / "trials" / f"{tid:04d}" for tid in (1, 2, 3)]
        for folder in folders:
            folder.mkdir(parents=True)
        os.symlink(self.outside / "secret.txt", folders[0] / "log.txt")
        os.mkfifo(folders[1] / "log.txt")
        os.link(self.outside / "secret.txt", folders[2] / "log.txt")

    def settle(self) -> None:
        """No trial waiting for its journal entry (the journal-gate test leaves one), so every tool is open."""
        for trial in self.ledger.trials_missing_journal():
            self.ledger.add_journal(trial.id, hypothesis="settled", change="settled", result="settled",
                                    interpretation="settled", next_step="settled")

    def restore(self) -> None:
        """Keep the training script small, so a fuzzed edit that grew it does not slow the next examples."""
        train = self.root / EDITABLE
        if train.stat().st_size > 200_000:
            train.write_bytes(self.original_train)

    def check(self, call: ToolCall) -> ToolOutcome:
        """Dispatch one call and check everything that must hold whatever its input."""
        outcome = self.box.dispatch(call)
        assert isinstance(outcome, ToolOutcome)
        assert isinstance(outcome.tool, str) and len(outcome.tool) <= 100
        assert isinstance(outcome.content, str)
        assert outcome.call_id == call.id
        outcome.content.encode("utf-8")  # storable: no lone surrogates
        assert len(outcome.content) <= (MAX_CONTENT_CHARS if outcome.ok else MAX_ERROR_CHARS), outcome.content[:300]
        assert FAILED_MARK not in outcome.content, outcome.content  # no input needed the last-resort guard
        assert SECRET not in outcome.content
        assert not self.trials.violations, self.trials.violations
        # The ledger takes the outcome as the loop records it, and is readable afterwards.
        self.ledger.add_turn("tool", outcome.content, tool=outcome.tool, refused=outcome.refused)
        assert self.ledger.run_row().tag == "fuzz"
        self.ledger.trials(), self.ledger.plans(), self.ledger.journal_entries(), self.ledger.reflections()
        assert (self.root / "trainer/prepare.py").read_bytes() == self.prepare
        assert (self.outside / "secret.txt").read_text() == SECRET + "\n"
        self.restore()
        return outcome


def hostile_workspace(root: Path, secret: Path) -> None:
    """What a trial can leave in the workspace: a hard link to a file outside, symlinks out, a FIFO,
    a binary file, a folder, a file whose name is not UTF-8."""
    os.link(secret, root / "leak.txt")
    os.symlink(secret, root / "out.txt")
    os.symlink(secret.parent, root / "up")
    os.mkfifo(root / "pipe")
    (root / "data").mkdir()
    (root / "data" / "notes.txt").write_text("notes\n")
    (root / "binary.bin").write_bytes(b"\x00\x01\x02" * 10)
    with open(os.path.join(os.fsencode(root), b"bad-\xff-name.txt"), "wb") as fh:
        fh.write(b"x\n")


@pytest.fixture(scope="module")
def harness(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Harness]:
    h = Harness(tmp_path_factory.mktemp("fuzz"))
    yield h
    h.ledger.close()


# ---- strategies, built from the schemas ------------------------------------------------------------------
MB_STRING = "x" * 2**20
HUGE_INTS = [0, -1, 2**31, 2**53 + 1, MAX_ID, MAX_ID + 1, -(2**63), -(2**63) - 1, 10**30, -(10**30), 10**400]
ODD_FLOATS = [math.nan, math.inf, -math.inf, 1.0, 3.5, -0.0, 1e308, 5e-324]
TRAIN_LINES = [line for line in (PROJECT / EDITABLE).read_text().splitlines() if line.strip()]
SENTENCES = [
    "Raising the learning rate should speed up early training at this width.",
    "The measured change is smaller than the noise floor, so it says little.",
    "double the learning rate", "n/a", "tbd", "", " ", "ok",
]
PATHS = [
    EDITABLE, "train.py", "./trainer/train.py", "trainer/prepare.py", "prepare.py", "program.md", "trainer",
    ".", "/", "/etc/passwd", "../outside/secret.txt", "trainer/../../x", ".git/config", ".GIT/HEAD",
    "trainer/train.py\x00", "train\x00.py", "\x00", "a\ud800b", "\udcff", "\x1b[31mred", "line\nbreak",
    "~/x", "a" * 300, "a/" * 600 + "b", "trainer//train.py", "trainer/train.py/", "nonexistent/file.py",
    "bad-\udcff-name.txt", *HOSTILE_FILES,
]
hostile_chars = st.characters(categories=["Cs", "Cc", "Cf", "Zl", "Zp"])
plain_text = st.text(alphabet=st.characters(categories=["L", "M", "N", "P", "S", "Zs"]), max_size=60)
any_text = st.text(alphabet=st.one_of(st.characters(), hostile_chars), max_size=40)
garbage = st.recursive(
    st.one_of(st.none(), st.booleans(), st.integers(), st.sampled_from(ODD_FLOATS), st.text(max_size=5)),
    lambda inner: st.one_of(st.lists(inner, max_size=3), st.dictionaries(st.text(max_size=3), inner, max_size=3)),
    max_leaves=8,
)


def valid_value(key: str, spec: dict[str, Any]) -> st.SearchStrategy[Any]:
    """Values a careful model would send (so the handlers run, not only the validation)."""
    if "enum" in spec:
        return st.sampled_from(spec["enum"])
    if spec.get("type") == "integer":
        return st.integers(1, 6)
    if key == "path":
        return st.sampled_from([EDITABLE, "train.py", "program.md", "trainer/prepare.py", *HOSTILE_FILES])
    if key in ("search", "replace"):
        return st.one_of(st.sampled_from(TRAIN_LINES), plain_text)
    return st.one_of(st.sampled_from(SENTENCES), plain_text)


def hostile_value(key: str, spec: dict[str, Any]) -> st.SearchStrategy[Any]:
    """Values of the right type that are still wrong: at and over the limits, NUL, surrogates, ..."""
    if spec.get("type") == "integer":
        return st.one_of(st.integers(-3, 3), st.sampled_from(HUGE_INTS), st.integers())
    limit = spec.get("maxLength", 10_000)
    return st.one_of(
        any_text,
        st.sampled_from(PATHS),
        st.just("y" * limit), st.just("y" * (limit + 1)), st.just(MB_STRING),
        st.just("\x00" * 50), st.just("\n" * 5000), st.just("a" * 5000 + "\ud800"),
    )


def wrong_type(spec: dict[str, Any]) -> st.SearchStrategy[Any]:
    other = st.one_of(st.text(max_size=8), st.just("12")) if spec.get("type") == "integer" \
        else st.one_of(st.integers(), st.sampled_from(HUGE_INTS))
    return st.one_of(st.none(), st.booleans(), st.sampled_from(ODD_FLOATS), st.floats(), other,
                     st.lists(st.text(max_size=5), max_size=3), st.dictionaries(st.text(max_size=5), garbage, max_size=3),
                     garbage)


def bad_value(key: str, spec: dict[str, Any]) -> st.SearchStrategy[Any]:
    return st.one_of(hostile_value(key, spec), wrong_type(spec))


def tool_input(schema: dict[str, Any]) -> st.SearchStrategy[Any]:
    """Inputs for one tool: all valid (the handlers run), valid but for one field, any mix with required
    keys missing, unknown keys added, or not an object at all."""
    props: dict[str, dict[str, Any]] = schema["properties"]
    required = schema.get("required", [])
    good = {k: valid_value(k, spec) for k, spec in props.items()}
    anything = {k: st.one_of(good[k], bad_value(k, spec)) for k, spec in props.items()}
    valid = st.fixed_dictionaries({k: good[k] for k in required},
                                  optional={k: v for k, v in good.items() if k not in required})
    one_bad = st.builds(lambda base, item: {**base, item[0]: item[1]}, valid,
                        st.sampled_from(sorted(props)).flatmap(lambda k: st.tuples(st.just(k), bad_value(k, props[k])))
                        ) if props else valid  # a tool without fields (revert_edits) has no field to spoil
    mixed = st.fixed_dictionaries({}, optional=anything)  # required keys may be missing
    unknown_keys = st.dictionaries(st.one_of(st.text(max_size=8), st.sampled_from(["", "PATH", "\x00", "\ud800"])),
                                   garbage, min_size=1, max_size=3)
    with_unknown = st.builds(lambda a, b: {**b, **a}, st.one_of(valid, mixed), unknown_keys)
    # Weighted: half the inputs valid, so the handlers behind the validation get fuzzed too.
    kinds = [valid] * 5 + [one_bad] * 2 + [mixed, with_unknown, garbage]
    return st.integers(0, len(kinds) - 1).flatmap(lambda i: kinds[i])


CALLS = st.one_of([st.builds(ToolCall, st.just(t["name"]), tool_input(t["input_schema"]), st.just("fuzz"))
                   for t in TOOL_SCHEMAS])
FUZZ = settings(max_examples=500, deadline=None, database=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large,
                                       HealthCheck.function_scoped_fixture])


# ---- the properties ----------------------------------------------------------------------------------------
def test_every_tool_is_covered():
    assert {t["name"] for t in TOOL_SCHEMAS} == set(TOOL_NAMES)


@FUZZ
@given(call=CALLS)
def test_no_input_crashes_any_tool(harness: Harness, call: ToolCall):
    harness.settle()
    harness.check(call)
    assert harness.ledger.trials_missing_journal() == []  # the stand-in host records no trial


@settings(FUZZ, max_examples=200)
@given(call=CALLS)
def test_no_input_crashes_the_journal_gate(harness: Harness, call: ToolCall):
    """With a trial waiting for its journal entry: only write_journal passes the gate, whatever it is sent,
    and inspect_trial, which changes nothing."""
    if not harness.ledger.trials_missing_journal():
        harness.add_trial(journal=False)
    outcome = harness.check(call)
    if call.name not in ("write_journal", "inspect_trial"):
        assert not outcome.ok


@settings(FUZZ, max_examples=100)
@given(name=st.one_of(any_text, st.none(), st.integers(), st.lists(st.text(max_size=3), max_size=2),
                      st.just("read_fil"), st.just("x" * 10**6), st.just("\ud800"), st.sampled_from(TOOL_NAMES)),
       args=garbage)
def test_no_tool_name_crashes_dispatch(harness: Harness, name: Any, args: Any):
    outcome = harness.check(ToolCall(name, args, id="fuzz"))
    if name not in TOOL_NAMES:
        assert not outcome.ok and "The tools are:" in outcome.content


def _fits(value: Any, spec: dict[str, Any]) -> bool:
    """An independent reading of a property's schema, for what validate_input accepted."""
    if spec["type"] == "integer":
        return type(value) is int and spec.get("minimum", -(2**63)) <= value <= spec.get("maximum", 2**63 - 1)
    return (type(value) is str and len(value) <= spec.get("maxLength", 10_000)
            and (value in spec["enum"] if "enum" in spec else True)
            and not re.search("[\x00-\x08\x0b\x0e-\x1f\x7f-\x9f\ud800-\udfff]", value))


@settings(FUZZ, max_examples=300)
@given(data=st.data())
def test_what_validation_accepts_fits_the_schema(data: st.DataObject):
    tool = data.draw(st.sampled_from(TOOL_SCHEMAS))
    schema = tool["input_schema"]
    args = data.draw(tool_input(schema))
    problem = validate_input(tool["name"], args)
    if problem is None:
        assert isinstance(args, dict) and set(args) <= set(schema["properties"])
        assert all(args.get(k) is not None for k in schema.get("required", []))
        assert all(_fits(v, schema["properties"][k]) for k, v in args.items() if v is not None)
    else:
        assert isinstance(problem, str) and len(problem) <= 2_000
        problem.encode("utf-8")
        assert problem.startswith(tool["name"] + ":")


# ---- regressions: the crashes and leaks found, one by one ----------------------------------------------------
def call(harness: Harness, name: str, **args: Any) -> ToolOutcome:
    harness.settle()
    return harness.check(ToolCall(name, args, id="r"))


@pytest.mark.parametrize("tool,args", [
    ("read_file", {"path": "trainer/train\x00.py"}),
    ("edit_file", {"path": "train.py\x00", "search": "a", "replace": "b"}),
    ("edit_file", {"path": "train.py", "search": "LR\x00", "replace": "b"}),
    ("plan_add", {"idea": "a perfectly fine idea\x00"}),
])
def test_nul_byte_is_refused(harness: Harness, tool: str, args: dict[str, Any]):
    outcome = call(harness, tool, **args)
    assert not outcome.ok and "a NUL byte" in outcome.content and "'\\x00'" in outcome.content


def test_lone_surrogate_is_refused(harness: Harness):
    outcome = call(harness, "plan_add", idea="an idea with \udcff inside")
    assert not outcome.ok and "invalid unicode (a lone surrogate)" in outcome.content


@pytest.mark.parametrize("tool,args", [
    ("run_trial", {"description": "try plan 10**30", "plan_id": 10**30}),
    ("plan_drop", {"plan_id": 10**30, "reason": "it is no longer worth trying at all"}),
    ("show_diff", {"trial_id": -(10**30)}),
    ("plan_drop", {"plan_id": 2**63, "reason": "just past what SQLite can hold"}),
    ("get_results", {"last": 10**30}),
    ("read_file", {"path": EDITABLE, "start_line": 0}),
])
def test_out_of_range_integers_are_refused(harness: Harness, tool: str, args: dict[str, Any]):
    outcome = call(harness, tool, **args)
    assert not outcome.ok and "must be a whole number from" in outcome.content


def test_ids_at_the_sqlite_limit_are_answered(harness: Harness):
    outcome = call(harness, "plan_drop", plan_id=MAX_ID, reason="the largest id SQLite can hold")
    assert not outcome.ok and outcome.content == prompts.NO_SUCH_PLAN.format(plan_id=MAX_ID)
    assert call(harness, "show_diff", trial_id=MAX_ID).content == prompts.NO_SUCH_TRIAL.format(trial_id=MAX_ID)


@pytest.mark.parametrize("value", [True, 3.0, "3", [3], {"id": 3}, math.nan])
def test_a_plan_id_must_be_an_integer(harness: Harness, value: Any):
    outcome = call(harness, "plan_drop", plan_id=value, reason="the reason does not matter here")
    assert not outcome.ok and "must be a whole number" in outcome.content


def test_too_long_and_unknown_fields_say_the_limit(harness: Harness):
    outcome = call(harness, "write_reflection", load_bearing=MB_STRING, dead_ends="x", retest="x", plan="x")
    assert not outcome.ok and "1,048,576 characters long; at most 8,000 are accepted" in outcome.content
    outcome = harness.check(ToolCall("plan_add", {"idea": "a fine idea", "x" * 10**5: 1, 7: 2}, id="r"))
    assert not outcome.ok and "unknown field(s)" in outcome.content and len(outcome.content) < 1000


def test_hard_link_to_a_file_outside_is_refused(harness: Harness, tmp_path: Path):
    secret = tmp_path / "private.txt"  # outside the workspace, as ~/.ssh/id_rsa would be
    secret.write_text(SECRET + " (hard link)\n")
    os.link(secret, harness.root / "innocent.py")
    try:
        outcome = call(harness, "read_file", path="innocent.py")
        assert not outcome.ok and "2 hard links" in outcome.content
    finally:
        os.unlink(harness.root / "innocent.py")


def test_hard_linked_training_script_is_neither_read_nor_edited(harness: Harness, tmp_path: Path):
    train = harness.root / EDITABLE
    saved = train.read_bytes()
    secret = tmp_path / "credentials"
    secret.write_text(SECRET + "\nLR = 0.04\n")
    train.unlink()
    os.link(secret, train)
    try:
        assert "hard links" in call(harness, "read_file", path="train.py").content
        outcome = call(harness, "edit_file", path="train.py", search="LR = 0.04", replace="LR = 0.05")
        assert not outcome.ok and "hard links" in outcome.content
        assert secret.read_text() == SECRET + "\nLR = 0.04\n"
    finally:
        train.unlink()
        train.write_bytes(saved)


def test_symlink_out_is_refused(harness: Harness):
    for path in ("out.txt", "up/secret.txt"):
        outcome = call(harness, "read_file", path=path)
        assert not outcome.ok and "symlink that points outside the workspace" in outcome.content


def _within(seconds: float, fn: Any) -> Any:
    """fn() run in a thread; fails (instead of hanging the suite) when it takes longer than ``seconds``."""
    result: dict[str, Any] = {}
    thread = threading.Thread(target=lambda: result.setdefault("value", fn()), daemon=True)
    thread.start()
    thread.join(seconds)
    assert not thread.is_alive(), f"still running after {seconds} s"
    return result["value"]


def test_fifo_does_not_hang(harness: Harness):
    outcome = _within(10, lambda: call(harness, "read_file", path="pipe"))
    assert not outcome.ok and "FIFO" in outcome.content


def test_socket_and_directory_are_refused(harness: Harness):
    import socket

    path = harness.root / "sock"
    sock = socket.socket(socket.AF_UNIX)
    try:
        try:
            sock.bind(str(path))
        except OSError:
            pytest.skip("the workspace path is too long for a unix socket")
        outcome = _within(10, lambda: call(harness, "read_file", path="sock"))
        assert not outcome.ok and "not a regular file" in outcome.content
    finally:
        sock.close()
        path.unlink(missing_ok=True)
    outcome = call(harness, "read_file", path="data")
    assert not outcome.ok and "is a directory" in outcome.content and "notes.txt" in outcome.content


def test_a_50_mb_file_is_read_capped(harness: Harness):
    big = harness.root / "huge.txt"
    with open(big, "wb") as fh:  # one 50 MB line, then short lines: neither may be held whole
        fh.write(b"y" * (25 * 2**20))
        fh.write(b"\n" + b"z\n" * (12 * 2**20) + b"tail\n")
    try:
        tracemalloc.start()
        started = time.monotonic()
        try:
            whole = call(harness, "read_file", path="huge.txt")
            far = call(harness, "read_file", path="huge.txt", start_line=10**9)
            middle = call(harness, "read_file", path="huge.txt", start_line=1_000_000, end_line=1_000_002)
            peak = tracemalloc.get_traced_memory()[1]
        finally:
            tracemalloc.stop()
        assert time.monotonic() - started < 20
        assert peak < 8 * 2**20, f"peak {peak / 2**20:.1f} MB"
        assert whole.ok and len(whole.content) < 25_000 and "[line cut:" in whole.content
        assert not far.ok and "reads only the first 32 MB" in far.content
        assert middle.ok and middle.content.startswith("1000000\tz\n1000001\tz\n1000002\tz")
    finally:
        big.unlink()


def test_undecodable_file_name_is_shown_escaped(harness: Harness):
    outcome = call(harness, "read_file", path="bad-name.txt")
    assert not outcome.ok and "\\udcff" in outcome.content  # named in the suggestions, escaped


def test_huge_search_and_replace_stay_fast(harness: Harness):
    started = time.monotonic()
    outcome = call(harness, "edit_file", path=EDITABLE, search="q" * 100_000, replace="r")
    assert not outcome.ok and "not found" in outcome.content
    outcome = call(harness, "edit_file", path=EDITABLE, search="e", replace="E")
    assert not outcome.ok and "times" in outcome.content
    outcome = call(harness, "edit_file", path=EDITABLE, search="\n" * 50_000, replace="")
    assert not outcome.ok
    assert time.monotonic() - started < 20


# ---- the last resort ------------------------------------------------------------------------------------------
class BrokenTrials(FakeTrials):
    def run_trial(self, description: str, category: str | None, plan_id: int | None,
                  same_change_as=None) -> ToolOutcome:
        raise RuntimeError("boom in the trial host\nsecond line with details")

    def results_table(self, last: int | None = None, status: str | None = None) -> str:
        return None  # type: ignore[return-value]  # a handler whose outcome is not text


def test_an_unforeseen_exception_becomes_a_tool_error(harness: Harness, caplog: pytest.LogCaptureFixture):
    box = ToolBox(harness.ledger, harness.files, ev.EventBus(), BrokenTrials(harness.workspace, harness.ledger))
    with caplog.at_level(logging.ERROR, logger="supervisor.run.tools"):
        outcome = box.dispatch(ToolCall("run_trial", {"description": "anything at all"}, id="x"))
    assert not outcome.ok and outcome.call_id == "x" and outcome.tool == "run_trial"
    assert "RuntimeError: boom in the trial host)" in outcome.content and "second line" not in outcome.content
    assert FAILED_MARK in outcome.content
    record = next(r for r in caplog.records if r.name == "supervisor.run.tools")
    assert record.exc_info and "second line with details" in caplog.text  # the traceback, for the person
    outcome = box.dispatch(ToolCall("get_results", {}, id="y"))
    assert not outcome.ok and "TypeError" in outcome.content


def test_ordinary_calls_still_work(harness: Harness):
    """The checks let ordinary calls through: a read, an edit, a plan added and dropped."""
    assert call(harness, "read_file", path="train.py", start_line=1, end_line=3).ok
    train = harness.root / EDITABLE
    saved = train.read_bytes()
    text = saved.decode()
    line = next(x for x in TRAIN_LINES if text.count(x) == 1 and len(x) > 20)
    try:
        edited = call(harness, "edit_file", path=EDITABLE, search=line, replace=line + "  # edited")
        assert edited.ok and line + "  # edited" in train.read_text()
    finally:
        train.write_bytes(saved)
    added = call(harness, "plan_add", idea="try rotary base 50000", rationale="longer context")
    assert added.ok
    plan_id = int(re.search(r"#(\d+)", added.content).group(1))
    dropped = call(harness, "plan_drop", plan_id=plan_id, reason="the context length is fixed by the harness")
    assert dropped.ok and harness.ledger.plan(plan_id).status == PlanStatus.DROPPED


class FullDiskTrials(FakeTrials):
    def run_trial(self, description: str, category: str | None, plan_id: int | None,
                  same_change_as=None) -> ToolOutcome:
        raise OSError(28, "No space left on device")


def test_a_failing_machine_still_stops_the_run(harness: Harness):
    """Storage failures are not the model's to fix: they propagate, and the loop stops cleanly (resumable)."""
    box = ToolBox(harness.ledger, harness.files, ev.EventBus(), FullDiskTrials(harness.workspace, harness.ledger))
    harness.settle()
    with pytest.raises(OSError, match="No space left"):
        box.dispatch(ToolCall("run_trial", {"description": "anything at all"}, id="x"))


# ---- inspect_trial: what a trial left where its log was -------------------------------------------------
def test_inspect_trial_never_follows_what_a_trial_left_as_its_log(harness: Harness):
    for trial_id, why in ((1, "symbolic link"), (2, "not a regular file"), (3, "more than one hard link")):
        outcome = _within(10, lambda t=trial_id: call(harness, "inspect_trial", trial_id=t, part="log"))
        assert outcome.ok and why in outcome.content and SECRET not in outcome.content, outcome.content


def test_inspect_trial_of_an_unknown_trial_lists_the_trials(harness: Harness):
    outcome = call(harness, "inspect_trial", trial_id=MAX_ID, part="curve")
    assert not outcome.ok and f"there is no trial {MAX_ID}; this run's trials are 1-" in outcome.content
    outcome = call(harness, "inspect_trial", trial_id=2, part="timing", against=MAX_ID)
    assert not outcome.ok and f"there is no trial {MAX_ID}" in outcome.content
    outcome = call(harness, "inspect_trial", trial_id=2, part="curve", against=2)
    assert not outcome.ok and "itself" in outcome.content
    outcome = call(harness, "inspect_trial", trial_id=2, part="everything")
    assert not outcome.ok and "must be one of" in outcome.content and "curve" in outcome.content


def test_inspect_trial_shows_a_curve_against_the_parent_during_the_journal_gate(harness: Harness):
    waiting = harness.add_trial(journal=False)
    try:
        outcome = harness.check(ToolCall("inspect_trial", {"trial_id": 3, "part": "curve"}, id="g"))
        assert outcome.ok and "against its parent, trial 1" in outcome.content
        # 3,072 tokens per step against 1,024: at matched tokens, trial 3's step s meets trial 1's step 3 s.
        table = outcome.content.split("At matched tokens")[1].splitlines()[2:]
        assert len(table) == 20
        for row in table:
            _, step, loss, *parent = row.split()
            assert float(loss) == round(5 / int(step) + 0.3, 4)
            if 3 * int(step) <= 29:
                parent_step, parent_loss, diff = parent
                assert float(parent_step) == 3 * int(step)
                assert float(parent_loss) == round(5 / (3 * int(step)) + 0.1, 4)
                assert float(diff) == pytest.approx(float(loss) - float(parent_loss), abs=2e-4)
            else:
                assert parent == ["ended"]  # trial 1 never trained that many tokens
        assert harness.check(ToolCall("read_file", {"path": "train.py"}, id="g")).refused
    finally:
        harness.settle()
    assert waiting not in [t.id for t in harness.ledger.trials_missing_journal()]


def test_a_message_not_yet_shown_cannot_be_acknowledged(harness: Harness):
    """A blind acknowledge_steering(#N+1) at the end of every reply must not swallow a message the person typed
    while the reply was on its way."""
    number = harness.ledger.add_steering("try a wider MLP next")
    blind = call(harness, "acknowledge_steering", steering_id=number, reply="I will follow that advice closely.")
    assert not blind.ok and f"no steering message #{number}" in blind.content
    assert harness.ledger.steering()[-1].acknowledged is None
    turn = harness.ledger.add_turn("agent", "reading")
    harness.ledger.mark_steering_delivered([number], turn)
    shown = call(harness, "acknowledge_steering", steering_id=number, reply="I will widen the MLP next.")
    assert shown.ok and harness.ledger.steering()[-1].ack_how == "tool"
