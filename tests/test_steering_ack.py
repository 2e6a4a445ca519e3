"""A message from the person stays in the agent's prompt until the agent acknowledges it.

Through both SDKs against the loopback server: a message sent while a trial runs is still in the prompt after
a refused turn, leaves it once a journal entry answers it; a message answered with acknowledge_steering leaves
it with the agent's reply recorded. `status --json`, journal.md and the UI's transcript say where each stands.
"""

from __future__ import annotations

import json

import pytest

from supervisor.core import events as ev
from supervisor.run.loop import Supervisor
from supervisor.run.status import run_status
from supervisor.store.ledger import Ledger
from supervisor.tui.state import RunWatcher
from tests.agents_support import PROVIDERS, SECRET, cycle_script, llm_agent, read_reply
from tests.llm_server import LLMServer, Reply, ToolUse
from tests.loop_support import fake_config, journal, reflection

MESSAGE = "stop tuning learning rates and try the width"


pytestmark = pytest.mark.usefixtures("llm_keys")


def shows_message(request) -> bool:
    return f"#1: {MESSAGE}" in json.dumps(request.body)


def steering_of(config) -> list:
    ledger = Ledger(config.run_dir / "ledger.sqlite", readonly=True)
    try:
        return ledger.steering()
    finally:
        ledger.close()


@pytest.mark.parametrize("provider", PROVIDERS)
def test_a_message_survives_a_refused_turn_and_a_journal_entry_answers_it(tmp_path, provider):
    script = [
        read_reply(1),
        Reply("Doubling the learning rate.", [
            ToolUse("edit_file", {"path": "trainer/train.py", "search": "LR = 0.02", "replace": "LR = 0.04"}),
            ToolUse("run_trial", {"description": "double the learning rate to 0.04", "category": "learning_rate"}),
        ]),
        Reply("Let me look at the harness first.", [ToolUse("read_file", {"path": "trainer/prepare.py"})]),  # refused
        Reply("Recording the result.", [ToolUse("write_journal", journal(1)["input"])]),
        Reply("Stepping back.", [ToolUse("write_reflection", reflection(1)["input"])]),
    ]
    with LLMServer(script, api_key=SECRET) as server:
        config = fake_config(tmp_path, max_trials=1, reflect_every=1)
        sup = Supervisor(config, llm_agent(provider, server))
        sup.bus.subscribe(lambda e: sup.steer(MESSAGE) if e.kind == ev.TRIAL_STARTED else None)
        assert sup.run() == "finished"
        requests = list(server.requests)
    shown = [shows_message(r) for r in requests]
    # Not before the trial; in the refused turn's prompt and the next one; gone once the journal answered it.
    assert shown == [False, False, True, True, False], shown
    [message] = steering_of(config)
    assert message.state == "acknowledged" and message.ack_how == "journal"
    tools = [t for t in Ledger(config.run_dir / "ledger.sqlite", readonly=True).turns() if t.role == "tool"]
    assert any(t.refused and t.tool == "read_file" for t in tools)
    answer = next(t.text for t in tools if t.tool == "write_journal")
    assert "acknowledges the person's message(s) #1" in answer
    journal_md = (config.run_dir / "journal.md").read_text()
    assert MESSAGE in journal_md and "acknowledged in a journal entry" in journal_md


@pytest.mark.parametrize("provider", PROVIDERS)
def test_acknowledge_steering_takes_the_message_out_with_the_reply_recorded(tmp_path, provider):
    reply = "I will leave the learning rate alone and widen the MLP next."
    script = [
        read_reply(1),
        Reply("Understood.", [ToolUse("acknowledge_steering", {"steering_id": 7, "reply": reply})]),  # no such
        Reply("Understood.", [ToolUse("acknowledge_steering", {"steering_id": 1, "reply": "ok"})]),  # too short
        Reply("Understood.", [ToolUse("acknowledge_steering", {"steering_id": 1, "reply": reply})]),
        *cycle_script(),
    ]
    with LLMServer(script, api_key=SECRET) as server:
        config = fake_config(tmp_path, max_trials=1, reflect_every=1)
        sup = Supervisor(config, llm_agent(provider, server))
        sup.steer(MESSAGE)
        pending = run_status(sup.ledger)["steering"]
        assert [(m["id"], m["state"]) for m in pending] == [(1, "pending")]
        assert sup.run() == "finished"
        requests = list(server.requests)
    shown = [shows_message(r) for r in requests]
    assert shown[:4] == [True, True, True, True] and not any(shown[4:]), shown
    [message] = steering_of(config)
    assert message.ack_how == "tool" and message.ack_note == reply
    ledger = Ledger(config.run_dir / "ledger.sqlite", readonly=True)
    try:
        answers = [t.text for t in ledger.turns() if t.tool == "acknowledge_steering"]
        status = run_status(ledger)
    finally:
        ledger.close()
    assert answers[0].startswith("error: there is no steering message #7")
    assert answers[1].startswith("error: say in a sentence what you will do about message #1")
    assert answers[2].startswith("steering message #1 acknowledged")
    assert status["steering"][0]["state"] == "acknowledged" and status["steering"][0]["ack_note"] == reply
    # The UI's transcript says it, from the ledger alone.
    ledger = Ledger(config.run_dir / "ledger.sqlite", readonly=True)
    try:
        view, _ = RunWatcher(ledger, config.run_dir).poll()
        texts = [item.body for item in view.transcript]
    finally:
        ledger.close()
    assert any("steering message 1: acknowledged by the agent" in t and reply in t for t in texts), texts
