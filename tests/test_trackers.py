"""Experiment trackers: `export tracker` and `run --tracker`, against real local stores read back through each
tracker's own reading API (trackio's Api and its SQLite store, MlflowClient, W&B's offline run files).

trackio reads its store folder once, when it is imported, so whatever writes to or reads from a trackio store
here runs in a process of its own (the real `autoresearch` command, a small reader script). MLflow takes its
store per client and runs in this process.
"""

from __future__ import annotations

import hashlib
import json
import math
import shutil
import struct
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from supervisor.agents.offline import OfflineAgent
from supervisor.cli.main import main
from supervisor.core import events as ev
from supervisor.core.config import RunConfig
from supervisor.core.paths import RunPaths
from supervisor.core.types import TrialStatus
from supervisor.morning.trackers import Tracker, TrackerRun, open_tracker, tracker_spec
from supervisor.morning.trackers.export import export_run
from supervisor.morning.trackers.live import MAX_FAILURES, LiveTracker
from supervisor.morning.trackers.records import (
    RunFacts,
    cost_summary,
    history_rows,
    run_name,
    trial_config,
    trial_summary,
)
from supervisor.run.loop import Supervisor
from supervisor.run.status import usage_by_trial
from supervisor.store.ledger import Ledger
from supervisor.store.lock import RunLock
from tests.loop_support import FAKE_SOURCE, PROJECT, Recorder, fake_config

TAG = "night"
PLATFORM = {"gpu": "NVIDIA H100 80GB HBM3", "driver": "560.35.03", "torch": "2.13.0", "accelerator": "cuda"}
# (description, agent's category, diff, status, val_bpb, flagged, decision, metric rows)
TRIALS: list[tuple[str, str | None, str, TrialStatus, float | None, bool, str, int]] = [
    ("baseline", "other", "", TrialStatus.KEEP, 1.10, False, "kept: the first result", 12),
    ("raise the learning rate", None, "-LR = 0.02\n+LR = 0.04", TrialStatus.KEEP, 1.097, True,
     "kept, flagged: the gain is under the noise floor", 12),
    ("double the width", "architecture", "-WIDTH = 32\n+WIDTH = 64", TrialStatus.DISCARD, 1.12, False,
     "discarded: worse than its parent", 12),
    ("fused attention kernel", "efficiency", "-MODE = 1\n+MODE = 2", TrialStatus.CRASH, None, False,
     "crash: the loss became NaN", 5),
    ("stopped by the person", None, "-X = 1\n+X = 2", TrialStatus.ABORTED, None, False, "stopped", 3),
    ("still training", None, "-Y = 1\n+Y = 2", TrialStatus.RUNNING, None, False, "", 4),
]
COST_PER_TURN = 0.0125  # trial i's one agent turn costs i x this
NETWORK_WATCH = Path(__file__).parent / "network_watch.py"


# ---- a run through the Ledger API ------------------------------------------------------------------------
def metric_rows(trial_id: int, count: int, crashed: bool) -> list[dict[str, Any]]:
    rows = [{"step": 10 * s, "elapsed": 1.5 * s, "loss": round(4.0 - 0.2 * s - 0.01 * trial_id, 6), "lr": 0.02,
             "tokens_per_s": 1000.0, "mfu": None, "vram_mb": 10.0} for s in range(count)]
    if crashed:
        rows[-1]["loss"] = float("nan")  # how a NaN trial ends: not a point of its curve
    rows.insert(2, {"step": None, "elapsed": None, "loss": None})  # a row without a loss: no point either
    return rows


