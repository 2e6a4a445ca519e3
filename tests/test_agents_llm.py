"""The shared LLM agent loop without a network: reading tool calls, building a turn, prices, sorting errors."""

from __future__ import annotations

import json
from types import SimpleNamespace

import pytest

from supervisor.agents.base import (
    AgentAuthError,
    AgentConfigError,
    AgentRequestError,
    AgentTurn,
    AgentUnavailable,
    ToolCall,
    ToolOutcome,
    TurnContext,
)
from supervisor.agents.llm import (
    LLMAgent,
    ModelCall,
    ModelReply,
    PriorTurn,
    build_prompt,
    compact_results,
    read_arguments,
    render_previous,
    scrub,
    status_error,
    tool_result_text,
)
from supervisor.core.config import ConfigError
from supervisor.core.errors import UserError
from supervisor.core.pricing import (
    PRICES,
    PriceError,
    UsageTotals,
    canonical_model,
    parse_price,
    price_for,
)
from supervisor.run.status import usage_by_trial
from supervisor.run.tools import TOOL_SCHEMAS
from tests.loop_support import fake_config


def context(**overrides) -> TurnContext:
    fields = dict(
        program="# Program\nLower val_bpb.", editable="trainer/train.py", train_py="LR = 0.02\n",
        results=[], recent_journal=[], latest_reflection=None, plans=[], steering=[],
        last_outcomes=[], obligation=None, obligation_message="", pending_trial=None, trials_done=0,
        max_trials=None, budget_s=300.0, policy="flag", noise_floor=None, best=None, profile=None,
        tools=TOOL_SCHEMAS,
    )
    fields.update(overrides)
    return TurnContext(**fields)


def result(i: int, status: str = "discard", **extra) -> dict:
    row = {"id": i, "status": status, "val_bpb": 1.5 - i / 1000, "delta": 0.001, "flagged": False,
           "description": f"idea number {i}", "category": "other", "tokens_per_s": 1000.0, "mfu_percent": 40.0}
    row.update(extra)
    return row


# ---- reading tool calls ---------------------------------------------------------------------------------------
def test_read_arguments():
    assert read_arguments({"path": "x"}) == ({"path": "x"}, None)
    assert read_arguments('{"path": "x"}') == ({"path": "x"}, None)
    assert read_arguments("") == ({}, None) and read_arguments(None) == ({}, None)
    args, problem = read_arguments('{"path": "x", ')
    assert args is None and "not valid JSON" in problem and "character" in problem and '{"path": "x", ' in problem
    args, problem = read_arguments('["x"]')
    assert args is None and "must be a JSON object" in problem and "list" in problem
    args, problem = read_arguments('{"search": "LR', cut_off=True, max_tokens=100)
    assert args is None and "cut off at the output limit (100 tokens)" in problem


# ---- building a turn --------------------------------------------------------------------------------------------
def test_compact_results_keeps_every_keep_and_the_last_trials():
    rows = [result(i, "keep" if i % 10 == 0 else "discard") for i in range(1, 61)]
    rows[-1] = result(60, "crash", crash_reason="CUDA out of memory", val_bpb=None, delta=None)
    rows[19]["flagged"] = True
    table = compact_results(rows, recent=5)
    ids = [int(line.split()[0]) for line in table.splitlines()[2:] if line[:1].isdigit()]
    assert ids == [10, 20, 30, 40, 50, 56, 57, 58, 59, 60]
    assert "60 trials: 5 keep, 54 discard, 1 crash, 1 flagged" in table and "every keep and the last 5" in table
    assert "keep*" in table and "[crash: CUDA out of memory]" in table
    assert compact_results([]) == "## Results\n(no finished trials yet)"


