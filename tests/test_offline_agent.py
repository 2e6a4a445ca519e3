"""The offline agent and the person: free-text steering it cannot follow, and trials the person stopped.

The agent's side is checked on hand-built contexts (instant); the whole path through the loop on the
stand-in trainer (real git, subprocesses and ledger; seconds per test). Assertions read the ledger.
"""

from __future__ import annotations

import dataclasses
import shutil
from pathlib import Path
from typing import Any

from supervisor.agents.base import ToolOutcome, TurnContext
from supervisor.agents.offline import BASELINE, OfflineAgent
from supervisor.core import events as ev
from supervisor.core.types import JournalEntry
from supervisor.run.loop import Supervisor
from supervisor.run.tools import TOOL_SCHEMAS
from supervisor.store.ledger import Ledger
from tests.loop_support import FAKE_SOURCE, fake_config

STEER = "stop tuning learning rates, try shorter attention windows"
NOTE = "cannot follow free-text steering"
TRAIN = "LR = 0.02  # learning rate\nWIDTH = 32  # model width\n"


def context(**overrides: Any) -> TurnContext:
    fields: dict[str, Any] = dict(
        program="", editable="trainer/train.py", train_py=TRAIN, results=[], recent_journal=[],
        latest_reflection=None, plans=[], steering=[], last_outcomes=[], obligation=None, obligation_message="",
        pending_trial=None, trials_done=0, max_trials=None, budget_s=5.0, policy="flag", noise_floor=None,
        best=None, profile=None, tools=TOOL_SCHEMAS,
    )
    fields.update(overrides)
    return TurnContext(**fields)


BASE_ROW = {"id": 1, "status": "keep", "description": BASELINE, "parent_trial": None, "val_bpb": 1.5,
            "delta": None, "flagged": False, "crash_reason": None}


def discard(i: int, description: str) -> dict[str, Any]:
    return {"id": i, "status": "discard", "description": description, "parent_trial": 1, "val_bpb": 1.6,
            "delta": 0.1, "flagged": False, "crash_reason": None}


def journal_call(agent: OfflineAgent, ctx: TurnContext) -> dict[str, str]:
    turn = agent.turn(ctx)
    assert [c.name for c in turn.calls] == ["write_journal"]
    return turn.calls[0].input


def entry_for(trial: dict[str, Any], fields: dict[str, str]) -> JournalEntry:
    return JournalEntry(id=trial["id"], trial_id=trial["id"], created=0.0, result="discard",
                        **{k: fields.get(k, "") for k in ("hypothesis", "change", "interpretation", "next_step")})


# ---- the agent on hand-built contexts ----------------------------------------------------------------------
def test_steering_is_answered_once_in_the_next_journal_entry():
    agent = OfflineAgent()
    two = discard(2, "offline: LR 0.02 -> 0.04")
    # Delivered on a proposal turn: the transcript hears of it at once, the journal in full.
    propose = agent.turn(context(results=[BASE_ROW], best=BASE_ROW, steering=[STEER]))
    assert "Steering received" in propose.text and propose.calls[-1].name == "run_trial"
    first = journal_call(agent, context(results=[BASE_ROW, two], best=BASE_ROW, obligation="journal",
                                        pending_trial=two, recent_journal=[entry_for(BASE_ROW, {})]))
    assert f'"{STEER}"' in first["next_step"] and NOTE in first["next_step"]
    assert "--agent anthropic" in first["next_step"]
    three = discard(3, "offline: LR 0.02 -> 0.01")
    again = journal_call(agent, context(results=[BASE_ROW, two, three], best=BASE_ROW, obligation="journal",
                                        pending_trial=three, recent_journal=[entry_for(two, first)]))
    assert NOTE not in " ".join(again.values())


def test_a_refused_journal_entry_keeps_the_steering_note():
    agent = OfflineAgent()
    two = discard(2, "offline: LR 0.02 -> 0.04")
    ctx = context(results=[BASE_ROW, two], best=BASE_ROW, obligation="journal", pending_trial=two, steering=[STEER])
    assert NOTE in journal_call(agent, ctx)["next_step"]
    # The entry was refused (nothing recorded): the retry still carries the note.
    assert NOTE in journal_call(agent, context(results=[BASE_ROW, two], best=BASE_ROW, obligation="journal",
                                               pending_trial=two))["next_step"]


def test_a_stopped_change_is_not_proposed_again_even_by_a_fresh_agent():
    stopped = [{"id": 2, "status": "aborted", "description": "offline: LR 0.02 -> 0.04",
                "crash_reason": "stopped by the person"}]
    move = OfflineAgent().next_move(context(results=[BASE_ROW], best=BASE_ROW, stopped=stopped))
    assert move is not None and (move[0].name, move[1]) == ("LR", "0.01")
    # A trial cut short by the run stopping (or the supervisor dying) was never judged: it may run again.
    cut = [{**stopped[0], "crash_reason": "the run was stopped"}]
    move = OfflineAgent().next_move(context(results=[BASE_ROW], best=BASE_ROW, stopped=cut))
    assert move is not None and (move[0].name, move[1]) == ("LR", "0.04")