def make_run(journals: Path, tag: str = TAG) -> Path:
    """A run's ledger with every kind of trial, the agent's spend per trial, and a noise floor."""
    ledger = Ledger(RunPaths(journals / tag).ledger, create=True)
    ledger.init_run(tag, RunConfig(tag=tag, journals_root=journals, policy="flag").to_json())
    ledger.add_noise(commit_sha="0" * 40, budget_s=300.0, platform="test", values=[1.0, 1.004], sd=0.002,
                     factor=2.0)
    parent = None
    for i, (description, category, diff, status, val, flagged, decision, rows) in enumerate(TRIALS, 1):
        ledger.add_turn("agent", f"turn {i}", usage={"model": "m", "input_tokens": 1000 * i, "output_tokens": 10 * i,
                                                    "cost_usd": COST_PER_TURN * i})
        tid = ledger.start_trial(commit_sha=f"{i:040x}", parent_commit=f"{i - 1:040x}", parent_trial=parent,
                                 description=description, category=category, plan_id=None, diff=diff,
                                 budget_s=300.0, platform=PLATFORM, seed=42)
        ledger.add_metrics(tid, 0, metric_rows(tid, rows, status == TrialStatus.CRASH))
        if status == TrialStatus.RUNNING:
            continue
        ledger.finish_trial(tid, status=status, val_bpb=val, flagged=flagged, decision=decision,
                            parent_val_bpb=1.10 if parent else None,
                            delta=None if val is None or parent is None else val - 1.10,
                            crash_reason="FAIL: loss is nan" if status == TrialStatus.CRASH else None,
                            training_seconds=300.0, wall_seconds=331.5, num_steps=10 * rows, tokens_per_s=5.2e5,
                            mfu_percent=41.5, peak_vram_mb=44_000.0)
        if status != TrialStatus.ABORTED:
            ledger.add_journal(tid, hypothesis="h", change="c", result="r", interpretation="i", next_step="n")
        if status == TrialStatus.KEEP:
            parent = tid
    ledger.close()
    return journals


def ledger_curve(journals: Path, trial_id: int, tag: str = TAG) -> list[tuple[int, float]]:
    ledger = Ledger(RunPaths(journals / tag).ledger, readonly=True)
    try:
        return [(r.step, r.values["loss"]) for r in history_rows(ledger.metrics(trial_id))]
    finally:
        ledger.close()


def cli_run(*args: str, env: dict[str, str], watch: Path | None = None) -> subprocess.CompletedProcess:
    """The real `autoresearch` command in a process of its own; with `watch`, every attempt to reach another
    machine (a name looked up, a connection opened) is written there."""
    import os

    full_env = {**os.environ, **env, "PYTHONPATH": str(PROJECT)}
    command = [sys.executable, str(NETWORK_WATCH), str(watch)] if watch else [sys.executable, "-m",
                                                                             "supervisor.cli.main"]
    return subprocess.run([*command, *args], capture_output=True, text=True, env=full_env, timeout=300,
                          cwd=PROJECT)


def trackio_contents(store: Path, project: str = "autoresearch") -> dict[str, Any]:
    """Every run of a trackio project, read through trackio's own API in a process pointed at `store`."""
    script = ("import json, sys\n"
              "import huggingface_hub.constants; huggingface_hub.constants.HF_HUB_OFFLINE = True\n"
              "import trackio\n"
              "from trackio.sqlite_storage import SQLiteStorage\n"
              "project = sys.argv[1]\n"
              "runs = {r.name: {'config': r.config, 'logs': SQLiteStorage.get_logs(project, r.name, run_id=r.id)}\n"
              "        for r in trackio.Api().runs(project)}\n"
              "print(json.dumps(runs, default=str))\n")
    import os

    proc = subprocess.run([sys.executable, "-c", script, project], capture_output=True, text=True, timeout=120,
                          env={**os.environ, "TRACKIO_DIR": str(store)})
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout.strip().splitlines()[-1])


# ---- what a trial becomes ----------------------------------------------------------------------------------
def test_a_trial_becomes_config_history_and_summary(tmp_path):
    journals = make_run(tmp_path / "journals")
    ledger = Ledger(RunPaths(journals / TAG).ledger, readonly=True)
    facts = RunFacts.from_ledger(ledger)
    trial = ledger.trial(2)
    config = trial_config(trial, facts)
    assert config["parent_trial"] == 1 and config["parent_commit"] == f"{1:040x}" and config["commit"] == f"{2:040x}"
    assert config["category"] == "learning_rate" and config["category_source"] == "inferred"
    assert config["diff_sha256"] == hashlib.sha256(b"-LR = 0.02\n+LR = 0.04").hexdigest()[:16]
    assert config["budget_s"] == 300.0 and config["platform"] == PLATFORM
    assert config["noise_floor"] == pytest.approx(0.004) and config["policy"] == "flag"
    assert "diff_sha256" not in trial_config(ledger.trial(1), facts)  # no change, no hash
    summary = trial_summary(trial)
    assert summary["val_bpb"] == 1.097 and summary["flagged"] is True and summary["status"] == "keep"
    assert summary["decision"].startswith("kept, flagged") and summary["delta"] == pytest.approx(-0.003)
    usage = usage_by_trial(ledger.turns(), ledger.journal_entries())["by_trial"]
    assert cost_summary(usage[2].as_dict()) == {"cost_usd": pytest.approx(2 * COST_PER_TURN), "agent_turns": 1,
                                                "agent_tokens_in": 2000, "agent_tokens_out": 20}
    assert cost_summary(None)["cost_usd"] == 0.0  # the offline agent pays nothing
    crash = history_rows(ledger.metrics(4), ledger.trial(4).started)
    assert len(crash) == 4 and all(math.isfinite(r.values["loss"]) for r in crash)  # the NaN and the gap are out
    assert [r.step for r in crash] == [0, 10, 20, 30] and crash[1].time == pytest.approx(ledger.trial(4).started + 1.5)
    assert "val_bpb" not in trial_summary(ledger.trial(4)) and trial_summary(ledger.trial(4))["crash_reason"]
    ledger.close()
    assert run_name("night", 7) == "night-trial-0007"


