"""benchmarks/gpu_check.py on the CPU: the --tiny run end to end, the deadline, and an interrupted run.

The GPU figures themselves exist only where a GPU is lent (docs/benchmarks.md, "GPU check"); what is tested
here is everything around them: every step runs or says why not, the summaries are parsed, the table is
written, and a deadline or a signal still leaves a table.
"""

from __future__ import annotations

import importlib.util
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from types import ModuleType

import pytest

ROOT = Path(__file__).resolve().parent.parent
SCRIPT = ROOT / "benchmarks" / "gpu_check.py"
STEPS = ("1", "2", "3a", "3b", "3c", "3d", "4", "5", "6")


def load_gpu_check() -> ModuleType:
    spec = importlib.util.spec_from_file_location("gpu_check", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules["gpu_check"] = module  # dataclasses look their module up while the class is made
    spec.loader.exec_module(module)
    return module


def run_check(tmp_path: Path, *args: str, timeout: float = 900) -> tuple[subprocess.CompletedProcess, Path]:
    out = tmp_path / "out"
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AUTORESEARCH_", "OUT"))}
    proc = subprocess.run([sys.executable, str(SCRIPT), "--out", str(out), "--work", str(tmp_path / "work"), *args],
                          capture_output=True, text=True, timeout=timeout, env=env, cwd=ROOT)
    return proc, out


def step_rows(markdown: str) -> dict[str, list[str]]:
    """The main table's rows by step id: [what, status, result, seconds]."""
    rows = {}
    for line in markdown.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) == 5 and cells[0] in STEPS:
            rows[cells[0]] = cells[1:]
    return rows


@pytest.mark.slow
def test_tiny_runs_every_step_on_the_cpu(tmp_path: Path) -> None:
    proc, out = run_check(tmp_path, "--tiny", "--deadline", "540", timeout=590)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    markdown = (out / "gpu_check.md").read_text()
    assert "# GPU check (--tiny, finished)" in markdown
    assert re.search(r"^\| GPU \| driver \| torch \| CUDA \|", markdown, flags=re.M)
    rows = step_rows(markdown)
    assert set(rows) == set(STEPS), markdown
    status = {step: row[1] for step, row in rows.items()}
    assert status == {"1": "ok", "2": "skipped", "3a": "ok", "3b": "skipped", "3c": "ok", "3d": "ok", "4": "ok",
                      "5": "ok", "6": "ok"}, markdown
    assert "no CUDA" in rows["2"][2] and "GFLOP/s" in rows["2"][2]
    assert "no CUDA" in rows["3b"][2] and "NVML: skipped: no CUDA" in rows["6"][2]
    assert "upstream's 25.8 s" in rows["3d"][2]

    data = {s["step"]: s for s in json.loads((out / "gpu_check.json").read_text())["steps"]}
    doctor = {c["name"]: c["status"] for c in data["1"]["data"]["checks"]}
    assert doctor["torch"] == "ok" and doctor["bf16"] == "ok" and doctor["attention"] in ("ok", "info")
    eager = data["3c"]["data"]
    assert eager["tokens_per_s"] > 0 and eager["num_steps"] >= 1 and eager["device_batch_size"] == 16
    assert eager["startup_seconds"] is not None and eager["handover_seconds"] >= 0 and eager["metric_rows"] >= 1
    run = data["3d"]["data"]
    assert len(run["trials"]) == 2 and run["mean_non_training_s"] > 0
    assert all(t["metric_rows"] == t["num_steps"] and t["metric_rows_live"] >= 1 for t in run["trials"])
    sweep = data["4"]["data"]
    assert sweep["best"] in (4, 8) and "DEVICE_BATCH_SIZE" in sweep["recommendation"]
    assert all(r["tokens_per_s"] > 0 for r in sweep["rows"])
    assert data["6"]["data"]["live"] is True
    log = (out / "gpu_check.log").read_text()
    for name in ("1 doctor", "2 matmul", "3a prepare", "3c trainer eager", "3d headless run", "4 batch 4", "4 batch 8"):
        assert f"===== {name}" in log
    assert sorted(p.name for p in out.iterdir()) == ["gpu_check.json", "gpu_check.log", "gpu_check.md"]


def test_a_deadline_skips_what_does_not_fit_and_still_writes_the_table(tmp_path: Path) -> None:
    proc, out = run_check(tmp_path, "--tiny", "--deadline", "1", timeout=180)
    assert proc.returncode == 0, proc.stderr[-2000:]
    rows = step_rows((out / "gpu_check.md").read_text())
    assert set(rows) == set(STEPS)
    for step in ("1", "2", "3a"):
        assert rows[step][1] == "skipped" and "deadline" in rows[step][2], rows[step]
    for step in ("3c", "3d", "4"):  # nothing to train on without step 3a's data
        assert rows[step][1] == "skipped", rows[step]
    assert rows["5"][1] == "skipped", rows["5"]  # the sandbox self-check, by the deadline too


def test_a_sigterm_stops_the_step_and_keeps_the_table(tmp_path: Path) -> None:
    out = tmp_path / "out"
    proc = subprocess.Popen([sys.executable, str(SCRIPT), "--tiny", "--out", str(out), "--work", str(tmp_path / "w"),
                             "--steps", "1,3a"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=ROOT)
    started = tmp_path / "w" / "logs" / "1-doctor.out"  # made just before doctor's process starts
    give_up = time.time() + 120
    while not started.exists() and time.time() < give_up and proc.poll() is None:
        time.sleep(0.2)
    time.sleep(1.0)
    proc.send_signal(signal.SIGTERM)
    stdout, stderr = proc.communicate(timeout=60)
    assert proc.returncode == 130, stdout[-2000:] + stderr[-2000:]
    markdown = (out / "gpu_check.md").read_text()
    assert "# GPU check (--tiny, interrupted)" in markdown
    if shutil.which("pgrep"):
        left = subprocess.run(["pgrep", "-f", str(tmp_path / "w")], capture_output=True, text=True)
        assert left.stdout.strip() == "", "the interrupted step's processes were left running"


def test_memory_prediction_and_trainer_figures() -> None:
    gc = load_gpu_check()
    measured = [{"size": 16, "peak_vram_mb": 20_000.0}, {"size": 32, "peak_vram_mb": 36_000.0}]
    assert gc._predicted_oom(64, measured, 140_000.0) is None  # 68 GB: fits
    assert "would not fit" in gc._predicted_oom(256, measured, 140_000.0)
    assert gc._predicted_oom(64, measured, None) is None  # no NVML: run it and see
    assert gc._predicted_oom(8, measured, 1_000.0) is None  # smaller than one that ran
    run = {"val_bpb": "1.5", "training_seconds": "45.0", "total_seconds": "80.0", "compile_seconds": "25.0",
           "handover_seconds": "4.0", "mfu_percent": "40.00", "tokens_per_s": "1000", "num_steps": "50",
           "peak_vram_mb": "unknown", "wall_seconds": 81.0,
           "metrics": [{"tokens_per_s": t} for t in (1, 2, 3, 10, 20, 30)],
           "stderr": "model: depth 8, ...; batch 524288 tokens = 16 x 16 x 2048; budget 45 s"}
    f = gc.trainer_figures(run, ceiling=800.0, datasheet=989.0)
    assert f["startup_seconds"] == 6.0 and f["median_step_tokens_per_s"] == 20
    assert f["mfu_of_measured_percent"] == pytest.approx(40 * 989 / 800, abs=0.01)
    assert f["device_batch_size"] == 16 and f["grad_accum"] == 16 and f["peak_vram_mb"] is None
