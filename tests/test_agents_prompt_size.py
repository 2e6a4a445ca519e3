"""The prompt of a turn stays small all night: measured on a real 100-trial ledger over our own trainer.

Figures (and a baseline: the ever-growing chat the same run would carry) come from
`python benchmarks/prompt_size.py`; this test checks what the turn is made of and that it stays bounded.
"""

from __future__ import annotations

import pytest

from supervisor.agents.llm import RESULT_ROWS_RECENT, estimate_tokens
from tests.agents_support import naive_chat_chars, synthetic_run, typical_prompt


@pytest.fixture(scope="module")
def prompts(tmp_path_factory):
    measured = {}
    for n in (1, 100):
        sup = synthetic_run(tmp_path_factory.mktemp(f"run{n}"), n)
        try:
            prompt = typical_prompt(sup)
            measured[n] = {"prompt": prompt, "chat": naive_chat_chars(sup, prompt),
                           "trials": sup.ledger.finished_trials(), "journal": sup.ledger.journal_entries()}
        finally:
            sup.close()
    return measured


def tokens(prompt) -> dict[str, int]:
    return {k: estimate_tokens(v) for k, v in prompt.sections().items()}


def test_the_turn_at_trial_100_is_bounded(prompts):
    first, last = tokens(prompts[1]["prompt"]), tokens(prompts[100]["prompt"])
    # The stable parts do not grow at all; only the state does, and by a few thousand tokens at most.
    for part in ("system", "tools", "program", "code"):
        assert first[part] == last[part]
    assert last["state"] - first["state"] < 3000
    assert sum(last.values()) < 15_000
    # An ever-growing chat of the same run is several times larger by trial 100, and still growing.
    assert prompts[100]["chat"] / 4 > 3 * sum(last.values())


def test_the_turn_at_trial_100_holds_what_the_issue_asks_for(prompts):
    run = prompts[100]
    state = run["prompt"].state
    trials = run["trials"]
    keeps = [t for t in trials if t.status == "keep"]
    recent = trials[-RESULT_ROWS_RECENT:]
    table = state.split("## Results")[1].split("##")[0]
    rows = {int(line.split()[0]) for line in table.splitlines()[2:] if line[:1].isdigit()}
    assert rows == {t.id for t in keeps} | {t.id for t in recent}  # every keep, and the last trials
    # The last five journal entries, not older ones; the latest reflection; the plan queue; the task.
    assert "Trial 100:" in state and "Trial 96:" in state and "Trial 95:" not in state
    assert "The latest reflection (after trial 100" in state
    assert "## Plan queue" in state and "dropped #" in state
    assert state.rstrip().endswith("plan_add.")  # what to do now comes last
    # The script in full, and the program, are in every turn.
    prompt = run["prompt"]
    assert "```python" in prompt.code and "def " in prompt.code
    assert prompt.program.startswith("# Research program")
    assert prompt.previous is not None and prompt.previous.calls[0].name == "write_journal"