# ---- export to MLflow (a local SQLite store) ---------------------------------------------------------------
def test_export_to_mlflow_reads_back_and_is_idempotent(tmp_path, capsys):
    from mlflow import MlflowClient

    journals = make_run(tmp_path / "journals")
    store = tmp_path / "mlruns.db"
    export = ["export", "tracker", "--tag", TAG, "--journals", str(journals), "--to", f"mlflow={store}"]
    assert main(export) == 0
    out = capsys.readouterr().out
    assert "exported 5 trial(s) of night" in out and "1 trial(s) still running" in out and "mlflow ui" in out
    client = MlflowClient(tracking_uri=f"sqlite:///{store}")
    experiment = client.get_experiment_by_name(TAG)
    runs = {r.info.run_name: r for r in client.search_runs([experiment.experiment_id])}
    assert sorted(runs) == [f"night-trial-000{i}" for i in range(1, 6)]  # one run per ended trial
    second = runs["night-trial-0002"]
    params = second.data.params
    assert params["parent_trial"] == "1" and params["category"] == "learning_rate"
    assert params["diff_sha256"] == hashlib.sha256(b"-LR = 0.02\n+LR = 0.04").hexdigest()[:16]
    assert params["budget_s"] == "300.0" and params["platform.gpu"] == PLATFORM["gpu"]
    history = client.get_metric_history(second.info.run_id, "loss")
    assert sorted((m.step, m.value) for m in history) == ledger_curve(journals, 2)
    assert len(history) == 12
    assert second.data.metrics["val_bpb"] == 1.097 and second.data.metrics["flagged"] == 1.0
    assert second.data.tags["flagged"] == "true" and second.data.tags["decision"].startswith("kept, flagged")
    assert second.data.metrics["cost_usd"] == pytest.approx(2 * COST_PER_TURN)
    assert second.data.tags["autoresearch.tag"] == TAG and second.info.status == "FINISHED"
    crash = runs["night-trial-0004"]
    assert crash.data.tags["status"] == "crash" and "val_bpb" not in crash.data.metrics
    assert len(client.get_metric_history(crash.info.run_id, "loss")) == 4
    assert runs["night-trial-0005"].info.status == "KILLED"  # stopped by the person
    assert "cost_usd" not in runs["night-trial-0005"].data.metrics  # no journal entry: its share is not known

    # Again: nothing new, nothing doubled.
    assert main(export) == 0
    assert "5 trial(s) were already there" in capsys.readouterr().out
    assert len(client.search_runs([experiment.experiment_id])) == 5
    # The running trial is judged while its supervisor runs: it is left out until its journal entry is written
    # (the agent's cost is not complete before, and `run --tracker` may still be sending it).
    ledger = Ledger(RunPaths(journals / TAG).ledger)
    ledger.finish_trial(6, status=TrialStatus.DISCARD, val_bpb=1.2, decision="discarded")
    lock = RunLock(RunPaths(journals / TAG).lock)
    lock.acquire(TAG)
    try:
        assert main(export) == 0
        out = capsys.readouterr().out
        assert "exported 0 trial(s)" in out and "being written up, left for a later export: 6" in out
    finally:
        lock.release()
    ledger.add_journal(6, hypothesis="h", change="c", result="r", interpretation="i", next_step="n")
    ledger.close()
    assert main(export) == 0
    assert "exported 1 trial(s)" in capsys.readouterr().out
    assert len(client.search_runs([experiment.experiment_id])) == 6
    # --replace sends every trial again, in place of the old runs.
    assert main([*export, "--replace"]) == 0
    assert "6 trial(s) were already there: deleted and sent again" in capsys.readouterr().out
    again = {r.info.run_name: r.info.run_id for r in client.search_runs([experiment.experiment_id])}
    assert len(again) == 6 and again["night-trial-0002"] != second.info.run_id