def test_a_stop_is_learnt_from_the_tool_outcome_when_the_context_has_no_stops():
    agent = OfflineAgent()
    first = agent.turn(context(results=[BASE_ROW], best=BASE_ROW))
    assert first.calls[-1].input["description"] == "offline: LR 0.02 -> 0.04"
    outcome = ToolOutcome("run_trial", ok=False, content="trial 2 was stopped by the person and is not counted; "
                                                         "the change was reverted (its diff stays in the ledger).")
    second = agent.turn(context(results=[BASE_ROW], best=BASE_ROW, last_outcomes=[outcome]))
    assert second.calls[-1].input["description"] == "offline: LR 0.02 -> 0.01"
    assert "The person stopped trial 2" in second.text


def test_a_stopped_baseline_runs_once_more_then_the_search_ends():
    stop = {"id": 1, "status": "aborted", "description": BASELINE, "crash_reason": "stopped by the person"}
    once = OfflineAgent().turn(context(stopped=[stop]))
    assert once.calls[-1].input["description"] == BASELINE and "stopped the baseline" in once.text
    twice = OfflineAgent().turn(context(stopped=[stop, {**stop, "id": 2}]))
    assert twice.done and not twice.calls


# ---- through the loop, on the stand-in trainer -------------------------------------------------------------
def slow_source(tmp_path: Path) -> Path:
    """The stand-in trainer at 0.3 s a step (3 s a trial), so a stop lands while the trial runs."""
    src = tmp_path / "source"
    shutil.copytree(FAKE_SOURCE, src)
    train = src / "trainer" / "train.py"
    train.write_text(train.read_text().replace("SLEEP = 0.05", "SLEEP = 0.3"))
    return src


def stop_trial_at_first_metric(sup: Supervisor, trial_id: int) -> None:
    def on_event(event: ev.Event) -> None:
        if event.kind == ev.METRIC and event.data.get("trial_id") == trial_id:
            sup.stop_trial()
    sup.bus.subscribe(on_event)


def ledger_of(config) -> Ledger:
    return Ledger(config.run_dir / "ledger.sqlite")


def test_steering_mid_run_gets_one_honest_note_per_message(tmp_path):
    config = fake_config(tmp_path, max_trials=5)
    sup = Supervisor(config, OfflineAgent())
    later = "make the model deeper"

    def on_event(event: ev.Event) -> None:
        # While trial 2 runs (answered in trial 2's entry), and right after trial 3's entry, when the next
        # turn proposes a trial (answered in trial 4's entry).
        if event.kind == ev.TRIAL_STARTED and event.data["trial_id"] == 2:
            sup.steer(STEER)
        if event.kind == ev.JOURNAL and event.data["trial_id"] == 3:
            sup.steer(later)
    sup.bus.subscribe(on_event)
    assert sup.run() == "finished"
    ledger = ledger_of(config)
    try:
        entries = {e.trial_id: " ".join(str(v) for v in dataclasses.astuple(e)) for e in ledger.journal_entries()}
        assert len(entries) == 5
        assert [t for t, text in entries.items() if STEER in text] == [2]
        assert [t for t, text in entries.items() if later in text] == [4]
        assert [t for t, text in entries.items() if NOTE in text] == [2, 4]
        assert all(s.delivered for s in ledger.steering())
        # It did not pretend: the search went on with its own order (learning rate first).
        assert ledger.trial(2).description.startswith("offline: LR ")
    finally:
        ledger.close()


def test_a_stopped_trial_is_not_run_again_and_the_journal_says_so(tmp_path):
    config = fake_config(tmp_path, max_trials=3, source_dir=slow_source(tmp_path))
    sup = Supervisor(config, OfflineAgent())
    stop_trial_at_first_metric(sup, 2)
    assert sup.run() == "finished"
    ledger = ledger_of(config)
    try:
        stopped = ledger.trial(2)
        assert stopped.status == "aborted" and stopped.crash_reason == "stopped by the person"
        after = ledger.trial(3)
        assert after.status in ("keep", "discard") and after.diff != stopped.diff
        assert after.description != stopped.description
        note = ledger.journal_for(3).next_step
        assert "The person stopped trial 2" in note and stopped.description.removeprefix("offline: ") in note
        later = [t.description for t in ledger.finished_trials()]
        assert stopped.description not in later
    finally:
        ledger.close()


def test_after_resume_neither_a_stopped_nor_a_tried_change_is_repeated(tmp_path):
    source = slow_source(tmp_path)
    config = fake_config(tmp_path, max_trials=2, source_dir=source)
    sup = Supervisor(config, OfflineAgent())
    stop_trial_at_first_metric(sup, 2)
    assert sup.run() == "finished"
    # A new process: a fresh agent with no memory of the stop; only the ledger knows.
    resumed = Supervisor(fake_config(tmp_path, max_trials=4, source_dir=source), OfflineAgent(), resume=True)
    assert resumed.run() == "finished"
    ledger = ledger_of(config)
    try:
        stopped = ledger.trial(2)
        assert stopped.status == "aborted"
        descriptions = [t.description for t in ledger.finished_trials()]
        assert len(descriptions) == 4 and len(set(descriptions)) == 4
        assert stopped.description not in descriptions
    finally:
        ledger.close()
