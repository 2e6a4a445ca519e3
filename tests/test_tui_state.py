"""What the app shows and sends, without Textual: the ledger watcher, the control channel, the charts."""

from __future__ import annotations

import math

import pytest
from rich.segment import Segment

from supervisor.ledger import Ledger
from supervisor.lock import RunLock
from supervisor.tui import state as st
from supervisor.tui.charts import Chart, Series, loss_range
from tests.tui_support import synthetic_ledger


@pytest.fixture
def night(tmp_path):
    run_dir = tmp_path / "journals" / "night"
    synthetic_ledger(run_dir, trials=12, running=True, metric_points=40)
    ledger = Ledger(run_dir / "ledger.sqlite")
    yield run_dir, ledger
    ledger.close()


def test_watcher_reads_only_what_changed(night):
    run_dir, ledger = night
    watcher = st.RunWatcher(ledger, run_dir)
    view, changed = watcher.poll()
    assert {st.RUN, st.STATUS, st.TRIAL, st.METRICS, st.REFERENCE, st.TRANSCRIPT, st.JOURNAL} <= changed
    assert view.tag == "night" and view.running and view.focus.id == 13
    assert len(view.focus_metrics) == 20 and len(view.reference_metrics) == 40
    assert view.reference.id == view.focus.parent_trial
    assert not view.live and view.state_label == "interrupted"  # nobody holds the lock
    kinds = [i.kind for i in view.transcript]
    assert {"agent", "tool", "refused", "steering", "delivered"} <= set(kinds)
    assert view.latest_journal["trial_id"] == 12 and view.latest_reflection["after_trial"] == 10
    assert view.cost and "tokens" in view.cost
    # Nothing happened: nothing changed, nothing re-read.
    assert watcher.poll()[1] == frozenset()
    # The loop flushes metric rows: only the curve changes, and only the new rows are read.
    ledger.add_metrics(13, 20, [{"step": 1000 + i, "elapsed": 160.0 + i, "loss": 3.0} for i in range(5)])
    view, changed = watcher.poll()
    assert changed == {st.METRICS}
    assert len(view.focus_metrics) == 25 and view.focus_metrics[-1]["step"] == 1004
    progress = view.budget_progress(now=view.focus.started + 200)
    assert progress.phase == "training" and progress.elapsed_s == 164.0 and progress.wall_s == 200
    # The agent speaks: the transcript grows by that item only.
    ledger.add_turn("agent", "Looking at the curve now.")
    view, changed = watcher.poll()
    assert st.TRANSCRIPT in changed and st.METRICS not in changed
    assert [i.body for i in view.new_transcript] == ["Looking at the curve now."]
    # The trial finishes: the focus trial is read again with its numbers.
    ledger.finish_trial(13, status="keep", val_bpb=1.0, delta=-0.01, decision="kept")
    ledger.set_state("running")
    view, changed = watcher.poll()
    assert {st.RUN, st.STATUS, st.TRIAL} <= changed and view.focus.status == "keep" and not view.running


def test_steering_from_another_process_shows_without_a_turn(night):
    run_dir, ledger = night
    watcher = st.RunWatcher(ledger, run_dir, status_every_s=3600)
    watcher.poll()
    ledger.add_steering("try a longer warmdown")  # e.g. `autoresearch control steer` from another terminal
    view, changed = watcher.poll()
    assert st.TRANSCRIPT in changed
    assert view.new_transcript[-1].kind == "steering" and view.new_transcript[-1].body == "try a longer warmdown"


def test_control_goes_through_the_ledger(night):
    run_dir, ledger = night
    control = st.RunControl(ledger, run_dir)
    with pytest.raises(st.ControlError, match="nothing to pause"):
        control.send("pause")  # nobody runs the loop: a stale pause would fire at the next --resume
    assert "stored" in control.send("steer", "try shorter windows")
    assert ledger.pending_steering()[-1]["message"] == "try shorter windows"
    lock = RunLock(run_dir / "run.lock")
    lock.acquire("night")
    try:
        for command in ("pause", "resume", "stop-trial", "stop"):
            control.send(command)
        control.send("steer", "  widen the MLP  ")
        with pytest.raises(st.ControlError, match="unknown command"):
            control.send("explode")
        with pytest.raises(st.ControlError, match="needs some text"):
            control.send("steer", "   ")
    finally:
        lock.release()
    sent = [(c["command"], c["arg"]) for c in ledger.take_commands()]
    assert sent == [("pause", ""), ("resume", ""), ("stop-trial", ""), ("stop", ""), ("steer", "widen the MLP")]


def _lines(segments: list[Segment]) -> list[str]:
    return "".join(s.text for s in segments).split("\n")[:-1]


def test_chart_fills_its_box_exactly():
    curve = [(i * 0.5, 3 + 5 * math.exp(-i / 30)) for i in range(5000)]
    parent = [(i * 0.5, 3.1 + 5 * math.exp(-i / 25)) for i in range(3000)]
    for width, height in ((30, 8), (80, 20), (200, 50)):
        chart = Chart([Series(parent, "dim", label="#3"), Series(curve, "bold", label="#4")], x_unit="s",
                      y_range=loss_range([curve, parent]))
        lines = _lines(chart.render_lines(width, height))
        assert len(lines) == height and all(len(line) == width for line in lines)
        assert "#4" in lines[-1] and lines[-2].rstrip().endswith("s")
    empty = _lines(Chart([], empty_text="no metrics yet").render_lines(40, 5))
    assert len(empty) == 5 and empty[0].startswith("no metrics yet")
    # The early, huge losses fall off the top: the range is set by where curves are compared.
    low, high = loss_range([curve, parent])
    assert high < 5 and low >= 3
