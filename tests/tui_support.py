"""Ledgers for the terminal UI's tests and benchmark.

- `offline_run`: a real run: the loop with the offline agent on the stand-in trainer (real git, real
  subprocesses, real SQLite), a few seconds.
- `synthetic_ledger`: a run of any length written through the Ledger API (trials with diffs, metric curves,
  journal entries, reflections, turns, steering, a noise floor), deterministic for a seed; for snapshots and
  for the 1,000-trial benchmark.
- `noise_phase`: a run measuring its noise floor, as the loop leaves the ledger and noise/progress.json
  between two polls: some seeds finished, one running with half a curve.
- `pin_times`: rewrites every timestamp of a ledger to a fixed schedule, so screenshots do not depend on
  when the test ran.
"""

from __future__ import annotations

import json
import math
import random
import sqlite3
from pathlib import Path
from typing import Any

from supervisor.agents.offline import OfflineAgent
from supervisor.core.config import RunConfig
from supervisor.run.loop import Supervisor
from supervisor.store.ledger import Ledger
from tests.loop_support import fake_config

FIXED_START = 1_790_000_000.0  # 2026-09-21, a fixed "night" for screenshots

# A telemetry reading with fixed numbers, for screenshots only (pilot tests use the real sampler).
GPU_SAMPLE: dict[str, Any] = {
    "kind": "gpu", "gpu_name": "NVIDIA H100 80GB HBM3", "gpu_util_percent": 97.0, "vram_used_mb": 41250.0,
    "vram_total_mb": 81559.0, "temperature_c": 64.0, "power_w": 612.0, "cpu_percent": 12.5,
    "load_avg_1m": 1.1, "ram_used_mb": 20480.0, "ram_total_mb": 257000.0, "time": FIXED_START,
}
CPU_SAMPLE: dict[str, Any] = {"kind": "cpu", "cpu_percent": 93.0, "cpu_source": "proc", "load_avg_1m": 1.9,
                              "ram_used_mb": 6144.0, "ram_total_mb": 24576.0, "time": FIXED_START}


def offline_run(tmp_path: Path, tag: str = "night", trials: int = 3, **overrides: Any) -> RunConfig:
    """A finished run of the real loop (offline agent, stand-in trainer)."""
    config = fake_config(tmp_path, tag=tag, max_trials=trials, **overrides)
    Supervisor(config, OfflineAgent()).run()
    return config


DESCRIPTIONS = [
    "raise the matrix learning rate from 0.02 to 0.04",
    "shorter attention window on alternate layers (256 tokens)",
    "increase depth from 8 to 10 layers at the same width",
    "warmdown over the last 40% of the budget instead of 20%",
    "QK-norm scale initialised at 1.2",
    "untie the embedding and the head",
    "batch size 2^19 tokens instead of 2^18",
    "ReLU squared instead of GELU in the MLP",
    "weight decay 0.1 on the matrices",
    "rotary base 50k instead of 10k",
]


def _diff(index: int, rng: random.Random) -> str:
    old = round(0.02 + 0.001 * (index % 7), 3)
    new = round(old * rng.choice([0.5, 0.8, 1.25, 2.0]), 4)
    return (
        "diff --git a/trainer/train.py b/trainer/train.py\n"
        "--- a/trainer/train.py\n+++ b/trainer/train.py\n"
        f"@@ -{40 + index % 30},7 +{40 + index % 30},7 @@ class Config:\n"
        "     depth: int = 8\n     model_dim: int = 512\n"
        f"-    matrix_lr: float = {old}\n+    matrix_lr: float = {new}\n"
        "     embed_lr: float = 0.6\n     warmdown_frac: float = 0.2\n     window: int = 1024\n"
    )