def test_both_results_tables_show_steps_and_tokens_per_second():
    table = compact_results([result(1, "keep", num_steps=14), result(2, "discard", num_steps=8, tokens_per_s=512.0)])
    header, first, second = table.splitlines()[1:4]
    assert "steps" in header and "tok/s" in header
    assert first.split()[4:6] == ["14", "1000"] and second.split()[4:6] == ["8", "512"]
    from supervisor.core.prompts import results_table
    from supervisor.core.types import Trial

    trial = Trial(**{f: None for f in Trial.__dataclass_fields__} | {
        "id": 3, "status": "keep", "val_bpb": 1.23, "delta": -0.01, "flagged": False, "num_steps": 21,
        "tokens_per_s": 2048.0, "mfu_percent": 12.5, "peak_vram_mb": 900.0, "description": "wider"})
    got = results_table([trial], None, "flag").splitlines()
    assert "steps  tok/s" in got[1] and got[2].split()[4:6] == ["21", "2048"]


def test_journal_fields_are_cut_at_a_sentence_and_previous_calls_echoed_exactly():
    from supervisor.core.types import JournalEntry

    sentence = "The warmdown fraction moved the loss by less than the floor, so it stays as it is. "
    entry = JournalEntry(1, 4, 0.0, hypothesis=sentence * 20, change="Short change.", result="r",
                         interpretation="i", next_step="n")
    state = build_prompt(context(recent_journal=[entry])).state
    shown = next(line for line in state.splitlines() if line.strip().startswith("hypothesis:"))
    assert "it stays as it is. [... " in shown and "more characters]" in shown  # ends on a whole sentence
    assert len(shown) > 800 and "  change: Short change." in state
    # The previous reply's calls come back exactly: an edit's search text keeps its spaces and newlines.
    search = "def forward(self, x):\n    y  =  self.attn(x)   # two spaces\n"
    call = ToolCall("edit_file", {"path": "trainer/train.py", "search": search, "replace": "x"}, id="c1")
    failed = ToolOutcome("edit_file", False, "error: search text not found", call_id="c1")
    previous = render_previous(PriorTurn("Editing.", [call], [failed]))
    assert json.dumps(search) in previous and "-> ERROR:\nerror: search text not found" in previous


def test_an_uncommitted_edit_is_named_with_the_ways_out():
    from supervisor.run.context import changed_lines

    diff = "--- a/trainer/train.py\n+++ b/trainer/train.py\n@@ -1 +1 @@\n-LR = 0.02\n+LR = 0.04\n"
    assert changed_lines(diff) == 2 and changed_lines("") == 0
    state = build_prompt(context(results=[result(1, "keep")], uncommitted_lines=2)).state
    task = state.split("## What to do now")[1]
    assert "trainer/train.py has an uncommitted change since the last keep (2 changed lines" in task
    assert "run_trial" in task and "revert_edits" in task
    assert "uncommitted" not in build_prompt(context(results=[result(1, "keep")])).state


def test_the_state_says_what_to_do_now():
    journal_ctx = context(
        obligation="journal", obligation_message="trial 3 has no journal entry yet. Call write_journal.",
        pending_trial=result(3, "crash", crash_reason="exit 1", log_tail="Traceback\nRuntimeError: boom"),
        results=[result(3, "crash")], steering=["stop tuning learning rates"],
        last_outcomes=[ToolOutcome("edit_file", False, "refused: write the journal entry first", refused=True)])
    prompt = build_prompt(journal_ctx)
    state = prompt.state
    assert state.index("## Messages from the person") < state.index("## What to do now")
    assert "- stop tuning learning rates" in state
    assert "Trial 3 just finished: CRASH" in state and "RuntimeError: boom" in state
    assert "Call write_journal" in state.split("## What to do now")[1]
    # Without the previous reply in protocol form, its results come as text, the refusal highlighted.
    assert "edit_file [REFUSED]" in state and "Your last refused call (edit_file)" in state
    assert "No trial has run yet" in build_prompt(context()).state
    assert "edit_file, then run_trial" in build_prompt(context(results=[result(1, "keep")], trials_done=1,
                                                               max_trials=10)).state
    assert "9 trials are left" in build_prompt(context(results=[result(1, "keep")], trials_done=1,
                                                       max_trials=10)).state


