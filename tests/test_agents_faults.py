"""Every fault of a model API, through the real SDKs against the loopback server, and what the loop does.

The SDK retries 429 (honouring retry-after), 5xx, Anthropic's 529, timeouts and dropped connections; what it
gives up on comes to the loop as AgentUnavailable, which waits and tries again, pauses after an outage and
resumes when a cheap probe answers or the person asks. A 401 stops the run naming the variable to set.
Unreadable tool calls get errors the model can act on; three such replies in a row pause a paid agent.
--max-cost stops the run cleanly.
"""

from __future__ import annotations

import json
import threading
import time

import pytest

from supervisor.agents.base import AgentAuthError, AgentConfigError, AgentUnavailable
from supervisor.agents.llm import Prompt
from supervisor.core import events as ev
from supervisor.core.config import ConfigError
from supervisor.run.loop import Supervisor, SupervisorError
from supervisor.run.status import run_status
from supervisor.run.tools import TOOL_SCHEMAS
from supervisor.store.ledger import Ledger
from tests.agents_support import (
    KEY_VARIABLES,
    PROVIDERS,
    SECRET,
    base_url,
    cycle_script,
    files_containing,
    llm_agent,
    read_reply,
    run_in_thread,
    wait_until,
)
from tests.llm_server import (
    Fault,
    LLMServer,
    Reply,
    ToolUse,
    bad_request,
    dropped,
    dropped_mid_stream,
    not_found,
    overloaded,
    rate_limited,
    server_error,
    stall,
    stream_error,
    unauthorized,
)
from tests.loop_support import FAKE_SOURCE, Recorder, cli, fake_config


