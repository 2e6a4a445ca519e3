"""What the app shows and sends, without Textual: the ledger watcher (the noise measurement included), the
control channel, the charts and the number formats."""

from __future__ import annotations

import json
import math

import pytest
from rich.segment import Segment

from supervisor.agents.offline import OfflineAgent
from supervisor.run.loop import Supervisor
from supervisor.store.ledger import Ledger
from supervisor.store.lock import RunLock
from supervisor.tui import format as fmt
from supervisor.tui import progress
from supervisor.tui import state as st
from supervisor.tui.charts import Chart, Series, loss_range
from supervisor.tui.control import ControlError, RunControl
from tests.loop_support import fake_config
from tests.tui_support import noise_phase, synthetic_ledger


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
    assert view.latest_journal.trial_id == 12 and view.latest_reflection.after_trial == 10
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
    control = RunControl(ledger, run_dir)
    with pytest.raises(ControlError, match="nothing to pause"):
        control.send("pause")  # nobody runs the loop: a stale pause would fire at the next --resume
    assert "stored" in control.send("steer", "try shorter windows")
    assert ledger.pending_steering()[-1].message == "try shorter windows"
    lock = RunLock(run_dir / "run.lock")
    lock.acquire("night")
    try:
        for command in ("pause", "resume", "stop-trial", "stop"):
            control.send(command)
        control.send("steer", "  widen the MLP  ")
        with pytest.raises(ControlError, match="unknown command"):
            control.send("explode")
        with pytest.raises(ControlError, match="needs some text"):
            control.send("steer", "   ")
    finally:
        lock.release()
    sent = [(c.command, c.arg) for c in ledger.take_commands()]
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


def test_the_first_telemetry_reading_is_taken_whatever_the_uptime(night, monkeypatch):
    """A machine booted 5 s ago: time.monotonic() is far below the reading interval, the first poll reads anyway."""
    run_dir, ledger = night
    readings = []

    def sample():
        readings.append(1)
        return {"kind": "cpu", "cpu_percent": 50.0}

    monkeypatch.setattr(st.time, "monotonic", lambda: 5.0)
    watcher = st.RunWatcher(ledger, run_dir, telemetry=sample, telemetry_every_s=3600)
    view, changed = watcher.poll()
    assert st.TELEMETRY in changed and view.telemetry["cpu_percent"] == 50.0
    assert view.telemetry_history == [50.0]
    assert st.TELEMETRY not in watcher.poll()[1] and len(readings) == 1  # the interval holds after that
    # An injected clock decides the interval, not the machine's.
    now = [100.0]
    watcher = st.RunWatcher(ledger, run_dir, telemetry=sample, telemetry_every_s=2.0, monotonic=lambda: now[0])
    assert st.TELEMETRY in watcher.poll()[1]
    assert st.TELEMETRY not in watcher.poll()[1]
    now[0] += 2.0
    assert st.TELEMETRY in watcher.poll()[1]


def test_noise_measurement_as_the_ui_sees_it(tmp_path):
    """The loop's noise/progress.json and the running seed's metrics.jsonl, read from another process's view."""
    run_dir = tmp_path / "journals" / "night"
    noise_phase(run_dir, repeats=3, done=1, points=40)
    ledger = Ledger(run_dir / "ledger.sqlite")
    try:
        watcher = st.RunWatcher(ledger, run_dir)
        view, changed = watcher.poll()
        assert st.NOISE in changed and view.state_label == "interrupted"  # nobody holds the lock here
        noise = view.noise
        assert noise.repeats == 3 and noise.current.index == 2 and [s.index for s in noise.finished] == [1]
        assert noise.finished[0].val_bpb == pytest.approx(1.83, abs=0.02) and noise.finished[0].num_steps == 480
        assert len(noise.metrics) == 20 and len(noise.curves[1]) == 40  # a seed that ended: its whole curve
        progress = noise.progress(now=noise.current.started + 30)
        assert progress.phase == "training" and progress.elapsed_s == 10.0 and progress.wall_s == 30
        assert watcher.poll()[1] == frozenset()  # nothing new: nothing read again
        # The seed writes more steps (and a torn last line): only the complete new rows are read.
        metrics = run_dir / noise.current.dir / "metrics.jsonl"
        with open(metrics, "a") as fh:
            fh.write(json.dumps({"step": 999, "elapsed": 11.0, "loss": 3.3}) + "\n" + '{"step": 1000, "ela')
        view, changed = watcher.poll()
        assert changed == {st.NOISE} and view.noise.metrics[-1]["step"] == 999 and len(view.noise.metrics) == 21
        # The seed ends and the next starts: its result is in, its curve is kept, the new curve starts empty.
        progress_file = run_dir / "noise" / "progress.json"
        data = json.loads(progress_file.read_text())
        data["seeds"][1].update(status="ok", val_bpb=1.835, num_steps=520)
        data["seeds"].append({"index": 3, "seed": 2002, "status": "running", "started": 1.0,
                              "dir": "noise/next-2"})
        progress_file.write_text(json.dumps(data))
        view, _ = watcher.poll()
        assert view.noise.current.index == 3 and [s.num_steps for s in view.noise.finished] == [480, 520]
        assert view.noise.metrics == [] and set(view.noise.curves) == {1, 2}
        # The measurement is over: the noise view goes, the run goes on.
        ledger.set_state("running")
        view, changed = watcher.poll()
        assert st.NOISE in changed and view.noise is None
    finally:
        ledger.close()


