"""What the person sees of a stop sent while the agent's reply is on its way, and of a resume.

A stop during a pending reply shows at once (the run says it is stopping, not just "running"), and the
reply's calls are not run when it arrives. A resume says where the night stands.
"""

from __future__ import annotations

import threading

import pytest

from supervisor.core import events as ev
from supervisor.run.loop import STOPPING_DETAIL, Supervisor
from supervisor.store.ledger import Ledger
from tests.agents_support import SECRET, llm_agent, read_reply, run_in_thread, wait_until
from tests.llm_server import LLMServer, Recorded, Reply, ToolUse
from tests.loop_support import Recorder, fake_config, journal, trial, write_script

pytestmark = pytest.mark.usefixtures("llm_keys")


@pytest.mark.parametrize("provider", ["anthropic", "openai"])
def test_a_stop_during_a_pending_reply_shows_and_its_calls_do_not_run(tmp_path, provider):
    release = threading.Event()

    def slow_edit(request: Recorded) -> Reply:
        release.wait(60)  # the model is still thinking
        return Reply("Doubling the learning rate.", [
            ToolUse("edit_file", {"path": "trainer/train.py", "search": "LR = 0.02", "replace": "LR = 0.04"})])

    with LLMServer([read_reply(1)], api_key=SECRET) as server:
        server.set_responder(slow_edit)
        config = fake_config(tmp_path)
        sup = Supervisor(config, llm_agent(provider, server, timeout_s=90.0))
        thread, result = run_in_thread(sup)
        try:
            wait_until(lambda: len(server.requests) == 2, timeout=60, what="the second request")
            sup.stop()
            ledger = Ledger(config.run_dir / "ledger.sqlite", readonly=True)
            row = ledger.run_row()
            ledger.close()
            assert (row.state, row.state_detail) == ("running", STOPPING_DETAIL)
        finally:
            release.set()
            thread.join(60)
    assert result == {"end": "stopped"}
    assert "LR = 0.02" in (config.workspace / "trainer/train.py").read_text()
    ledger = Ledger(config.run_dir / "ledger.sqlite", readonly=True)
    try:
        system = [t.text for t in ledger.turns() if t.role == "system"]
        tools = [t.tool for t in ledger.turns() if t.role == "tool"]
    finally:
        ledger.close()
    assert any("stopped while this reply was on its way: its 1 tool call(s) were not run" in s for s in system)
    assert tools == ["read_file"]


def test_a_resume_says_where_the_night_stands(tmp_path):
    from supervisor.agents.scripted import ScriptedAgent

    steps = [trial("baseline"), journal(1), {"tool": "edit_file", "input": {
        "path": "trainer/train.py", "search": "LR = 0.02", "replace": "LR = 0.04"}}, trial("double the lr")]
    config = fake_config(tmp_path, max_trials=5)
    Supervisor(config, ScriptedAgent(write_script(tmp_path / "a.jsonl", steps))).run()
    recorder = Recorder()
    bus = ev.EventBus()
    bus.subscribe(recorder)  # subscribed before the run opens, as the headless printer is
    resumed = Supervisor(config, ScriptedAgent(write_script(tmp_path / "b.jsonl", [])), resume=True, bus=bus)
    row = resumed.ledger.run_row()
    head = resumed.executor.workspace.head()[:7]
    resumed.close()
    assert row.state_detail.startswith("resumed: 2 trial(s) done of 5; last trial 2 (")
    assert "double the lr" in row.state_detail and "best trial 2 at val_bpb" in row.state_detail
    assert f"branch at {head}" in row.state_detail and "the agent owes a journal first" in row.state_detail
    notices = [e.data["message"] for e in recorder.kinds(ev.NOTICE)]
    assert f"resumed run {config.tag}: {row.state_detail.removeprefix('resumed: ')}" in notices