def synthetic_ledger(run_dir: Path, *, trials: int = 40, metric_points: int = 120, seed: int = 7,
                     running: bool = False, tag: str | None = None, budget_s: float = 300.0) -> Path:
    """Write a plausible night into run_dir/ledger.sqlite through the Ledger API; returns the ledger path.

    Every finished trial has a full metric curve of `metric_points` rows, a diff, a log tail, a journal entry
    and two turns (the agent's words and the run_trial call); a reflection every 10 trials; a noise floor
    after trial 5 (so keeps with a small gain are flagged); two steering messages. `running` leaves one more
    trial running with half a curve.
    """
    rng = random.Random(seed)
    run_dir.mkdir(parents=True, exist_ok=True)
    path = run_dir / "ledger.sqlite"
    ledger = Ledger(path, create=True)
    tag = tag or run_dir.name
    config = RunConfig(tag=tag, journals_root=run_dir.parent, budget_s=budget_s, max_trials=max(trials + 1, 100),
                       policy="flag")
    ledger.init_run(tag, config.to_json())
    platform = {"gpu": "NVIDIA H100 80GB HBM3", "torch": "2.13.0", "accelerator": "cuda"}
    best_val, best_id = 1.10, None
    floor = None
    batch_turns: list[tuple[str, str, str | None, Any, bool]] = []
    for index in range(trials):
        description = DESCRIPTIONS[index % len(DESCRIPTIONS)] + (f" (variant {index // 10})" if index >= 10 else "")
        diff = _diff(index, rng)
        trial_id = ledger.start_trial(commit_sha=f"{rng.getrandbits(160):040x}", parent_commit=f"{index:040x}",
                                      parent_trial=best_id, description=description, category=None, plan_id=None,
                                      diff=diff, budget_s=budget_s, platform=platform, seed=42)
        _curve(ledger, trial_id, metric_points, rng, budget_s)
        roll = rng.random()
        steps = 900 + rng.randint(-60, 60)
        common = dict(training_seconds=budget_s, wall_seconds=budget_s + 24, num_steps=steps,
                      tokens_per_s=520_000 + rng.randint(-20_000, 20_000), mfu_percent=38 + rng.random() * 6,
                      peak_vram_mb=40_000 + rng.randint(-3000, 3000), num_params_m=124.4,
                      log_tail=f"step {steps}: loss 3.2{index % 10}\n---\nval_bpb: ...\n",
                      summary={"val_bpb": "see the row"})
        if roll < 0.08:
            status, value, delta, flagged = "crash", None, None, False
            ledger.finish_trial(trial_id, status="crash", crash_reason="CUDA out of memory (simulated)",
                                decision="crashed: CUDA out of memory", **common)
        else:
            gain = rng.gauss(0.001, 0.004)
            value = round(best_val - gain, 6)
            delta = value - best_val
            keep = delta < 0
            flagged = keep and floor is not None and -delta < floor
            status = "keep" if keep else "discard"
            decision = ("kept: better than its parent" + (" but under the noise floor (flagged)" if flagged else "")
                        if keep else "discarded: no gain over its parent")
            ledger.finish_trial(trial_id, status=status, val_bpb=value, parent_val_bpb=best_val, delta=delta,
                                flagged=flagged, decision=decision, **common)
            if keep:
                best_val, best_id = value, trial_id
        batch_turns.append(("agent", f"Trial {trial_id}: I will try to {description}.", None, None, False))
        batch_turns.append(("tool", f"trial {trial_id} finished: {status.upper()}", "run_trial",
                            {"description": description}, False))
        for role, text, tool, data, refused in batch_turns:
            ledger.add_turn(role, text, tool=tool, input=data, refused=refused,
                            usage={"input_tokens": 1800, "output_tokens": 240} if role == "agent" else None)
        batch_turns.clear()
        if index == 2:
            ledger.add_turn("tool", "refused: write the journal entry for trial 3 first", tool="edit_file",
                            input={"path": "trainer/train.py", "search": "x", "replace": "y"}, refused=True)
        ledger.add_journal(trial_id, hypothesis=f"Hypothesis for trial {trial_id}: {description} should help.",
                           change=f"Changed one constant in train.py: {description}.",
                           result=f"{status}; val_bpb {value if value is not None else 'n/a'}",
                           interpretation=f"Interpretation of trial {trial_id}, compared with the noise floor.",
                           next_step=f"Next after trial {trial_id}: try the neighbouring value.")
        if index == 4:
            ledger.add_noise(commit_sha="f" * 40, budget_s=budget_s, platform="NVIDIA H100, torch 2.13.0",
                             values=[1.0998, 1.1012, 1.1004], sd=0.0007, factor=2.0)
            floor = 0.0014
        if (index + 1) % 10 == 0:
            ledger.add_trigger("checkpoint", f"{index + 1} trials done")
            ledger.add_reflection(after_trial=trial_id, load_bearing=f"The learning rate carries most of the gain "
                                  f"so far (after {index + 1} trials).",
                                  dead_ends="Depth beyond 10 layers loses throughput on this budget.",
                                  retest="Re-test the attention window now that the schedule changed.",
                                  plan="Sweep warmdown, then widen the MLP.")
        if index in (3, 12):
            sid = ledger.add_steering("stop tuning learning rates, try shorter attention windows")
            ledger.mark_steering_delivered([sid], ledger.add_turn("agent", "Understood: attention windows next."))
    ledger.add_plan("try value embeddings", "they helped upstream")
    dropped = ledger.add_plan("sequence length warmup", "")
    ledger.drop_plan(dropped, "the dataloader cannot change the length mid-run")
    if running:
        trial_id = ledger.start_trial(commit_sha=f"{rng.getrandbits(160):040x}", parent_commit="e" * 40,
                                      parent_trial=best_id, description="gradient clipping at 1.0",
                                      category=None, plan_id=None, diff=_diff(trials, rng), budget_s=budget_s,
                                      platform=platform, seed=42)
        _curve(ledger, trial_id, metric_points // 2, rng, budget_s / 2)
        ledger.add_turn("agent", "Trying gradient clipping at 1.0 next.")
        ledger.set_state("trial", f"trial {trial_id}: gradient clipping at 1.0")
    else:
        ledger.set_state("finished")
    ledger.close()
    return path


def noise_phase(run_dir: Path, *, repeats: int = 2, done: int = 1, points: int = 40, budget_s: float = 20.0,
                start: float = FIXED_START) -> Path:
    """A run in its first minutes: the noise floor is being measured, `done` seeds finished, the next one
    half-way through its budget (its metrics.jsonl holds half a curve). Returns the ledger's path."""
    rng = random.Random(3)
    run_dir.mkdir(parents=True, exist_ok=True)
    path = run_dir / "ledger.sqlite"
    ledger = Ledger(path, create=True)
    tag = run_dir.name
    config = RunConfig(tag=tag, journals_root=run_dir.parent, budget_s=budget_s, max_trials=6, noise_repeats=repeats)
    ledger.init_run(tag, config.to_json())
    commit = "737946b0e8bfeee0812be033f967e7f309ebf2e0"
    ledger.set_state("noise", f"measuring the noise floor: {repeats} seeds of {commit[:7]}")
    ledger.close()
    seeds = []
    for index in range(1, min(done + 1, repeats) + 1):
        running = index > done
        folder = f"noise/{int(start) + 60 * index}-{index - 1}"
        (run_dir / folder).mkdir(parents=True, exist_ok=True)
        rows = []
        for i in range(points // 2 if running else points):
            elapsed = budget_s * (i + 1) / points
            rows.append({"step": 12 * (i + 1), "elapsed": elapsed, "loss": 3.2 + 5.0 * math.exp(-elapsed / 4)
                         + rng.gauss(0, 0.03), "lr": 0.02, "tokens_per_s": 9_000.0, "mfu": None, "vram_mb": None})
        (run_dir / folder / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
        seed = {"index": index, "seed": 2000 + index - 1, "status": "running" if running else "ok",
                "started": start + 60 * index, "dir": folder}
        if not running:
            seed.update(val_bpb=round(1.83 + rng.gauss(0, 0.004), 6), num_steps=12 * points)
        seeds.append(seed)
    (run_dir / "noise" / "progress.json").write_text(json.dumps(
        {"commit": commit, "repeats": repeats, "budget_s": budget_s, "seeds": seeds}))
    return path


def _curve(ledger: Ledger, trial_id: int, points: int, rng: random.Random, seconds: float) -> None:
    rows = []
    shift = rng.gauss(0, 0.03)
    for i in range(points):
        elapsed = seconds * (i + 1) / max(points, 1)
        loss = 3.0 + shift + 7.5 * math.exp(-elapsed / (seconds * 0.08)) + rng.gauss(0, 0.02)
        rows.append({"step": int(3 * elapsed), "elapsed": elapsed, "loss": loss, "lr": 0.02,
                     "tokens_per_s": 520_000.0, "mfu": 40.0 + rng.random(), "vram_mb": 39_000.0 + 10 * i})
    ledger.add_metrics(trial_id, 0, rows)


def pin_times(ledger_path: Path, start: float = FIXED_START, step_s: float = 30.0) -> None:
    """Move every timestamp onto a fixed schedule (`step_s` apart, in the order they happened), so screens
    that show times do not depend on when the test ran."""
    columns = (("run", ("created", "updated")), ("trials", ("started", "finished")), ("journal", ("created",)),
               ("reflections", ("created",)), ("turns", ("created",)), ("steering", ("created", "delivered")),
               ("noise", ("created",)), ("plans", ("created", "closed")), ("triggers", ("created",)),
               ("commands", ("created", "consumed")))
    db = sqlite3.connect(ledger_path)
    try:
        stamps: set[float] = set()
        for table, cols in columns:
            for col in cols:
                stamps.update(v for (v,) in db.execute(f"SELECT {col} FROM {table} WHERE {col} IS NOT NULL"))
        schedule = {value: start + step_s * rank for rank, value in enumerate(sorted(stamps))}
        for table, cols in columns:
            for col in cols:
                rows = db.execute(f"SELECT rowid, {col} FROM {table} WHERE {col} IS NOT NULL").fetchall()
                db.executemany(f"UPDATE {table} SET {col}=? WHERE rowid=?", [(schedule[v], r) for r, v in rows])
        db.commit()
    finally:
        db.close()
