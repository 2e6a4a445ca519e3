"""A whole trial cycle driven by each provider's real SDK against the loopback server.

Real git, real trainer subprocess (the stand-in), real ledger; the model's replies are scripted on the
server, and everything the SDK sends is recorded and checked: the tools, the cached prefix, the replayed
previous reply with its tool results, the fresh state of the run.
"""

from __future__ import annotations

import json
import os

import pytest

from supervisor.core import events as ev
from supervisor.run.loop import Supervisor
from supervisor.run.status import run_status
from supervisor.run.tools import TOOL_NAMES, TOOL_SCHEMAS
from supervisor.store.ledger import Ledger
from tests.agents_support import (
    KEY_VARIABLES,
    MODELS,
    PROVIDERS,
    SECRET,
    base_url,
    cycle_script,
    files_containing,
    llm_agent,
)
from tests.llm_server import LLMServer
from tests.loop_support import FAKE_SOURCE, Recorder, cli, fake_config


def transcript(config) -> list[dict]:
    return [json.loads(line) for line in (config.run_dir / "transcript.jsonl").read_text().splitlines()]


@pytest.mark.parametrize("stream", [True, False], ids=["streaming", "plain"])
@pytest.mark.parametrize("provider", PROVIDERS)
def test_full_trial_cycle(tmp_path, monkeypatch, provider, stream):
    monkeypatch.setenv(KEY_VARIABLES[provider], SECRET)
    with LLMServer(cycle_script(), api_key=SECRET) as server:
        config = fake_config(tmp_path, max_trials=1, reflect_every=1, agent=provider)
        sup = Supervisor(config, llm_agent(provider, server, stream=stream))
        rec = Recorder()
        sup.bus.subscribe(rec)
        live: list[str] = []  # what a UI in another process would read while the reply streams in
        sup.bus.subscribe(lambda e: live.append(sup.paths.live_reply.read_text())
                          if e.kind == ev.AGENT_DELTA else None)
        assert sup.run() == "finished"
        requests = server.requests_to(provider)

    ledger = Ledger(config.run_dir / "ledger.sqlite")
    [t] = ledger.finished_trials()
    assert t.status == "keep" and t.description == "double the learning rate to 0.04"
    assert "+LR = 0.04" in t.diff
    assert ledger.journal_for(t.id).hypothesis.startswith("Raising the learning rate")
    assert len(ledger.reflections()) == 1 and not ledger.open_triggers()
    assert "LR = 0.04" in (config.workspace / "trainer/train.py").read_text()

    # Four model turns, each a request built fresh; the SDK streamed when asked to.
    assert len(requests) == 4 and all(r.stream == stream for r in requests)
    deltas = "".join(e.data["text"] for e in rec.kinds(ev.AGENT_DELTA))
    if stream:
        assert deltas.startswith("I'll read the training script first.")
        assert live[0] == deltas[:len(live[0])] and "I'll read the training script first.".startswith(live[3])
        assert len(live[0]) < len(live[3])
    else:
        assert deltas == "" and live == []
    assert not sup.paths.live_reply.exists()  # cleared once the reply is recorded
    texts = [e.data["text"] for e in rec.kinds(ev.AGENT_TEXT)]
    assert texts[0] == "I'll read the training script first." and len(texts) == 4

    # Each later request replays the previous reply's calls with their results, in the protocol's form.
    second, third, fourth = (r.body for r in requests[1:])
    if provider == "anthropic":
        # One user message per request: the previous reply comes as text (thinking-safe), never replayed.
        assert all(len(r.body["messages"]) == 1 for r in requests)
        blocks = [b["text"] for b in second["messages"][0]["content"]]
        assert blocks[1].startswith("## Your previous reply\nI'll read the training script first.")
        assert '1. read_file {"path": "trainer/train.py"} -> ok:' in blocks[1]
        assert "shown above" in blocks[1]  # the whole script is not repeated
        previous = third["messages"][0]["content"][1]["text"]
        assert "2. run_trial" in previous and "trial 1 finished: KEEP" in previous
        state = third["messages"][0]["content"][-1]["text"]
    else:
        said = second["messages"][2]
        assert said["role"] == "assistant" and said["tool_calls"][0]["function"]["name"] == "read_file"
        result = second["messages"][3]
        assert result["role"] == "tool" and result["tool_call_id"] == said["tool_calls"][0]["id"]
        assert "shown above" in result["content"]
        tool_messages = [m for m in third["messages"] if m["role"] == "tool"]
        assert "trial 1 finished: KEEP" in tool_messages[1]["content"]
        state = third["messages"][-1]["content"]
    # The fresh state says what must happen now and shows the results table.
    assert "## What to do now" in state and "Call write_journal" in state
    assert "double the learning rate to 0.04" in state.split("## Results")[1]
    assert "reflection is due" in json.dumps(fourth)
    # The training script in the prompt is the current one (after the edit was kept).
    assert "LR = 0.04  # learning rate" in json.dumps(third)

    # Tokens and dollars: per turn in the transcript, per trial and in all in status --json.
    agent_lines = [x for x in transcript(config) if x["role"] == "agent"]
    assert all(x["usage"]["model"] and x["usage"]["output_tokens"] > 0 for x in agent_lines)
    assert all(x["usage"]["cost_usd"] > 0 for x in agent_lines)
    assert sum(x["usage"]["cache_read_tokens"] for x in agent_lines[1:]) > 0  # the prefix was cached
    status = run_status(ledger)
    cost = status["cost"]
    assert cost["turns"] == 4 and cost["cost_usd"] == pytest.approx(
        sum(x["usage"]["cost_usd"] for x in agent_lines), abs=1e-6)
    assert status["trials"][0]["usage"]["turns"] == 3  # read, edit+run, journal; the reflection comes after
    assert cost["since_last_journal"]["turns"] == 1
    assert cost["models"] == [MODELS[provider]]
    usage_events = rec.kinds(ev.USAGE)
    assert len(usage_events) == 4 and usage_events[-1].data["totals"]["turns"] == 4

    # The key reached the server, and nothing on disk.
    auth = requests[0].headers.get("x-api-key") or requests[0].headers["authorization"]
    assert SECRET in auth
    assert files_containing(config.run_dir, SECRET) == []