# ---- export to trackio (its local store), offline -----------------------------------------------------------
@pytest.mark.slow
def test_export_to_trackio_stays_local_and_reads_back(tmp_path):
    journals = make_run(tmp_path / "journals")
    store, watch = tmp_path / "trackio", tmp_path / "network.json"
    # A saved Hugging Face token would make trackio ask huggingface.co who the user is: it must not.
    env = {"TRACKIO_DIR": str(store), "HF_TOKEN": "hf_" + "x" * 34, "HF_HOME": str(tmp_path / "hf")}
    export = ["export", "tracker", "--tag", TAG, "--journals", str(journals), "--to", "trackio"]
    proc = cli_run(*export, env=env, watch=watch)
    assert proc.returncode == 0, proc.stderr
    assert json.loads(watch.read_text()) == []  # not one name looked up, not one connection out
    assert "exported 5 trial(s)" in proc.stdout and "trackio show --project autoresearch" in proc.stdout
    assert "* Created new run" not in proc.stdout  # trackio's own lines are kept out of the command's
    runs = trackio_contents(store)
    assert sorted(runs) == [f"night-trial-000{i}" for i in range(1, 6)]
    second = runs["night-trial-0002"]
    assert second["config"]["_Group"] == TAG and second["config"]["parent_trial"] == 1
    assert second["config"]["category"] == "learning_rate" and second["config"]["platform"] == PLATFORM
    assert second["config"]["diff_sha256"] == hashlib.sha256(b"-LR = 0.02\n+LR = 0.04").hexdigest()[:16]
    curve = [(row["step"], row["loss"]) for row in second["logs"] if "loss" in row]
    assert curve == ledger_curve(journals, 2)
    summary = next(row for row in second["logs"] if "val_bpb" in row)
    assert summary["val_bpb"] == 1.097 and summary["flagged"] is True and summary["status"] == "keep"
    assert summary["cost_usd"] == pytest.approx(2 * COST_PER_TURN) and summary["step"] == curve[-1][0]
    again = cli_run(*export, env=env)
    assert again.returncode == 0 and "5 trial(s) were already there" in again.stdout
    assert len(trackio_contents(store)) == 5


# ---- export to W&B, offline files ------------------------------------------------------------------------
def wandb_records(run_file: Path) -> list[Any]:
    """The records of a W&B offline run file: a 7-byte header (':W&B', magic, version), then the LevelDB log
    format wandb writes (32 KiB blocks; records of checksum, length, type; a type 2-3-4 chain split across
    blocks), each a wandb_internal Record."""
    from wandb.proto import wandb_internal_pb2

    data = run_file.read_bytes()
    assert data[:4] == b":W&B"
    block, header = 32768, 7
    pos, parts, records = 7, [], []
    while pos + header <= len(data):
        left = block - pos % block
        if left < header:
            pos += left
            continue
        _checksum, length, kind = struct.unpack("<IHB", data[pos:pos + header])
        pos += header
        if kind == 0 and length == 0:  # the zero padding at the end of a block
            pos += left - header
            continue
        parts.append(data[pos:pos + length])
        pos += length
        if kind in (1, 4):  # a whole record, or the last piece of one
            record = wandb_internal_pb2.Record()
            record.ParseFromString(b"".join(parts))
            records.append(record)
            parts = []
        elif kind == 2:
            parts = parts[-1:]
    return records


def _item_key(item: Any) -> str:
    return item.key or ".".join(item.nested_key)


