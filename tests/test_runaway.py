"""The runaway guard: a model caught in a loop is paused within a few dozen replies, saying why.

The rules are checked on the guard itself, then with real looping models through both SDKs against the
loopback server: one that writes a journal entry nobody asked for in every reply (the fault that served
58,425 replies in 14 minutes), and one that reads files forever.
"""

from __future__ import annotations

import time

import pytest

from supervisor.agents.base import ToolCall, ToolOutcome
from supervisor.core.config import ConfigError
from supervisor.run.loop import Supervisor
from supervisor.run.runaway import DEFAULT_REPEAT_LIMIT, DEFAULT_STALL_REPLIES, RunawayGuard
from supervisor.store.ledger import Ledger
from tests.agents_support import PROVIDERS, SECRET, llm_agent, run_in_thread, wait_until
from tests.llm_server import LLMServer, Reply, ToolUse
from tests.loop_support import cli, fake_config, journal

pytestmark = pytest.mark.usefixtures("llm_keys")


def call(name: str, **arguments: object) -> ToolCall:
    return ToolCall(name=name, input=dict(arguments))


def failed(name: str, content: str = "refused: no trial is waiting for a journal entry") -> ToolOutcome:
    return ToolOutcome(name, ok=False, content=content, refused=True)


def succeeded(name: str) -> ToolOutcome:
    return ToolOutcome(name, ok=True, content="done")


# ---- the rules ---------------------------------------------------------------------------------------------
def test_the_same_failing_call_pauses_at_the_repeat_limit_whatever_the_key_order() -> None:
    guard = RunawayGuard(stall_replies=100, repeat_limit=3)
    first, second = call("write_journal", a="x", b="y"), ToolCall(name="write_journal", input={"b": "y", "a": "x"})
    assert guard.observe([first], [failed("write_journal")]) is None
    assert guard.observe([second], [failed("write_journal")]) is None
    verdict = guard.observe([first], [failed("write_journal")])
    assert verdict is not None
    assert "same failing write_journal call 3 times" in verdict.reason
    assert "no trial is waiting for a journal entry" in verdict.reason and "control steer" in verdict.reason
    assert guard.replies_without_progress == 0 and not guard.failures  # counts start again after a pause


def test_different_failing_calls_do_not_count_as_repeats_but_still_stall() -> None:
    guard = RunawayGuard(stall_replies=4, repeat_limit=2)
    verdicts = [guard.observe([call("read_file", path=f"f{i}")], [failed("read_file", f"no such file f{i}")])
                for i in range(4)]
    assert verdicts[:3] == [None, None, None]
    assert verdicts[3] is not None and "4 replies in a row without progress" in verdicts[3].reason
    assert "last failure: read_file: no such file f3" in verdicts[3].reason


def test_progress_resets_both_counts() -> None:
    guard = RunawayGuard(stall_replies=3, repeat_limit=2)
    assert guard.observe([call("read_file", path="x")], [failed("read_file")]) is None
    assert guard.observe([call("read_file", path="y")], [succeeded("read_file")]) is None  # reading: no progress
    assert guard.replies_without_progress == 2
    edit = call("edit_file", path="trainer/train.py", search="a", replace="b")
    assert guard.observe([edit, call("run_trial", description="d")],
                         [succeeded("edit_file"), failed("run_trial")]) is None
    assert guard.replies_without_progress == 0 and not guard.failures
    # A failed edit is no progress.
    assert guard.observe([edit], [failed("edit_file", "search text not found")]) is None
    assert guard.replies_without_progress == 1


def test_editing_back_and_forth_or_reflecting_unasked_is_no_progress() -> None:
    """Cheap 'progress' must not keep a loop alive: A to B and back again, or a reflection nobody asked for."""
    guard = RunawayGuard(stall_replies=6, repeat_limit=0)
    to_b, to_a = call("edit_file", search="A", replace="B"), call("edit_file", search="B", replace="A")
    verdicts = []
    for i in range(12):
        edit, digest = (to_b, "script-B") if i % 2 == 0 else (to_a, "script-A")
        verdicts.append(guard.observe([edit], [succeeded("edit_file")], script_digest=digest))
    assert verdicts[:7] == [None] * 7  # the first B and the first A are new scripts; then six replies of nothing
    assert any(v is not None and "6 replies in a row without progress" in v.reason for v in verdicts)
    guard = RunawayGuard(stall_replies=3, repeat_limit=0)
    unasked = [guard.observe([call("write_reflection")], [succeeded("write_reflection")]) for _ in range(3)]
    assert unasked[-1] is not None
    due = RunawayGuard(stall_replies=3, repeat_limit=0)
    assert all(due.observe([call("write_reflection")], [succeeded("write_reflection")], reflection_due=True) is None
               for _ in range(5))
    # A trial clears the scripts seen: going back to an earlier script after it is an experiment again.
    guard = RunawayGuard(stall_replies=3, repeat_limit=0)
    guard.observe([to_b], [succeeded("edit_file")], script_digest="script-B")
    guard.observe([call("run_trial")], [succeeded("run_trial")])
    guard.observe([to_b], [succeeded("edit_file")], script_digest="script-B")
    assert guard.replies_without_progress == 0