def test_the_previous_reply_is_replayed_when_the_loop_ran_exactly_its_calls():
    class Adapter:
        provider, label, model = "anthropic", "the test API", "claude-sonnet-5-5"

        def __init__(self):
            self.prompts = []

        def complete(self, prompt, on_text):
            self.prompts.append(prompt)
            return ModelReply("Reading.", [ModelCall("toolu_1", "read_file", {"path": "train.py"})], "tool_use",
                              {"input_tokens": 1000, "output_tokens": 10, "cache_read_tokens": 5000})

        def probe(self):
            return None

        def close(self):
            pass

    adapter = Adapter()
    agent = LLMAgent(adapter, price=price_for("claude-sonnet-5-5"))
    turn = agent.turn(context())
    assert isinstance(turn, AgentTurn) and turn.calls[0].id == "toolu_1"
    assert turn.usage["cost_usd"] == pytest.approx((1000 * 2.0 + 10 * 10.0 + 5000 * 0.10) / 1e6)
    read = ToolOutcome("read_file", True, "     1\tLR = 0.02", call_id="toolu_1")
    agent.turn(context(last_outcomes=[read]))
    prior = adapter.prompts[1].previous
    assert prior is not None and prior.calls[0].name == "read_file"
    assert prior.results[0].content == "(the whole of trainer/train.py is shown above as it is now)"
    assert "## Results of your previous tool calls" not in adapter.prompts[1].state
    # Outcomes that do not belong to the previous reply (a restart, another agent): shown as text instead.
    agent.turn(context(last_outcomes=[ToolOutcome("run_trial", True, "trial 9 finished", call_id="other")]))
    assert adapter.prompts[2].previous is None
    assert "run_trial [ok]: trial 9 finished" in adapter.prompts[2].state


def test_long_tool_results_are_cut_for_the_prompt():
    call = ToolCall("read_file", {"path": "trainer/prepare.py"}, id="c")
    long = ToolOutcome("read_file", True, "x" * 20_000, call_id="c")
    text = tool_result_text(call, long, "trainer/train.py")
    assert len(text) < 6200 and "14000 more characters not shown; read a line range" in text
    ranged = ToolCall("read_file", {"path": "train.py", "start_line": 10, "end_line": 20}, id="c")
    assert tool_result_text(ranged, ToolOutcome("read_file", True, "lines", call_id="c"), "trainer/train.py") == "lines"


def test_a_reply_without_tool_calls_is_pointed_out():
    prior = PriorTurn("I think we should discuss this first.", [], [])
    state = build_prompt(context(results=[result(1, "keep")]), prior).state
    assert "Your previous reply called no tool" in state


# ---- prices and usage --------------------------------------------------------------------------------------------
def test_price_table_lookup():
    assert canonical_model("claude-sonnet-4-5-20250929") == "claude-sonnet-4-5"
    assert canonical_model("anthropic/claude-opus-4-0") == "claude-opus-4"
    assert canonical_model("gpt-4o-2024-08-06") == "gpt-4o" and canonical_model("gpt-5.3-chat-latest") == "gpt-5.3-chat"
    assert price_for("claude-haiku-4-5-20251001") == PRICES["claude-haiku-4-5"]
    assert price_for("gpt-4o-mini") == PRICES["gpt-4o-mini"] != PRICES["gpt-4o"]
    assert price_for("claude-opus-4-9") is None and price_for("qwen2.5-coder:32b") is None  # never a guess
    assert price_for("my-model", [3, 15]).cache_read == 3.0  # no assumed cache discount
    assert price_for("my-model", [3, 15, 0.3, 3.75]).cost({"input_tokens": 1e6, "output_tokens": 1e6,
                                                           "cache_read_tokens": 1e6, "cache_write_tokens": 1e6}) \
        == pytest.approx(3 + 15 + 0.3 + 3.75)
    assert parse_price("3, 15") == [3.0, 15.0] == parse_price(str([3.0, 15.0]))
    for bad in ("3", "a,b", "1,2,3,4,5", "-1,2"):
        with pytest.raises(PriceError):
            parse_price(bad)