@pytest.mark.slow
def test_export_to_wandb_offline_reads_back(tmp_path):
    pytest.importorskip("wandb")
    journals = make_run(tmp_path / "journals")
    watch = tmp_path / "network.json"
    proc = cli_run("export", "tracker", "--tag", TAG, "--journals", str(journals), "--to", "wandb",
                   env={"WANDB_MODE": "offline", "WANDB_API_KEY": ""}, watch=watch)
    assert proc.returncode == 0, proc.stderr
    assert json.loads(watch.read_text()) == []
    assert "wandb sync" in proc.stdout
    folders = sorted((journals / TAG / "wandb").glob("offline-run-*-night-trial-0002"))
    assert len(folders) == 1
    records = wandb_records(next(folders[0].glob("run-*.wandb")))
    run = next(r.run for r in records if r.WhichOneof("record_type") == "run")
    assert run.run_group == TAG and run.display_name == "night-trial-0002" and run.run_id == "night-trial-0002"
    config = {_item_key(i): json.loads(i.value_json) for i in run.config.update}
    assert config["parent_trial"] == 1 and config["category"] == "learning_rate"
    assert config["platform"] == PLATFORM and config["budget_s"] == 300.0
    history = []
    for record in records:
        if record.WhichOneof("record_type") == "history":
            items = {_item_key(i): json.loads(i.value_json) for i in record.history.item}
            history.append((items["_step"], items["loss"]))
    assert history == ledger_curve(journals, 2)
    summary = {}
    for record in records:
        if record.WhichOneof("record_type") == "summary":
            summary.update({_item_key(i): json.loads(i.value_json) for i in record.summary.update})
    assert summary["val_bpb"] == 1.097 and summary["decision"].startswith("kept, flagged")
    assert summary["flagged"] is True and summary["cost_usd"] == pytest.approx(2 * COST_PER_TURN)
    again = cli_run("export", "tracker", "--tag", TAG, "--journals", str(journals), "--to", "wandb",
                    env={"WANDB_MODE": "offline"})
    assert again.returncode == 0 and "5 trial(s) were already there" in again.stdout
    assert len(list((journals / TAG / "wandb").glob("offline-run-*"))) == 5


# ---- live: run --tracker ---------------------------------------------------------------------------------
@pytest.mark.slow
def test_a_run_streams_its_trials_to_mlflow_and_an_export_after_finds_them(tmp_path):
    from mlflow import MlflowClient

    config = fake_config(tmp_path, tag="live", max_trials=3, reflect_every=10)
    store = tmp_path / "mlflow.db"
    tracker = open_tracker(tracker_spec(f"mlflow={store}"), project="autoresearch",
                           journals_root=config.journals_root, run_dir=config.run_dir)
    bus, events = ev.EventBus(), Recorder()
    bus.subscribe(events)
    live = LiveTracker(tracker, ledger_path=RunPaths(config.run_dir).ledger, tag="live", bus=bus, batch_rows=4)
    assert Supervisor(config, OfflineAgent(), bus=bus).run() == "finished"
    assert live.close()
    assert not [e for e in events.kinds(ev.NOTICE) if "tracker" in e.data["message"]]
    client = MlflowClient(tracking_uri=f"sqlite:///{store}")
    runs = {r.info.run_name: r for r in client.search_runs([client.get_experiment_by_name("live").experiment_id])}
    ledger = Ledger(RunPaths(config.run_dir).ledger, readonly=True)
    trials = ledger.trials()
    assert len(trials) == 3 and sorted(runs) == [run_name("live", t.id) for t in trials]
    for trial in trials:
        run = runs[run_name("live", trial.id)]
        curve = sorted((m.step, m.value) for m in client.get_metric_history(run.info.run_id, "loss"))
        assert curve == [(r.step, r.values["loss"]) for r in history_rows(ledger.metrics(trial.id))]
        assert len(curve) == 10  # the stand-in trainer's ten metric lines
        assert run.data.tags["status"] == str(trial.status) and run.info.status == "FINISHED"
        assert run.data.metrics["val_bpb"] == pytest.approx(trial.val_bpb)
        assert run.data.metrics["cost_usd"] == 0.0  # sent once its journal entry was written
        expected_hash = hashlib.sha256(trial.diff.encode()).hexdigest()[:16] if trial.diff.strip() else None
        assert run.data.params.get("diff_sha256") == expected_hash  # a baseline changes nothing: no hash
    again = open_tracker(tracker_spec(f"mlflow={store}"), project="autoresearch",
                         journals_root=config.journals_root, run_dir=config.run_dir)
    result = export_run(ledger, again)
    assert result.exported == [] and result.skipped == [t.id for t in trials]
    ledger.close()