def test_a_limit_of_zero_turns_its_rule_off() -> None:
    guard = RunawayGuard(stall_replies=0, repeat_limit=0)
    for _ in range(200):
        assert guard.observe([call("write_journal")], [failed("write_journal")]) is None


def test_unreadable_calls_are_left_to_the_malformed_rule() -> None:
    guard = RunawayGuard(stall_replies=100, repeat_limit=2)
    broken = ToolCall(name="edit_file", input={}, problem="not valid JSON")
    for _ in range(5):
        assert guard.observe([broken], [failed("edit_file", "not valid JSON")]) is None


def test_limits_are_options_with_clear_errors(tmp_path) -> None:
    assert (DEFAULT_STALL_REPLIES, DEFAULT_REPEAT_LIMIT) == (25, 5)
    with pytest.raises(ConfigError, match="--stall-replies must be 0"):
        fake_config(tmp_path, stall_replies=-1)
    proc = cli("run", "--tag", "x", "--journals", str(tmp_path), "--repeat-limit", "-2")
    assert proc.returncode == 2 and "--repeat-limit" in proc.stderr and "Traceback" not in proc.stderr


# ---- real looping models, both SDKs -------------------------------------------------------------------------


def _run_until_paused(tmp_path, provider: str, script: list[Reply], **settings: object) -> tuple[int, str]:
    """Runs the looping model until the guard pauses the run; (requests served, the pause's reason)."""
    with LLMServer(script, api_key=SECRET) as server:
        config = fake_config(tmp_path, **settings)
        sup = Supervisor(config, llm_agent(provider, server))
        thread, result = run_in_thread(sup)
        try:
            wait_until(lambda: sup.state == "paused" or "end" in result or "error" in result, timeout=120,
                       what="the runaway pause")
            served = len(server.requests)
            time.sleep(0.3)  # a paused run sends nothing more
            assert len(server.requests) == served, "the paused run kept asking the model"
            ledger = Ledger(config.run_dir / "ledger.sqlite")
            detail = ledger.run_row().state_detail
            system = [t.text for t in ledger.turns() if t.role == "system"]
            ledger.close()
        finally:
            sup.stop()
            thread.join(30)
    assert result.get("end") == "stopped", result
    assert any(line.startswith("runaway guard: ") for line in system), system
    return served, detail


@pytest.mark.parametrize("provider", PROVIDERS)
def test_a_model_writing_unasked_journal_entries_is_paused_at_the_repeat_limit(tmp_path, provider) -> None:
    looping = Reply("Recording the result.", [ToolUse("write_journal", journal(1)["input"])])
    served, detail = _run_until_paused(tmp_path, provider, [looping] * 100)
    assert served == DEFAULT_REPEAT_LIMIT <= 40
    assert f"same failing write_journal call {DEFAULT_REPEAT_LIMIT} times" in detail
    assert "no trial" in detail and "control steer" in detail


@pytest.mark.parametrize("provider", PROVIDERS)
def test_a_model_that_only_reads_is_paused_after_the_stall_limit(tmp_path, provider) -> None:
    reading = [Reply(f"Let me look once more ({i}).", [ToolUse("read_file", {"path": "trainer/train.py"})])
               for i in range(100)]
    served, detail = _run_until_paused(tmp_path, provider, reading, stall_replies=12)
    assert served == 12
    assert "12 replies in a row without progress" in detail


@pytest.mark.parametrize("provider", PROVIDERS)
def test_the_faults_first_step_now_runs_the_trial(tmp_path, provider) -> None:
    """The night that looped began with a run_trial whose optional plan_id was not open: it now runs, the link
    ignored and said, and the journal that follows is accepted."""
    script = [Reply("Trying the planned idea.", [ToolUse("run_trial", {"description": "baseline", "plan_id": 3})]),
              Reply("Recording the result.", [ToolUse("write_journal", journal(1)["input"])])]
    with LLMServer(script, api_key=SECRET) as server:
        config = fake_config(tmp_path, max_trials=1, reflect_every=50)
        assert Supervisor(config, llm_agent(provider, server)).run() == "finished"
    ledger = Ledger(config.run_dir / "ledger.sqlite", readonly=True)
    try:
        [trial] = ledger.finished_trials()
        answer = next(t.text for t in ledger.turns() if t.tool == "run_trial")
        journaled = [e.trial_id for e in ledger.journal_entries()]
    finally:
        ledger.close()
    assert trial.plan_id is None and trial.val_bpb is not None and journaled == [trial.id]
    assert answer.startswith("note: plan #3 is not in the plan queue; the trial ran without a plan link")