def test_noise_progress_is_read_defensively():
    assert progress.parse_noise_progress({"seeds": "no"}) is None
    view = progress.parse_noise_progress({"repeats": 2, "seeds": [
        {"index": 1, "dir": "/etc", "status": "ok"},           # outside the run folder: not read
        {"index": 2, "dir": "noise/../../x", "status": "ok"},  # same
        {"index": 3, "dir": "noise/1-2", "status": "ok", "val_bpb": "1.2", "num_steps": True},
        "garbage"]})
    assert [s.index for s in view.seeds] == [3]
    assert view.seeds[0].val_bpb is None and view.seeds[0].num_steps is None


def test_the_loop_writes_the_noise_progress_the_ui_reads(tmp_path):
    """The real loop (stand-in trainer): each seed's folder, status, val_bpb and steps, in noise/progress.json."""
    config = fake_config(tmp_path, tag="nz", noise_repeats=2, max_trials=1)
    Supervisor(config, OfflineAgent()).run()
    data = json.loads((config.run_dir / "noise" / "progress.json").read_text())
    view = progress.parse_noise_progress(data)
    assert view.repeats == 2 and [s.status for s in view.seeds] == ["ok", "ok"]
    assert all(s.val_bpb is not None and s.num_steps == 10 for s in view.seeds)
    for seed in view.seeds:  # the folder holds the seed's live curve
        tail = progress.MetricsTail(config.run_dir / seed.dir / "metrics.jsonl")
        assert len(tail.read()) == 10


def test_plurals_and_memory_pairs():
    assert [fmt.plural(n, "item") for n in (0, 1, 2)] == ["0 items", "1 item", "2 items"]
    assert fmt.plural(1, "entry") == "1 entry" and fmt.plural(3, "entry") == "3 entries"
    assert fmt.plural(1204, "step") == "1,204 steps" and fmt.plural(0, "crash") == "0 crashes"
    assert fmt.mb_pair(6144, 24576) == "6.0/24.0 GB" and fmt.mb_pair(300, 1024) == "300/1024 MB"


def test_a_finished_run_takes_no_commands(night):
    run_dir, ledger = night
    ledger.set_state("finished")
    control = RunControl(ledger, run_dir)
    for command, arg in (("steer", "try shorter windows"), ("pause", "")):
        with pytest.raises(ControlError, match="over"):
            control.send(command, arg)
    assert ledger.pending_steering() == []  # not stored for a --resume that would end at once


def test_chart_legend_and_empty_text_fit_a_narrow_pane():
    points = [(i, 1.0 + 0.01 * i) for i in range(10)]
    series = [Series(points, "dim", mode="points", label="discard"), Series(points, "", mode="points", label="crash"),
              Series(points, "bold", mode="steps", label="best keep"), Series(points, "", label="⚑ flagged")]
    for width in (22, 30, 60):
        lines = _lines(Chart(series, y_digits=4).render_lines(width, 8))
        assert len(lines) == 8 and all(len(line) == width for line in lines)
        legend = " ".join(lines)
        assert all(label in legend for label in ("discard", "crash", "best keep", "⚑ flagged")), width
    empty = _lines(Chart([], empty_text="no metrics yet: the curve appears with the first step").render_lines(22, 4))
    assert " ".join(line.strip() for line in empty).strip() == "no metrics yet: the curve appears with the first step"


def test_held_and_unsandboxed_trials_show_in_the_table(night):
    """A held trial is in the graveyard and the suspicious filter; its row says held, an unsandboxed one says so."""
    from supervisor.tui.widgets.experiments import (
        HELD_SYMBOL,
        UNSANDBOXED_MARK,
        description_cell,
        status_cell,
    )

    run_dir, ledger = night
    ledger.finish_trial(13, status="held", val_bpb=1.2, decision="held for review, not kept: the guards found 1",
                        suspicions=["environment: reads the environment (line 3): `os.environ`"],
                        sandbox="none: bwrap is not installed")
    view, _ = st.RunWatcher(ledger, run_dir).poll()
    held = next(t for t in view.trials if t.id == 13)
    assert held.held and held.unsandboxed and held.status.finished and not held.flagged
    assert st.filter_trials(view.trials, "suspicious") == [held]
    assert held in st.filter_trials(view.trials, "graveyard") and "suspicious" in st.FILTERS
    colors = {"warning": "yellow", "success": "green", "error": "red", "primary": "cyan"}
    assert status_cell(held, colors).plain == f"{HELD_SYMBOL} held"
    assert description_cell(held, colors).plain.startswith(UNSANDBOXED_MARK)
    assert view.status["counts"]["held"] == 1 and view.status["counts"]["unsandboxed"] == 1
