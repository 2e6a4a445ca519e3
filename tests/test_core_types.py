"""The typed rows keep their contract: attributes are the ledger's column names; the trial encoder's shapes."""

from __future__ import annotations

import dataclasses
import json

import pytest

from supervisor.core import types
from supervisor.store.ledger import Ledger

# Row type -> (table, columns it leaves out, attribute -> the column it decodes).
ROWS = {
    types.Trial: ("trials", set(), {}),
    types.JournalEntry: ("journal", set(), {}),
    types.Trigger: ("triggers", set(), {}),
    types.Reflection: ("reflections", set(), {}),
    types.Plan: ("plans", set(), {}),
    types.Steering: ("steering", set(), {}),
    types.Turn: ("turns", set(), {}),
    types.NoiseRecord: ("noise", set(), {"values": "values_json"}),
    types.RunRecord: ("run", {"id"}, {}),  # the one-row table's fixed id is no fact about the run
    types.Command: ("commands", set(), {}),
}


@pytest.mark.parametrize("row_type", list(ROWS), ids=lambda t: t.__name__)
def test_row_attributes_are_the_table_columns(tmp_path, row_type):
    ledger = Ledger(tmp_path / "ledger.sqlite", create=True)
    try:
        table, left_out, renamed = ROWS[row_type]
        columns = [r["name"] for r in ledger._query(f"PRAGMA table_info({table})")]
    finally:
        ledger.close()
    attributes = [renamed.get(f.name, f.name) for f in dataclasses.fields(row_type)]
    assert attributes == [c for c in columns if c not in left_out]


def test_the_ledger_returns_typed_rows_with_enums(tmp_path):
    ledger = Ledger(tmp_path / "ledger.sqlite", create=True)
    try:
        ledger.init_run("t", "{}")
        plan = ledger.add_plan("wider")
        tid = ledger.start_trial(commit_sha="a" * 40, parent_commit=None, parent_trial=None, description="d",
                                 category=None, plan_id=plan, diff="", budget_s=1.0, platform={}, seed=0)
        ledger.finish_trial(tid, status=types.TrialStatus.KEEP, val_bpb=1.0, suspicions=["x"])
        trial = ledger.trial(tid)
        assert trial is not None and trial.status is types.TrialStatus.KEEP and trial.status.finished
        assert trial.kind is types.TrialKind.TRIAL and trial.suspicions == ("x",)
        assert ledger.plan(plan).status is types.PlanStatus.TRIED
        assert ledger.run_row().state is types.RunState.NEW
        ledger.send_command("steer", "hi")
        assert [(c.command, c.arg) for c in ledger.take_commands()] == [("steer", "hi")]
        record = types.trial_record(trial)
        assert list(record) == list(types.STATUS_RECORD_KEYS) and record["status"] == "keep"
        assert json.loads(json.dumps(record))["suspicious"] == ["x"]
        agent = types.trial_record(trial, for_agent=True)
        assert list(agent) == list(types.AGENT_RECORD_KEYS) and agent["commit"] == "aaaaaaa"
    finally:
        ledger.close()
