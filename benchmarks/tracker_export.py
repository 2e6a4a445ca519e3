"""How long `autoresearch export tracker` takes for a long night, to trackio and to MLflow (local stores).

    python benchmarks/tracker_export.py                       # 300 trials, trackio and mlflow
    python benchmarks/tracker_export.py --trials 1000         # the figure in docs/benchmarks.md
    python benchmarks/tracker_export.py --to trackio wandb    # any of trackio, wandb, mlflow

A run of N trials is written through the Ledger API as a night leaves it: 5% crashes (stopped early, a
shorter curve), a keep now and then, the rest discards; each trial with a ~20-line diff, its platform, a
journal entry, two agent turns with token usage and cost, and one metric row per optimizer step, as the
trainer streams them: --rows per full trial (default 950, about what a 5-minute trial makes on an H100;
upstream reports 953 steps). Then, each into a fresh local store, timed:

- export: every trial sent (tracker run started with its config, loss curve, summary, finished);
- again: the same command once more, which finds every trial already there and sends nothing.

The stores are trackio's SQLite database (TRACKIO_DIR in a temporary folder), MLflow's SQLite store
(sqlite:///...), and W&B's offline files. Run it from the project's venv with the extras installed.
"""

from __future__ import annotations

import argparse
import os
import random
import shutil
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from supervisor.core.config import RunConfig
from supervisor.core.types import TrialStatus
from supervisor.store.ledger import Ledger

CONSTANTS = ["MATRIX_LR", "EMBEDDING_LR", "WARMDOWN_FRACTION", "DEPTH", "MODEL_DIM", "WEIGHT_DECAY"]
PLATFORM = {"gpu": "NVIDIA H100 80GB HBM3", "gpu_count": "1", "accelerator": "cuda", "driver": "560.35.03",
            "cuda": "12.6", "torch": "2.13.0", "python": "3.11.7", "os": "Linux"}


def build_ledger(folder: Path, trials: int, rows: int, seed: int = 0) -> Path:
    """A finished run of `trials` trials in folder/bench/ledger.sqlite; returns the journals folder."""
    rng = random.Random(seed)
    run_dir = folder / "bench"
    run_dir.mkdir(parents=True)
    ledger = Ledger(run_dir / "ledger.sqlite", create=True)
    ledger.init_run("bench", RunConfig(tag="bench", journals_root=folder).to_json())
    ledger.add_noise(commit_sha="0" * 40, budget_s=300.0, platform="bench", values=[1.0, 1.002, 0.999],
                     sd=0.0015, factor=2.0)
    best, best_id, clock = 1.10, None, 1e9
    for i in range(1, trials + 1):
        name = CONSTANTS[rng.randrange(len(CONSTANTS))]
        for _ in range(2):  # the agent's turns before the trial: reading, editing, running
            ledger.add_turn("agent", "thinking about the next change", usage={
                "model": "bench", "input_tokens": 20_000, "output_tokens": 400, "cost_usd": 0.012})
        diff = "\n".join([f" LINE_{k} = {k}" for k in range(8)] + [f"-{name} = {rng.random():.3f}",
                                                                   f"+{name} = {rng.random():.3f}"])
        tid = ledger.start_trial(commit_sha=f"{i:040x}", parent_commit=None, parent_trial=best_id,
                                 description=f"{name} tweak {i}", category=None, plan_id=None, diff=diff,
                                 budget_s=300.0, platform=PLATFORM, seed=42)
        crash = rng.random() < 0.05
        steps = rng.randrange(10, rows // 3) if crash else rows
        ledger.add_metrics(tid, 0, [{"step": s, "elapsed": s * 300.0 / rows, "loss": 4.0 * (s + 50) ** -0.25,
                                     "lr": 0.02, "tokens_per_s": 5.2e5, "mfu": 41.0, "vram_mb": 44_000.0}
                                    for s in range(steps)])
        val = None if crash else best + rng.gauss(0.002, 0.004)
        status = TrialStatus.CRASH if crash else (
            TrialStatus.KEEP if best_id is None or val < best else TrialStatus.DISCARD)
        ledger.finish_trial(tid, status=status, val_bpb=val, parent_val_bpb=None if best_id is None else best,
                            delta=None if crash or best_id is None else val - best,
                            flagged=status == TrialStatus.KEEP and best_id is not None and best - val < 0.003,
                            decision=f"{status}: benchmark", crash_reason="CUDA error" if crash else None,
                            training_seconds=300.0, wall_seconds=325.0, num_steps=steps, tokens_per_s=5.2e5,
                            mfu_percent=41.0, peak_vram_mb=44_000.0, num_params_m=50.3, started=clock,
                            finished=clock + 325)
        clock += 400
        ledger.add_journal(tid, hypothesis="h " * 10, change="c " * 10, result="r", interpretation="i " * 20,
                           next_step="n " * 10)
        if status == TrialStatus.KEEP:
            best, best_id = val, tid
    ledger.close()
    return folder


def export_once(journals: Path, tracker_name: str, store: Path) -> tuple[float, int, int]:
    """(seconds, trials exported, trials skipped) of one `export tracker` into `store`."""
    from supervisor.morning.trackers import open_tracker, tracker_spec
    from supervisor.morning.trackers.export import export_run

    spec = tracker_spec(f"{tracker_name}={store}")
    ledger = Ledger(journals / "bench" / "ledger.sqlite", readonly=True)
    start = time.perf_counter()
    tracker = open_tracker(spec, project="bench", journals_root=journals, run_dir=journals / "bench")
    try:
        result = export_run(ledger, tracker)
    finally:
        tracker.close()
        ledger.close()
    return time.perf_counter() - start, len(result.exported), len(result.skipped)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--trials", type=int, default=300)
    parser.add_argument("--rows", type=int, default=950, help="metric rows of a full trial (default 950)")
    parser.add_argument("--to", nargs="+", default=["trackio", "mlflow"], choices=["trackio", "wandb", "mlflow"])
    args = parser.parse_args(argv)
    tmp = Path(tempfile.mkdtemp(prefix="tracker-bench-"))
    # trackio reads its store folder once, when imported: set before anything imports it.
    os.environ["TRACKIO_DIR"] = str(tmp / "trackio")
    results = []
    try:
        start = time.perf_counter()
        journals = build_ledger(tmp / "journals", args.trials, args.rows)
        built = time.perf_counter() - start
        ledger = Ledger(journals / "bench" / "ledger.sqlite", readonly=True)
        points = sum(ledger.metric_count(t.id) for t in ledger.trials())
        ledger.close()
        print(f"ledger: {args.trials} trials, {points:,} metric rows, built in {built:.1f} s", file=sys.stderr)
        for name in args.to:
            store = tmp / name
            first, exported, _ = export_once(journals, name, store)
            again, _, skipped = export_once(journals, name, store)
            results.append((name, exported, first, again, skipped))
            print(f"{name}: {first:.1f} s, again {again:.1f} s", file=sys.stderr)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    print(f"{args.trials} trials, {points:,} loss points; seconds")
    print("| tracker | trials sent | export | per trial | points/s | export again (all skipped) |")
    print("|---|---:|---:|---:|---:|---:|")
    for name, exported, first, again, skipped in results:
        print(f"| {name} | {exported} | {first:.1f} | {first / max(exported, 1) * 1000:.0f} ms | "
              f"{points / first:,.0f} | {again:.2f} ({skipped} skipped) |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