@pytest.mark.parametrize("provider", PROVIDERS)
def test_request_carries_the_tools_and_the_cached_prefix(tmp_path, monkeypatch, provider):
    monkeypatch.setenv(KEY_VARIABLES[provider], SECRET)
    with LLMServer(cycle_script(), api_key=SECRET) as server:
        config = fake_config(tmp_path, max_trials=1, reflect_every=1)
        options = {"official": True} if provider == "openai" else {}
        Supervisor(config, llm_agent(provider, server, **options)).run()
        bodies = [r.body for r in server.requests_to(provider)]
    program = (FAKE_SOURCE / "program.md").read_text().strip()

    if provider == "anthropic":
        for body in bodies:
            assert [t["name"] for t in body["tools"]] == list(TOOL_NAMES)
            assert [t["input_schema"] for t in body["tools"]] == [t["input_schema"] for t in TOOL_SCHEMAS]
            # Breakpoint 1: tools + system + program.md; breakpoint 2: the training script.
            system = body["system"]
            assert "cache_control" not in system[0] and system[1]["cache_control"] == {"type": "ephemeral"}
            assert program in system[1]["text"]
            first = body["messages"][0]["content"]
            assert first[0]["cache_control"] == {"type": "ephemeral"} and "```python" in first[0]["text"]
            marked = [b for m in body["messages"] for b in m["content"] if "cache_control" in b]
            assert marked == [first[0]] and len(first) in (2, 3)  # the state is never inside the cached part
            assert "## What to do now" not in json.dumps(system) + first[0]["text"]
        # The stable prefix is byte-identical from turn to turn, so the cache is hit.
        assert len({json.dumps([b["tools"], b["system"]]) for b in bodies}) == 1
    else:
        for body in bodies:
            assert [t["function"]["name"] for t in body["tools"]] == list(TOOL_NAMES)
            assert all(t["type"] == "function" for t in body["tools"])
            assert body["messages"][0]["role"] == "system" and program in body["messages"][0]["content"]
            assert body["messages"][1]["content"].startswith("The training script")
            assert body["max_completion_tokens"] == 16384 and "max_tokens" not in body
        # The cache key and the system message (tools, then system: OpenAI's prefix) never change.
        assert len({b["prompt_cache_key"] for b in bodies}) == 1
        assert len({json.dumps([b["tools"], b["messages"][0]]) for b in bodies}) == 1