class FullDisk(Tracker):
    """A tracker whose store fails every write (a full disk, a server gone): what the live sink must survive."""

    name = "fulldisk"

    def __init__(self) -> None:
        super().__init__("autoresearch")
        self.started: list[str] = []

    def existing(self, group: str) -> dict[str, Any]:
        return {}

    def delete(self, group: str, handles: Any) -> None:
        pass

    def start(self, *, group: str, name: str, config: Any) -> TrackerRun:
        self.started.append(name)
        return FullDiskRun()

    def where(self) -> str:
        return "a full disk"

    def how_to_look(self, group: str) -> str:
        return "nothing to look at"


class FullDiskRun(TrackerRun):
    name = "full"

    def log_history(self, rows: Any) -> None:
        raise OSError(28, "No space left on device")

    def set_summary(self, summary: Any) -> None:
        raise OSError(28, "No space left on device")

    def finish(self, *, aborted: bool = False) -> None:
        pass

    def discard(self) -> None:
        pass


@pytest.mark.slow
def test_a_failing_tracker_is_a_notice_and_the_night_goes_on(tmp_path):
    config = fake_config(tmp_path, tag="full", max_trials=MAX_FAILURES + 1, reflect_every=10)
    bus, events = ev.EventBus(), Recorder()
    bus.subscribe(events)
    tracker = FullDisk()
    live = LiveTracker(tracker, ledger_path=RunPaths(config.run_dir).ledger, tag="full", bus=bus, batch_rows=2)
    assert Supervisor(config, OfflineAgent(), bus=bus).run() == "finished"
    assert live.close()
    ledger = Ledger(RunPaths(config.run_dir).ledger, readonly=True)
    assert len(ledger.finished_trials()) == MAX_FAILURES + 1  # every trial ran and was judged
    ledger.close()
    notices = [e.data["message"] for e in events.kinds(ev.NOTICE) if "fulldisk" in e.data["message"]]
    assert "trial 1 was not fully sent (OSError: [Errno 28] No space left on device)" in notices[0]
    assert "--to fulldisk --replace" in notices[0]
    assert any("streaming stopped" in n for n in notices)
    assert tracker.started == [run_name("full", i) for i in range(1, MAX_FAILURES + 1)]  # then it stopped trying


class Recording(Tracker):
    """A tracker that records what it is sent, and whose first start waits until released."""

    name = "recording"

    def __init__(self) -> None:
        super().__init__("autoresearch")
        self.release = threading.Event()
        self.rows: list[Any] = []
        self.finished: list[str] = []

    def existing(self, group: str) -> dict[str, Any]:
        return {}

    def delete(self, group: str, handles: Any) -> None:
        pass

    def start(self, *, group: str, name: str, config: Any) -> TrackerRun:
        self.release.wait(30)
        tracker = self

        class Run(TrackerRun):
            def log_history(self, rows: Any) -> None:
                tracker.rows += rows

            def set_summary(self, summary: Any) -> None:
                pass

            def finish(self, *, aborted: bool = False) -> None:
                tracker.finished.append(name)

            def discard(self) -> None:
                pass

        return Run()

    def where(self) -> str:
        return "memory"

    def how_to_look(self, group: str) -> str:
        return ""


def test_a_slow_tracker_never_holds_up_the_loop(tmp_path):
    journals = make_run(tmp_path / "journals")
    bus, tracker = ev.EventBus(), Recording()
    live = LiveTracker(tracker, ledger_path=RunPaths(journals / TAG).ledger, tag=TAG, bus=bus)
    start = time.perf_counter()
    bus.emit(ev.TRIAL_STARTED, trial_id=1)
    for step in range(20_000):
        bus.emit(ev.METRIC, trial_id=1, metric={"step": step, "loss": 3.0})
    bus.emit(ev.TRIAL_FINISHED, trial_id=1, status=TrialStatus.KEEP)
    bus.emit(ev.JOURNAL, trial_id=1)
    emitting = time.perf_counter() - start
    assert emitting < 2.0 and not tracker.finished  # the tracker has not even started its run yet
    tracker.release.set()
    assert live.close(timeout=60)
    assert len(tracker.rows) == 20_000 and tracker.finished == [run_name(TAG, 1)]