def test_usage_totals_say_when_a_dollar_total_would_understate():
    totals = UsageTotals()
    totals.add({"input_tokens": 100, "output_tokens": 10, "cache_read_tokens": 50, "cost_usd": 0.5})
    totals.add(None)
    assert totals.as_dict()["cost_usd"] == 0.5 and totals.as_dict()["tokens_in"] == 150
    totals.add({"input_tokens": 100, "output_tokens": 10, "cost_usd": None})
    data = totals.as_dict()
    assert data["cost_usd"] is None and data["priced_cost_usd"] == 0.5 and data["unpriced_turns"] == 1


def test_usage_is_attributed_to_each_trial_cycle():
    journal = [SimpleNamespace(trial_id=1, created=10.0), SimpleNamespace(trial_id=2, created=20.0)]
    turns = [SimpleNamespace(created=t, usage={"input_tokens": 100, "output_tokens": 1, "cost_usd": 0.01})
             for t in (1.0, 5.0, 10.0, 12.0, 19.0, 25.0)] + [SimpleNamespace(created=3.0, usage=None)]
    usage = usage_by_trial(sorted(turns, key=lambda t: t.created), journal)
    assert usage["by_trial"][1].turns == 3 and usage["by_trial"][2].turns == 2 and usage["pending"].turns == 1
    assert usage["total"].cost_usd == pytest.approx(0.06)


def test_cost_settings_are_validated(tmp_path):
    with pytest.raises(ConfigError, match="--max-cost"):
        fake_config(tmp_path, max_cost=0)
    with pytest.raises(ConfigError, match="--price"):
        fake_config(tmp_path, price=[1.0])
    assert fake_config(tmp_path, max_cost=2.5, price=[3, 15]).max_cost == 2.5


# ---- errors, sorted and scrubbed ----------------------------------------------------------------------------------
def test_status_errors_are_typed():
    auth = status_error("the Anthropic API", "ANTHROPIC_API_KEY", 401, "invalid x-api-key")
    assert isinstance(auth, AgentAuthError) and isinstance(auth, UserError)
    assert "set ANTHROPIC_API_KEY to a valid key" in str(auth)
    assert isinstance(status_error("X", "K", 403, "no"), AgentAuthError)
    assert isinstance(status_error("X", "K", 404, "no model"), AgentConfigError)
    busy = status_error("X", "K", 429, "slow down", retry_after=7.0)
    assert isinstance(busy, AgentUnavailable) and busy.retry_after == 7.0 and "rate limited" in str(busy)
    assert "overloaded" in str(status_error("X", "K", 529, "Overloaded"))
    assert isinstance(status_error("X", "K", 503, "down"), AgentUnavailable)
    assert isinstance(status_error("X", "K", 400, "prompt is too long"), AgentRequestError)
    quota = status_error("X", "K", 429, "You exceeded your quota", code="insufficient_quota")
    assert isinstance(quota, AgentRequestError) and "quota" in str(quota)


def test_scrub_removes_whole_and_partial_keys():
    key = "sk-proj-AbCdEf0123456789GhIjKlMnOp"
    assert scrub(f"bad key {key}!", [key]) == "bad key [redacted]!"
    echoed = f"Incorrect API key provided: {key[:10]}*****{key[-6:]}"
    assert key[:10] not in scrub(echoed, [key])
    assert scrub("nothing to hide", [key, "not-needed", ""]) == "nothing to hide"


def test_base_url_with_credentials_is_refused():
    from supervisor.core.config import ConfigError, RunConfig

    for url in ("http://user:secret@localhost:8000/v1", "https://host/v1?api_key=abc", "localhost:8000"):
        with pytest.raises(ConfigError):
            RunConfig(tag="x", base_url=url)
    RunConfig(tag="x", base_url="http://127.0.0.1:8000/v1")


def test_a_token_budget_is_what_the_run_header_says():
    state = build_prompt(context(budget_tokens=2_000_000, budget_s=300.0)).state
    assert "2,000,000 tokens of training per trial (a token budget: speed does not count here" in state
    assert "300 s is a hard wall-clock cap" in state and "300 s of training per trial" not in state
    assert "300 s of training per trial" in build_prompt(context()).state