def test_local_openai_compatible_server_needs_no_key(tmp_path, monkeypatch):
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    monkeypatch.delenv("OPENAI_BASE_URL", raising=False)
    with LLMServer(cycle_script(), require_key=False) as server:
        config = fake_config(tmp_path, max_trials=1, reflect_every=1)
        agent = llm_agent("openai", server, model="qwen2.5-coder:32b")
        assert agent.price is None  # a local model: tokens are counted, dollars are not
        assert Supervisor(config, agent).run() == "finished"
        bodies = [r.body for r in server.requests]
        headers = server.requests[0].headers
    assert headers["authorization"] == "Bearer not-needed"
    assert all(b["model"] == "qwen2.5-coder:32b" and b["max_tokens"] == 4096 for b in bodies)
    assert all("prompt_cache_key" not in b and "max_completion_tokens" not in b for b in bodies)
    status = run_status(Ledger(config.run_dir / "ledger.sqlite"))
    assert status["cost"]["cost_usd"] is None and status["cost"]["unpriced_turns"] == 4
    assert status["cost"]["tokens_in"] > 0


@pytest.mark.parametrize("provider", PROVIDERS)
def test_cli_run_keeps_the_key_out_of_every_file(tmp_path, provider):
    cache = tmp_path / "cache"
    cache.mkdir()
    (cache / "manifest.json").write_text(json.dumps({"profile": "small"}))
    with LLMServer(cycle_script(), api_key=SECRET) as server:
        env = {KEY_VARIABLES[provider]: SECRET, "ANTHROPIC_BASE_URL": "", "OPENAI_BASE_URL": ""}
        proc = cli("run", "--headless", "--tag", "night", "--agent", provider, "--model",
                   "claude-haiku-5-5" if provider == "anthropic" else "gpt-5.4-mini",
                   "--base-url", base_url(provider, server), "--max-trials", "1", "--reflect-every", "1",
                   "--budget", "5", "--grace", "5", "--max-cost", "5", "--noise-repeats", "0", "--trainer-dir", str(FAKE_SOURCE),
                   "--journals", str(tmp_path / "journals"), "--cache", str(cache), env=env, timeout=120)
        assert len(server.requests) == 4
    assert proc.returncode == 0, proc.stderr
    run_dir = tmp_path / "journals" / "night"
    assert (run_dir / "results.tsv").read_text().count("\tkeep\t") == 1
    assert "Reflection 1" in (run_dir / "journal.md").read_text()
    # Nowhere: not the ledger, transcript, journal, results, trial logs, git objects, nor the trial's env.
    assert files_containing(run_dir, SECRET) == []
    env_dump = next(run_dir.rglob("*.env.json"))
    assert KEY_VARIABLES[provider] not in json.loads(env_dump.read_text())
    assert SECRET not in proc.stdout + proc.stderr
    status = json.loads(cli("status", "--tag", "night", "--json", "--journals", str(tmp_path / "journals")).stdout)
    assert status["agent"] == provider and status["cost"]["max_cost"] == 5.0
    assert status["cost"]["turns"] == 4 and status["cost"]["cost_usd"] > 0
    assert os.environ.get(KEY_VARIABLES[provider]) != SECRET  # the test process itself never held it
