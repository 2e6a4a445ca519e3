"""Per-trial overhead of the supervisor: wall time of a whole trial cycle minus training time, by part.

    python benchmarks/trial_overhead.py [--budget 10] [--trials 4] [--cache DIR] [--json]

Baseline, measured in the same run: `python trainer/train.py` started directly with the same budget and
environment (no supervisor), so the table separates what the trainer itself costs outside its budget
(interpreter and torch import, data load, compile, evaluation) from what the supervisor adds (commit, hash
checks, ledger writes, decision, git reset, journal files, the journal turn).

Parts of one supervised cycle, from the agent's run_trial call to its journal entry being recorded:
  before    run_trial call -> trial process started (harness hash, commit, ledger row)
  process   the trainer subprocess, start to exit (startup + training + evaluation)
  after     process exit -> decision recorded (summary parse, policy, ledger, git reset, results.tsv)
  journal   decision -> journal entry recorded (next agent turn, validation, ledger, journal.md)
The offline agent answers instantly, so model latency is excluded by construction.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from supervisor import events as ev  # noqa: E402
from supervisor.agents.offline import OfflineAgent  # noqa: E402
from supervisor.config import RunConfig, default_cache_dir  # noqa: E402
from supervisor.ledger import Ledger  # noqa: E402
from supervisor.loop import Supervisor  # noqa: E402
from supervisor.runner import parse_summary, scrub_environment, summary_float  # noqa: E402


def ensure_cache(cache: Path) -> None:
    if not (cache / "manifest.json").is_file():
        from trainer import prepare

        if prepare.main(["--source", "embedded", "--profile", "small", "--cache", str(cache)]):
            raise SystemExit("prepare failed")


def direct_trial(cache: Path, budget: float, workdir: Path) -> dict[str, float]:
    """The trainer with no supervisor: the baseline every supervised figure is compared to."""
    env = scrub_environment(os.environ)
    env.update({"AUTORESEARCH_CACHE": str(cache), "AUTORESEARCH_TIME_BUDGET": str(budget),
                "AUTORESEARCH_DEVICE": "cpu", "AUTORESEARCH_METRICS": str(workdir / "metrics.jsonl"),
                "PYTHONUNBUFFERED": "1"})
    start = time.perf_counter()
    out = subprocess.run([sys.executable, str(ROOT / "trainer/train.py")], env=env, capture_output=True,
                         text=True, check=True)
    wall = time.perf_counter() - start
    summary = parse_summary(out.stdout)
    return {"wall": wall, "training": summary_float(summary, "training_seconds") or 0.0,
            "compile": summary_float(summary, "compile_seconds") or 0.0}


class Timeline:
    def __init__(self) -> None:
        self.events: list[ev.Event] = []

    def __call__(self, event: ev.Event) -> None:
        if event.kind != ev.METRIC:
            self.events.append(event)


def supervised_cycles(cache: Path, budget: float, trials: int, root: Path) -> list[dict[str, float]]:
    config = RunConfig(tag="bench", journals_root=root, cache_dir=cache, budget_s=budget, max_trials=trials,
                       reflect_every=1000, plateau_trials=1000, device="cpu")
    sup = Supervisor(config, OfflineAgent())
    timeline = Timeline()
    sup.bus.subscribe(timeline)
    sup.run()
    ledger = Ledger(config.run_dir / "ledger.sqlite")
    trials_by_id = {t.id: t for t in ledger.finished_trials()}
    cycles = []
    call_time = None
    current = None
    for e in timeline.events:
        if e.kind == ev.TOOL_CALL and e.data["tool"] == "run_trial":
            call_time = e.time
        elif e.kind == ev.TRIAL_STARTED:
            current = {"id": e.data["trial_id"], "call": call_time, "started": e.time}
        elif e.kind == ev.TRIAL_FINISHED and current:
            current["finished"] = e.time
        elif e.kind == ev.JOURNAL and current and e.data["trial_id"] == current["id"]:
            t = trials_by_id[current["id"]]
            process = t.wall_seconds or 0.0
            cycle = e.time - current["call"]
            cycles.append({
                "cycle": cycle,
                "before": current["started"] - current["call"],
                "process": process,
                "after": current["finished"] - current["started"] - process,
                "journal": e.time - current["finished"],
                "training": t.training_seconds or 0.0,
                "compile": summary_float(t.summary, "compile_seconds") or 0.0,
            })
            current = None
    ledger.close()
    return cycles


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--budget", type=float, default=10.0, help="training seconds per trial (default 10)")
    p.add_argument("--trials", type=int, default=4, help="supervised trials and direct runs (default 4)")
    p.add_argument("--cache", type=Path, default=None)
    p.add_argument("--json", action="store_true")
    args = p.parse_args(argv)
    cache = args.cache or default_cache_dir()
    ensure_cache(cache)
    with tempfile.TemporaryDirectory() as tmp:
        direct = [direct_trial(cache, args.budget, Path(tmp)) for _ in range(args.trials)]
        cycles = supervised_cycles(cache, args.budget, args.trials, Path(tmp) / "journals")

    def mean(rows: list[dict[str, float]], key: str) -> float:
        return statistics.fmean(r[key] for r in rows)

    direct_overhead = mean(direct, "wall") - mean(direct, "training")
    cycle_overhead = mean(cycles, "cycle") - mean(cycles, "training")
    supervisor_only = mean(cycles, "before") + mean(cycles, "after") + mean(cycles, "journal") + (
        mean(cycles, "process") - mean(direct, "wall"))
    per_hour = 3600.0 / (300.0 + cycle_overhead)
    results = {
        "budget_s": args.budget, "trials": args.trials, "cpu_count": os.cpu_count(),
        "direct": {"wall": mean(direct, "wall"), "training": mean(direct, "training"),
                   "compile": mean(direct, "compile"), "overhead": direct_overhead},
        "supervised": {k: mean(cycles, k) for k in ("cycle", "before", "process", "after", "journal", "training",
                                                    "compile")},
        "cycle_overhead_s": cycle_overhead,
        "supervisor_added_s": supervisor_only,
        "ratio_cycle_to_direct_wall": mean(cycles, "cycle") / mean(direct, "wall"),
        "experiments_per_hour_at_300s": per_hour,
    }
    if args.json:
        print(json.dumps(results, indent=2))
        return 0
    s = results["supervised"]
    print(f"per-trial overhead, budget {args.budget:g}s, {args.trials} trials, {os.cpu_count()} CPUs")
    print(f"{'part':<44}{'seconds':>10}")
    rows = [
        ("direct: trainer wall (baseline)", results["direct"]["wall"]),
        ("direct: of which training", results["direct"]["training"]),
        ("direct: overhead (startup, data, eval)", direct_overhead),
        ("supervised: whole cycle", s["cycle"]),
        ("  before (hash, commit, ledger)", s["before"]),
        ("  process (startup + training + eval)", s["process"]),
        ("  after (parse, decide, ledger, git, tsv)", s["after"]),
        ("  journal (agent turn, ledger, journal.md)", s["journal"]),
        ("supervised: training", s["training"]),
        ("supervised: cycle minus training", cycle_overhead),
        ("supervisor's own addition vs direct", supervisor_only),
    ]
    for name, value in rows:
        print(f"{name:<44}{value:>10.3f}")
    print(f"{'ratio cycle / direct wall':<44}{results['ratio_cycle_to_direct_wall']:>10.3f}")
    print(f"{'experiments per hour at 300 s budget':<44}{per_hour:>10.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