@pytest.fixture(autouse=True)
def keys(monkeypatch):
    for name in KEY_VARIABLES.values():
        monkeypatch.setenv(name, SECRET)
    for name in ("ANTHROPIC_BASE_URL", "OPENAI_BASE_URL", "ANTHROPIC_AUTH_TOKEN"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setattr("supervisor.run.api_health.OUTAGE_BACKOFF_S", 0.05)  # the loop's own waits, shortened


def prompt() -> Prompt:
    return Prompt("You are a test.", "program", TOOL_SCHEMAS, "code", "state")


def system_turns(config) -> list[str]:
    ledger = Ledger(config.run_dir / "ledger.sqlite")
    try:
        return [t.text for t in ledger.turns() if t.role == "system"]
    finally:
        ledger.close()


# ---- the SDK's own retries ---------------------------------------------------------------------------------
FAULTS = {
    "429 with retry-after": lambda: rate_limited(retry_after=0.3),
    "500": server_error,
    "529 overloaded": overloaded,
    "timeout": lambda: stall(2.0),
    "dropped connection": dropped,
}


@pytest.mark.parametrize("fault", FAULTS)
@pytest.mark.parametrize("provider", PROVIDERS)
def test_transient_errors_are_retried_by_the_sdk(provider, fault):
    with LLMServer([FAULTS[fault](), read_reply()], api_key=SECRET) as server:
        agent = llm_agent(provider, server, timeout_s=0.5, max_retries=2)
        reply = agent.adapter.complete(prompt(), None)
        times = [r.time for r in server.requests]
    assert reply.calls[0].name == "read_file" and len(times) == 2
    if fault.startswith("429"):
        assert times[1] - times[0] >= 0.3  # the server's retry-after was honoured


@pytest.mark.parametrize("provider", PROVIDERS)
def test_what_the_sdk_gives_up_on_is_typed(provider):
    with LLMServer([overloaded(), overloaded(), stall(2.0), stall(2.0)], api_key=SECRET) as server:
        agent = llm_agent(provider, server, timeout_s=0.3, max_retries=1)
        with pytest.raises(AgentUnavailable) as busy:
            agent.adapter.complete(prompt(), None)
        assert busy.value.status == 529 and "overloaded" in str(busy.value)
        with pytest.raises(AgentUnavailable, match="timed out"):
            agent.adapter.complete(prompt(), None)


# ---- faults in the middle of a stream: the loop retries ----------------------------------------------------------
@pytest.mark.parametrize("provider", PROVIDERS)
def test_a_stream_cut_in_the_middle_is_retried_by_the_loop(tmp_path, provider):
    script = [dropped_mid_stream(), stream_error(), *cycle_script()]
    with LLMServer(script, api_key=SECRET) as server:
        config = fake_config(tmp_path, max_trials=1, reflect_every=1)
        sup = Supervisor(config, llm_agent(provider, server))
        rec = Recorder()
        sup.bus.subscribe(rec)
        assert sup.run() == "finished"
        assert len(server.requests) == 6
    notes = [e.data["message"] for e in rec.kinds(ev.NOTICE)]
    assert any("trying again" in n for n in notes)
    turns = system_turns(config)
    assert turns[0].startswith("API unavailable:") and "answers again" in turns[1]
    assert len(Ledger(config.run_dir / "ledger.sqlite").journal_entries()) == 1


# ---- a long outage: pause, then resume ---------------------------------------------------------------------------
class Outage:
    """The server is down (overloaded) until `end()`; then it plays the script."""

    def __init__(self, script: list[Reply]) -> None:
        self.down = threading.Event()
        self.down.set()
        self.script = list(script)

    def __call__(self, request) -> Reply | Fault:
        if 1 in (request.body.get("max_tokens"), request.body.get("max_completion_tokens")):
            if not self.down.is_set():
                return Reply("pong")  # the loop's probe: a tiny real answer
        if self.down.is_set():
            return overloaded(retry_after=None)
        return self.script.pop(0) if self.script else Fault("status", 400, "invalid_request_error", "no more")

    def end(self) -> None:
        self.down.clear()


@pytest.mark.parametrize("provider", PROVIDERS)
def test_outage_pauses_and_resumes_when_the_api_answers_again(tmp_path, provider):
    outage = Outage(cycle_script())
    with LLMServer(outage, api_key=SECRET) as server:
        config = fake_config(tmp_path, max_trials=1, reflect_every=1, outage_s=0.4, probe_every_s=0.2)
        sup = Supervisor(config, llm_agent(provider, server, max_retries=0))
        rec = Recorder()
        sup.bus.subscribe(rec)
        thread, result = run_in_thread(sup)
        wait_until(lambda: sup.state == "paused", what="the outage pause")
        reason = Ledger(config.run_dir / "ledger.sqlite").run_row().state_detail
        assert reason.startswith("API outage:") and "overloaded (529" in reason
        assert "resumes by itself" in reason and "control resume" in reason
        wait_until(lambda: len(server.requests) >= 6, what="probes while paused")  # it keeps checking
        outage.end()
        thread.join(30)
        probes = [r.body for r in server.requests if r.body.get("max_tokens") == 1]
    assert result == {"end": "finished"}
    assert probes and all(p["messages"] == [{"role": "user", "content": "ping"}] for p in probes)
    turns = system_turns(config)
    assert turns[0].startswith("API unavailable") and "the run pauses" in turns[1]
    assert turns[2].startswith("API probe answered")
    assert any(e.data["message"] == "the API answers again: resuming the run" for e in rec.kinds(ev.NOTICE))
    states = [e.data["state"] for e in rec.kinds(ev.STATE)]
    assert states.index("paused") < len(states) - 1 and states[-1] == "finished"
    status = run_status(Ledger(config.run_dir / "ledger.sqlite"))
    assert status["counts"]["trials"] == 1 and status["cost"]["turns"] == 5  # four turns and the probe


def test_outage_pause_resumes_when_the_person_asks(tmp_path):
    outage = Outage(cycle_script())
    with LLMServer(outage, api_key=SECRET) as server:
        config = fake_config(tmp_path, max_trials=1, reflect_every=1, outage_s=0.2, probe_every_s=3600)
        sup = Supervisor(config, llm_agent("anthropic", server, max_retries=0))
        thread, result = run_in_thread(sup)
        wait_until(lambda: sup.state == "paused", what="the outage pause")
        outage.end()
        ledger = Ledger(config.run_dir / "ledger.sqlite")
        ledger.send_command("resume")  # as `autoresearch control --tag t resume` does
        ledger.close()
        thread.join(30)
    assert result == {"end": "finished"}
    assert not any(r.body.get("max_tokens") == 1 for r in server.requests)  # no probe was needed
    assert len(Ledger(config.run_dir / "ledger.sqlite").journal_entries()) == 1


# ---- a key or setting the person must fix: the run stops -----------------------------------------------------------
@pytest.mark.parametrize("provider", PROVIDERS)
def test_401_stops_the_run_naming_the_variable_and_leaks_nothing(tmp_path, provider):
    with LLMServer([unauthorized(echo_key=True)], api_key=SECRET) as server:
        config = fake_config(tmp_path)
        sup = Supervisor(config, llm_agent(provider, server))
        with pytest.raises(AgentAuthError) as stopped:
            sup.run()
        assert len(server.requests) == 1  # a 401 is not retried
    message = str(stopped.value)
    assert f"set {KEY_VARIABLES[provider]}" in message and "401" in message
    assert SECRET not in message and "[redacted]" in message  # the server echoed the key back
    run = Ledger(config.run_dir / "ledger.sqlite").run_row()
    assert run.state == "stopped" and KEY_VARIABLES[provider] in run.state_detail
    assert files_containing(config.run_dir, SECRET) == []
    assert files_containing(config.run_dir, SECRET[10:30]) == []


def test_cli_401_is_one_clear_line(tmp_path):
    cache = tmp_path / "cache"
    cache.mkdir()
    (cache / "manifest.json").write_text(json.dumps({"profile": "small"}))
    with LLMServer([unauthorized(echo_key=True)], api_key=SECRET) as server:
        proc = cli("run", "--headless", "--tag", "t", "--agent", "anthropic", "--base-url", server.url, "--noise-repeats", "0",
                   "--trainer-dir", str(FAKE_SOURCE), "--journals", str(tmp_path / "j"), "--cache", str(cache),
                   env={"ANTHROPIC_API_KEY": SECRET})
    assert proc.returncode == 1
    assert "Traceback" not in proc.stderr and SECRET not in proc.stderr + proc.stdout
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith("autoresearch: ") and "set ANTHROPIC_API_KEY to a valid key" in last
    status = json.loads(cli("status", "--tag", "t", "--json", "--journals", str(tmp_path / "j")).stdout)
    assert status["state"] == "stopped" and "ANTHROPIC_API_KEY" in status["state_detail"]


@pytest.mark.parametrize("provider", PROVIDERS)
def test_missing_key_is_a_clear_error_before_anything_starts(monkeypatch, provider):
    monkeypatch.delenv(KEY_VARIABLES[provider])
    module = __import__(f"supervisor.agents.{provider}_agent", fromlist=["create_agent"])
    with pytest.raises(AgentAuthError, match=f"set {KEY_VARIABLES[provider]}"):
        module.create_agent()


def test_cli_without_a_key_says_which_variable_to_set(tmp_path):
    proc = cli("run", "--headless", "--tag", "t", "--agent", "openai", "--journals", str(tmp_path),
               env={"OPENAI_API_KEY": "", "OPENAI_BASE_URL": ""})
    assert proc.returncode == 1 and "Traceback" not in proc.stderr
    assert proc.stderr.strip().splitlines()[-1].startswith("autoresearch: --agent openai needs an API key: set "
                                                           "OPENAI_API_KEY")
    assert not (tmp_path / "t").exists()  # nothing was created


@pytest.mark.parametrize("provider", PROVIDERS)
def test_base_url_comes_from_the_sdks_environment_variable(monkeypatch, provider):
    with LLMServer([read_reply()], api_key=SECRET) as server:
        monkeypatch.setenv(f"{provider.upper()}_BASE_URL", base_url(provider, server))
        module = __import__(f"supervisor.agents.{provider}_agent", fromlist=["create_agent"])
        agent = module.create_agent(model="claude-opus-5" if provider == "anthropic" else "gpt-5.5")
        assert agent.adapter.complete(prompt(), None).calls[0].name == "read_file"
        assert server.requests[0].body["model"] in ("claude-opus-5", "gpt-5.5")


def test_unknown_model_stops_the_run(tmp_path):
    with LLMServer([not_found("model: claude-nonesuch")], api_key=SECRET) as server:
        config = fake_config(tmp_path)
        with pytest.raises(AgentConfigError, match="check --model and --base-url"):
            Supervisor(config, llm_agent("anthropic", server, model="claude-nonesuch")).run()


def test_a_request_the_api_refuses_pauses_with_the_reason(tmp_path):
    with LLMServer([bad_request()], api_key=SECRET) as server:
        config = fake_config(tmp_path)
        sup = Supervisor(config, llm_agent("openai", server))
        thread, _ = run_in_thread(sup)
        wait_until(lambda: sup.state == "paused", what="the pause")
        detail = Ledger(config.run_dir / "ledger.sqlite").run_row().state_detail
        sup.stop()
        thread.join(10)
    assert "prompt is too long" in detail and "then resume" in detail


# ---- tool calls the model gets wrong -------------------------------------------------------------------------------
def bad_json(name: str = "edit_file") -> Reply:
    return Reply("Editing.", [ToolUse(name, '{"path": "trainer/train.py", "search": "LR = 0.02", "replace": ')])


def unknown_tool() -> Reply:
    return Reply("Launching.", [ToolUse("launch_rockets", {"count": 3})])


def missing_argument() -> Reply:
    return Reply("Editing.", [ToolUse("edit_file", {"path": "trainer/train.py", "search": "LR = 0.02"})])


@pytest.mark.parametrize("provider", PROVIDERS)
def test_malformed_calls_get_errors_the_model_can_fix(tmp_path, provider):
    script = [bad_json(), read_reply(1), unknown_tool(), read_reply(2), missing_argument(), read_reply(3),
              *cycle_script()]
    with LLMServer(script, api_key=SECRET) as server:
        config = fake_config(tmp_path, max_trials=1, reflect_every=1)
        assert Supervisor(config, llm_agent(provider, server)).run() == "finished"
        bodies = [r.body for r in server.requests]

    def error_sent_back(body) -> str:
        if provider == "anthropic":
            previous = body["messages"][0]["content"][1]["text"]
            assert previous.startswith("## Your previous reply") and "-> ERROR:" in previous
            return previous
        return next(m for m in body["messages"] if m["role"] == "tool")["content"]

    assert "not valid JSON" in error_sent_back(bodies[1]) and "Send them again" in error_sent_back(bodies[1])
    assert "unknown tool 'launch_rockets'" in error_sent_back(bodies[3])
    assert "missing required field(s): replace" in error_sent_back(bodies[5])
    # Nothing ran for the broken calls; the good ones after them did.
    assert "LR = 0.04" in (config.workspace / "trainer/train.py").read_text()
    assert len(Ledger(config.run_dir / "ledger.sqlite").finished_trials()) == 1


@pytest.mark.parametrize("provider", PROVIDERS)
def test_three_malformed_replies_in_a_row_pause_instead_of_burning_money(tmp_path, provider):
    with LLMServer([bad_json(), unknown_tool(), missing_argument(), read_reply()], api_key=SECRET) as server:
        config = fake_config(tmp_path)
        sup = Supervisor(config, llm_agent(provider, server))
        thread, result = run_in_thread(sup)
        wait_until(lambda: sup.state == "paused", what="the malformed pause")
        time.sleep(0.3)
        requests = len(server.requests)
        detail = Ledger(config.run_dir / "ledger.sqlite").run_row().state_detail
        sup.stop()
        thread.join(10)
    assert requests == 3  # no fourth request was paid for
    assert "3 malformed replies in a row" in detail and "missing required field(s): replace" in detail
    assert result == {"end": "stopped"}


@pytest.mark.parametrize("stream", [True, False])
@pytest.mark.parametrize("provider", PROVIDERS)
def test_a_reply_cut_off_at_the_output_limit_says_so(provider, stream):
    cut = Reply("Editing.", [ToolUse("edit_file", '{"path": "trainer/train.py", "search": "LR')],
                stop_reason="max_tokens" if provider == "anthropic" else "length")
    with LLMServer([cut], api_key=SECRET) as server:
        reply = llm_agent(provider, server, stream=stream, max_tokens=64).adapter.complete(prompt(), None)
    [call] = reply.calls
    assert reply.stop_reason == "max_tokens" and call.arguments is None
    assert "cut off at the output limit (64 tokens)" in call.problem


@pytest.mark.parametrize("stream", [True, False])
def test_anthropic_tool_input_that_is_not_an_object(stream):
    with LLMServer([Reply("", [ToolUse("read_file", ["trainer/train.py"])])], api_key=SECRET) as server:
        [call] = llm_agent("anthropic", server, stream=stream).adapter.complete(prompt(), None).calls
    assert call.arguments is None and "must be a JSON object" in call.problem


def test_a_failed_call_stops_the_rest_of_its_reply(tmp_path):
    wrong_edit = Reply("Raising the learning rate and running.", [
        ToolUse("edit_file", {"path": "trainer/train.py", "search": "LR = 0.5", "replace": "LR = 0.04"}),
        ToolUse("run_trial", {"description": "raise the learning rate to 0.04"}),
    ])
    with LLMServer([wrong_edit, *cycle_script()], api_key=SECRET) as server:
        config = fake_config(tmp_path, max_trials=1, reflect_every=1)
        assert Supervisor(config, llm_agent("anthropic", server)).run() == "finished"
        second = server.requests[1].body
    previous = second["messages"][0]["content"][1]["text"]
    first_result, second_result = previous.split("\n1. edit_file ")[1].split("\n2. run_trial ")
    assert "-> ERROR:" in first_result and "not found" in first_result
    assert "-> ERROR:\nnot run: the earlier edit_file call" in second_result
    [trial] = Ledger(config.run_dir / "ledger.sqlite").finished_trials()
    assert trial.description == "double the learning rate to 0.04"  # the skipped trial never ran


# ---- cost ------------------------------------------------------------------------------------------------------------
def test_max_cost_stops_the_run_cleanly_and_resume_goes_on(tmp_path):
    with LLMServer(cycle_script(), api_key=SECRET) as server:
        # At $1000 per million tokens a turn of a few thousand tokens costs dollars: two turns pass $5.
        config = fake_config(tmp_path, max_trials=1, reflect_every=1, max_cost=5.0, price=[1000.0, 1000.0])
        sup = Supervisor(config, llm_agent("anthropic", server, price=[1000.0, 1000.0]))
        rec = Recorder()
        sup.bus.subscribe(rec)
        assert sup.run() == "stopped"
        paid = len(server.requests)
        ledger = Ledger(config.run_dir / "ledger.sqlite")
        status = run_status(ledger)
        ledger.close()
        assert 1 <= paid < 4 and status["cost"]["cost_usd"] >= 5.0 and status["cost"]["max_cost"] == 5.0
        assert status["state"] == "stopped" and "cost limit is reached" in status["state_detail"]
        assert "--max-cost" in status["state_detail"]
        usage = rec.kinds(ev.USAGE)
        assert len(usage) == paid and usage[-1].data["totals"]["cost_usd"] == pytest.approx(
            status["cost"]["cost_usd"])

        # Resumed with a higher limit, the spend so far still counts and the run goes on to the end.
        config.max_cost = 500.0
        sup = Supervisor(config, llm_agent("anthropic", server, price=[1000.0, 1000.0]), resume=True)
        assert sup.spend.cost_usd == pytest.approx(status["cost"]["cost_usd"])
        assert sup.run() == "finished"
    assert len(Ledger(config.run_dir / "ledger.sqlite").reflections()) == 1


def test_max_cost_needs_a_known_price(tmp_path):
    with LLMServer([], api_key=SECRET) as server:
        config = fake_config(tmp_path, max_cost=1.0)
        sup = Supervisor(config, llm_agent("openai", server, model="my-finetune-v3"))
        with pytest.raises(SupervisorError, match="--price IN,OUT"):
            sup.run()
        assert server.requests == []


def test_spend_limits_resolve_to_a_default_in_dollars_or_tokens(tmp_path):
    from supervisor.core.config import DEFAULT_MAX_COST, DEFAULT_MAX_TOKENS, resolve_spend_limits

    assert resolve_spend_limits(fake_config(tmp_path), prices_known=True)[:2] == (DEFAULT_MAX_COST, None)
    assert resolve_spend_limits(fake_config(tmp_path), prices_known=False)[:2] == (None, DEFAULT_MAX_TOKENS)
    given = resolve_spend_limits(fake_config(tmp_path, max_tokens=1000, max_cost=2.0), prices_known=True)
    assert given == (2.0, 1000, "spend limit: $2.00 and 1,000 tokens (as given)")
    lifted = resolve_spend_limits(fake_config(tmp_path, spend_limit=False), prices_known=False)
    assert lifted[:2] == (None, None) and "no spend limit" in lifted[2]
    with pytest.raises(ConfigError, match="--max-tokens must be at least 1"):
        fake_config(tmp_path, max_tokens=0)


@pytest.mark.parametrize("provider", PROVIDERS)
def test_a_model_without_a_price_stops_at_its_token_limit(tmp_path, provider):
    reading = [read_reply(i) for i in range(30)]
    with LLMServer(reading, api_key=SECRET) as server:
        config = fake_config(tmp_path, max_tokens=20_000, stall_replies=0)
        sup = Supervisor(config, llm_agent(provider, server, model="my-finetune-v3"))
        rec = Recorder()
        sup.bus.subscribe(rec)
        assert sup.run() == "stopped"
        paid = len(server.requests)
        ledger = Ledger(config.run_dir / "ledger.sqlite")
        status = run_status(ledger)
        ledger.close()
    assert 1 <= paid < 30
    assert "the token limit is reached" in status["state_detail"] and "--max-tokens" in status["state_detail"]
    spent = status["cost"]["tokens_in"] + status["cost"]["tokens_out"]
    assert spent >= 20_000 and status["cost"]["max_tokens"] == 20_000 and status["cost"]["max_cost"] is None
    notices = [e.data["message"] for e in rec.kinds(ev.NOTICE)]
    assert "spend limit: 20,000 tokens (as given)" in notices


def test_a_night_has_a_default_spend_limit_said_at_the_start(tmp_path):
    from supervisor.core.config import DEFAULT_MAX_COST, DEFAULT_MAX_TOKENS
    from supervisor.tui.state import cost_text

    with LLMServer(cycle_script(), api_key=SECRET) as server:
        config = fake_config(tmp_path, max_trials=1, reflect_every=1)
        sup = Supervisor(config, llm_agent("anthropic", server))  # a model from the price table
        rec = Recorder()
        sup.bus.subscribe(rec)
        assert sup.run() == "finished"
        ledger = Ledger(config.run_dir / "ledger.sqlite")
        status = run_status(ledger)
        ledger.close()
    assert f"spend limit: ${DEFAULT_MAX_COST:.2f} (the default" in rec.kinds(ev.NOTICE)[0].data["message"]
    assert status["cost"]["max_cost"] == DEFAULT_MAX_COST and status["cost"]["spend_limit"].startswith("spend limit")
    assert f"of ${DEFAULT_MAX_COST:.2f}" in cost_text(status, {})
    unpriced = {"cost": {"turns": 3, "tokens_in": 1500, "tokens_out": 90, "cost_usd": None,
                         "max_tokens": DEFAULT_MAX_TOKENS}}
    assert cost_text(unpriced, {}) == "1.5k in / 90 out tokens of 50.0M"