def wandb_contents(folder: Path) -> dict[str, Any]:
    """Every offline W&B run in `folder`, read from its run file: config, loss curve and summary by name."""
    runs = {}
    for run_file in folder.glob("offline-run-*/run-*.wandb"):
        records = wandb_records(run_file)
        run = next(r.run for r in records if r.WhichOneof("record_type") == "run")
        curve, summary = [], {}
        for record in records:
            kind = record.WhichOneof("record_type")
            if kind == "history":
                items = {_item_key(i): json.loads(i.value_json) for i in record.history.item}
                curve.append((items["_step"], items["loss"]))
            elif kind == "summary":
                summary.update({_item_key(i): json.loads(i.value_json) for i in record.summary.update})
        runs[run.display_name] = {"config": {_item_key(i): json.loads(i.value_json) for i in run.config.update},
                                  "group": run.run_group, "curve": curve, "summary": summary}
    return runs


@pytest.mark.slow
@pytest.mark.parametrize("tracker", ["trackio", "wandb"])
def test_run_tracker_from_the_command_line_keeps_trials_offline(tmp_path, tracker):
    if tracker == "wandb":
        pytest.importorskip("wandb")
    source = tmp_path / "source"
    shutil.copytree(FAKE_SOURCE, source)
    cache = tmp_path / "cache"
    cache.mkdir()
    (cache / "manifest.json").write_text(json.dumps({"profile": "small"}))
    store, journals = tmp_path / "store", tmp_path / "journals"
    proc = cli_run("run", "--headless", "--tag", "cli", "--trainer-dir", str(source), "--budget", "5", "--grace", "10",
                   "--journals", str(journals), "--cache", str(cache), "--max-trials", "2", "--noise-repeats", "0",
                   "--tracker", "trackio" if tracker == "trackio" else f"wandb={store}",
                   env={"TRACKIO_DIR": str(store), "HF_HOME": str(tmp_path / "hf"), "WANDB_MODE": "offline"},
                   watch=tmp_path / "network.json")
    assert proc.returncode == 0, proc.stderr
    assert "streaming every trial to" in proc.stderr and "tracker" not in proc.stdout  # no failure told
    assert "* Created new run" not in proc.stdout and "trial 2" in proc.stdout
    assert json.loads((tmp_path / "network.json").read_text()) == []
    if tracker == "trackio":
        runs = {name: {"curve": [(r["step"], r["loss"]) for r in run["logs"] if "loss" in r],
                       "summary": {k: v for row in run["logs"] for k, v in row.items()}, "group": run["config"]["_Group"]}
                for name, run in trackio_contents(store).items()}
    else:
        runs = wandb_contents(store / "wandb")
    assert sorted(runs) == ["cli-trial-0001", "cli-trial-0002"]
    ledger = Ledger(RunPaths(journals / "cli").ledger, readonly=True)
    for name, contents in runs.items():
        trial = ledger.trial(int(name.rsplit("-", 1)[1]))
        assert contents["curve"] == ledger_curve(journals, trial.id, "cli") and len(contents["curve"]) == 10
        assert contents["group"] == "cli" and contents["summary"]["status"] == str(trial.status)
        assert contents["summary"]["val_bpb"] == pytest.approx(trial.val_bpb)
        assert contents["summary"]["cost_usd"] == 0.0
    ledger.close()
    # What each trial's process was given: nothing of the tracker (the stand-in trainer writes its env down).
    seen = [json.loads(p.read_text()) for p in journals.rglob("*.env.json")]
    assert seen and all(not any(k.startswith(("TRACKIO", "WANDB", "MLFLOW", "SUPERVISOR_", "HF_TOKEN")) for k in env)
                        for env in seen)


