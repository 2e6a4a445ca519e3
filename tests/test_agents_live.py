"""One short real trial cycle against the real API (opt-in: `python -m pytest -m live`, and a key).

The model is real and unscripted; the trainer is the one-second stand-in, so a cycle costs cents:
`--max-cost` guards it anyway. AUTORESEARCH_LIVE_ANTHROPIC_MODEL / AUTORESEARCH_LIVE_OPENAI_MODEL pick the
model (default: a cheap one).
"""

from __future__ import annotations

import os

import pytest

from supervisor.agents import anthropic_agent, openai_agent
from supervisor.run.loop import Supervisor
from supervisor.store.ledger import Ledger
from tests.agents_support import KEY_VARIABLES, files_containing, run_in_thread
from tests.loop_support import fake_config

pytestmark = pytest.mark.live

CHEAP = {"anthropic": "claude-haiku-4-5", "openai": "gpt-5.4-mini"}


@pytest.mark.parametrize("provider", ["anthropic", "openai"])
def test_one_real_trial_cycle(tmp_path, provider):
    key = os.environ.get(KEY_VARIABLES[provider])
    if not key:
        pytest.skip(f"{KEY_VARIABLES[provider]} is not set")
    model = os.environ.get(f"AUTORESEARCH_LIVE_{provider.upper()}_MODEL", CHEAP[provider])
    module = anthropic_agent if provider == "anthropic" else openai_agent
    agent = module.create_agent(model, max_tokens=4096, timeout_s=120.0)
    config = fake_config(tmp_path, max_trials=1, reflect_every=1, max_cost=1.0, outage_s=120.0, agent=provider,
                         model=model)
    sup = Supervisor(config, agent)
    thread, result = run_in_thread(sup)
    thread.join(600)
    if thread.is_alive():
        sup.stop()
        thread.join(60)
    ledger = Ledger(config.run_dir / "ledger.sqlite")
    trials = ledger.finished_trials()
    assert result.get("end") == "finished", (result, ledger.run_row().state_detail)
    assert len(trials) == 1 and ledger.journal_for(trials[0].id) is not None
    assert len(ledger.reflections()) == 1
    assert all(t.usage["output_tokens"] > 0 for t in ledger.turns() if t.role == "agent")
    assert files_containing(config.run_dir, key) == []
