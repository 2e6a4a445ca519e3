"""How long the morning-after commands take on runs of realistic and large size.

    python benchmarks/morning.py                    # 100 and 1000 trials
    python benchmarks/morning.py --trials 100       # one size

A run of N trials is written through the Ledger API (a ~20-line diff, a journal entry and a log tail per
trial, a reflection every 10, a plan queue, a noise measurement), and the same night as an upstream
results.tsv of N rows. Timed, each in the same process and on the same files:

- baseline: `run_status` (what `autoresearch status --json` does: read every trial from the ledger);
- graveyard: RunView + the markdown (`autoresearch export graveyard`);
- report: the five charts as SVG and PNG plus the page and the graveyard beside it (`autoresearch report`);
- import: parse the results.tsv, decide parents, gains and flags, write the ledger (`autoresearch import`).

Each figure is the best of --repeats runs (the machine is shared; the minimum is the least disturbed).
"""

from __future__ import annotations

import argparse
import random
import shutil
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from supervisor.core.config import RunConfig
from supervisor.morning.graveyard import RunView, graveyard_markdown
from supervisor.morning.importer import import_results
from supervisor.morning.report import write_report
from supervisor.run.status import run_status
from supervisor.store.ledger import Ledger

CONSTANTS = ["MATRIX_LR", "EMBEDDING_LR", "WARMDOWN_FRACTION", "DEPTH", "MODEL_DIM", "WEIGHT_DECAY",
             "MUON_MOMENTUM", "SHORT_WINDOW", "TOTAL_BATCH_TOKENS", "LOGIT_SOFTCAP"]


def make_diff(rng: random.Random, name: str) -> str:
    context = [f" LINE_{i} = {i}" for i in range(8)]
    return "\n".join(["diff --git a/trainer/train.py b/trainer/train.py", "--- a/trainer/train.py",
                      "+++ b/trainer/train.py", "@@ -40,17 +40,17 @@", *context, f"-{name} = {rng.random():.3f}",
                      f"+{name} = {rng.random():.3f}", *context])


def build_ledger(path: Path, n: int, seed: int = 0) -> tuple[Ledger, str]:
    """A run of n trials through the Ledger API; also returns the same night as an upstream results.tsv."""
    rng = random.Random(seed)
    ledger = Ledger(path / "ledger.sqlite", create=True)
    ledger.init_run("bench", RunConfig(tag="bench", journals_root=path.parent).to_json())
    ledger.add_noise(commit_sha="0" * 40, budget_s=300.0, platform="bench", values=[1.0, 1.002, 0.999],
                     sd=0.0015, factor=2.0)
    for p in range(12):
        pid = ledger.add_plan(f"idea number {p}: try {CONSTANTS[p % len(CONSTANTS)]}", "because")
        if p % 3 == 0:
            ledger.drop_plan(pid, "dropped for a benchmark with a stated reason")
    best, best_id = 1.10, None
    tsv = ["commit\tval_bpb\tmemory_gb\tstatus\tdescription"]
    rows = []
    for i in range(1, n + 1):
        name = CONSTANTS[rng.randrange(len(CONSTANTS))]
        crash = rng.random() < 0.05
        val = None if crash else best + rng.gauss(0.002, 0.004)
        status = "crash" if crash else ("keep" if best_id is None or val < best else "discard")
        delta = None if (crash or best_id is None) else val - best
        rows.append(dict(commit_sha=f"{i:07x}", parent_trial=best_id, description=f"{name} tweak {i}",
                         status=status, val_bpb=val, parent_val_bpb=None if best_id is None else best,
                         delta=delta, flagged=bool(status == "keep" and delta is not None and -delta < 0.003),
                         decision="benchmark", diff=make_diff(rng, name),
                         log_tail="\n".join(f"step {s} loss {2 - s / 100:.3f}" for s in range(30)),
                         budget_s=300.0, num_steps=900 + rng.randrange(100), tokens_per_s=5e5 + rng.random() * 1e4,
                         mfu_percent=40 + rng.random() * 5, peak_vram_mb=40000 + rng.random() * 4000,
                         num_params_m=50 + rng.random() * 10, started=1e9 + 330 * i, finished=1e9 + 330 * i + 320,
                         kind="trial"))
        tsv.append(f"{i:07x}\t{0.0 if crash else val:.6f}\t{40 + rng.random() * 4:.1f}\t{status}\t{name} tweak {i}")
        if status == "keep":
            best, best_id = val, i
    ledger.insert_imported_trials(rows)
    for i in range(1, n + 1):
        ledger.add_journal(i, hypothesis="h " * 10, change="c " * 10, result="r", interpretation="i " * 30,
                           next_step="n " * 10)
        if i % 10 == 0:
            ledger.add_trigger("checkpoint", f"{i} trials")
            ledger.add_reflection(after_trial=i, load_bearing="lb " * 20, dead_ends="de " * 20, retest="rt " * 10,
                                  plan="pl " * 10)
    return ledger, "\n".join(tsv) + "\n"


def best_of(repeats: int, fn: Callable[[], object]) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--trials", type=int, nargs="+", default=[100, 1000])
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args(argv)
    tmp = Path(tempfile.mkdtemp(prefix="morning-bench-"))
    results = []
    try:
        for n in args.trials:
            ledger, tsv = build_ledger(tmp / f"run{n}", n)
            tsv_path = tmp / f"results{n}.tsv"
            tsv_path.write_text(tsv)
            status = best_of(args.repeats, lambda ledger=ledger: run_status(ledger))
            grave = best_of(args.repeats, lambda ledger=ledger: graveyard_markdown(RunView.from_ledger(ledger)))
            report = best_of(args.repeats, lambda ledger=ledger, n=n: write_report(ledger, tmp / f"report{n}"))
            svg_only = best_of(args.repeats,
                               lambda ledger=ledger, n=n: write_report(ledger, tmp / f"svg{n}", png=False))
            counter = iter(range(10_000))
            imported = best_of(args.repeats, lambda p=tsv_path, counter=counter, n=n: import_results(
                p, f"imp{n}-{next(counter)}", journals_root=tmp / "imports", noise_sd=0.0015))
            md_kb = (tmp / f"report{n}" / "graveyard.md").stat().st_size / 1024
            results.append((n, status, grave, report, svg_only, imported, md_kb))
            ledger.close()
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    print(f"best of {args.repeats}; seconds")
    print("| trials | status --json (baseline) | export graveyard | report (SVG+PNG) | report (SVG only) | "
          "import results.tsv | graveyard.md size |")
    print("|---:|---:|---:|---:|---:|---:|---:|")
    for n, status, grave, report, svg_only, imported, md_kb in results:
        print(f"| {n} | {status:.3f} | {grave:.3f} | {report:.3f} | {svg_only:.3f} | {imported:.3f} | "
              f"{md_kb:,.0f} KB |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