# ---- mistakes, in one line ---------------------------------------------------------------------------------
def test_wrong_tracker_arguments_are_one_line(tmp_path):
    journals = make_run(tmp_path / "journals")
    cases = [
        (["--tag", TAG, "--to", "neptune"], 2, "unknown tracker 'neptune': use trackio, wandb or mlflow"),
        (["--tag", TAG, "--to", "mlflow="], 2, "nothing after 'mlflow='"),
        (["--tag", TAG, "--to", "mlflow=http://me:secret@host:5000"], 2, "the store URI carries credentials"),
        (["--tag", TAG, "--to", "trackio", "--project", "../up"], 2, "invalid project '../up'"),
        (["--tag", "nosuchrun", "--to", "trackio"], 1, "no run 'nosuchrun'"),
    ]
    for extra, code, message in cases:
        proc = cli_run("export", "tracker", "--journals", str(journals), *extra, env={})
        assert proc.returncode == code, (extra, proc.stderr)
        assert message in proc.stderr and len(proc.stderr.strip().splitlines()) == 1, proc.stderr
    assert "secret" not in proc.stderr
    # MLflow 3 refuses its old file store unless told otherwise: said in one line, before anything is sent.
    refused = cli_run("export", "tracker", "--journals", str(journals), "--tag", TAG, "--to",
                      f"mlflow=file://{tmp_path / 'mlruns'}", env={})
    assert refused.returncode == 1 and len(refused.stderr.strip().splitlines()) == 1, refused.stderr
    assert f"MLflow store file://{tmp_path / 'mlruns'}: " in refused.stderr
    bad_run = cli_run("run", "--headless", "--tag", "x", "--tracker", "comet", env={})
    assert bad_run.returncode == 2 and "unknown tracker 'comet'" in bad_run.stderr


def test_the_ui_hands_its_tracker_to_the_loop_process_and_no_further(monkeypatch):
    """With the UI, `run` starts the loop as a process of its own (launcher.py) and hands `--tracker` over in
    SUPERVISOR_LIVE_TRACKER; the loop takes it out of its environment, so nothing it starts inherits it."""
    import os

    from supervisor.cli.main import LIVE_TRACKER_VARIABLE, _live_tracker_choice, build_parser

    monkeypatch.setenv(LIVE_TRACKER_VARIABLE, "mlflow=/data/mlflow.db")
    args = build_parser().parse_args(["run", "--headless", "--tag", "t"])
    assert _live_tracker_choice(args) == tracker_spec("mlflow=/data/mlflow.db")
    assert LIVE_TRACKER_VARIABLE not in os.environ
    given = build_parser().parse_args(["run", "--headless", "--tag", "t", "--tracker", "wandb"])
    assert _live_tracker_choice(given).name == "wandb"
    assert _live_tracker_choice(args) is None  # nothing handed, nothing given


def test_a_missing_tracker_package_names_the_extra(tmp_path):
    journals = make_run(tmp_path / "journals")
    # wandb made unimportable in that process, as on a machine without the extra.
    script = ("import sys; sys.modules['wandb'] = None\n"
              "from supervisor.cli.main import main\n"
              "sys.exit(main(sys.argv[1:]))\n")
    import os

    proc = subprocess.run([sys.executable, "-c", script, "export", "tracker", "--tag", TAG, "--journals",
                           str(journals), "--to", "wandb"], capture_output=True, text=True, timeout=120, cwd=PROJECT,
                          env={**os.environ, "PYTHONPATH": str(PROJECT)})
    assert proc.returncode == 1
    assert proc.stderr.strip() == ("autoresearch: the wandb tracker needs its package, which is not installed: "
                                   "pip install 'autoresearch-supervisor[wandb]'")


def test_the_domain_loads_no_tracker_sdk():
    code = ("import sys\n"
            "import supervisor.cli.main, supervisor.morning.commands\n"
            "import supervisor.morning.trackers.export, supervisor.morning.trackers.live\n"
            "loaded = [m for m in ('trackio', 'wandb', 'mlflow', 'huggingface_hub') if m in sys.modules]\n"
            "print(loaded)\n")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, cwd=PROJECT)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "[]"


def test_a_trials_rows_cannot_switch_off_a_tracker_nor_a_token_ride_in_a_store_uri():
    import argparse

    from supervisor.morning.trackers.base import tracker_spec
    from supervisor.morning.trackers.records import history_row

    assert history_row({"step": 1e300, "loss": 1.0}, 7).step == 7  # beyond int64: placed at its position
    assert history_row({"step": True, "loss": 1.0}, 3).step == 3 and history_row({"step": 12, "loss": 1.0}, 0).step == 12
    for uri in ("mlflow=https://user:pw@mlflow.example/", "mlflow=https://mlflow.example/?token=abc",
                "mlflow=https://mlflow.example/?api_key=abc"):
        with pytest.raises(argparse.ArgumentTypeError, match="carries credentials"):
            tracker_spec(uri)
    assert tracker_spec("mlflow=sqlite:///runs.db")
