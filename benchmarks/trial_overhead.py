"""Per-trial overhead of the supervisor: the wall time of a trial cycle outside training, by part, before
and after the cuts.

    python benchmarks/trial_overhead.py [--budget 10] [--trials 4] [--latency 3] [--compile] [--cache DIR] [--json]

Baseline, measured in the same run: `python trainer/train.py` started directly with the same budget and
environment (no supervisor), so the table separates what the trainer itself costs outside its budget
(interpreter and torch import, data load, compile, evaluation, interpreter teardown) from what the
supervisor adds (commit, hash checks, ledger writes, decision, git reset, journal files).

Three supervised variants, each a real run of --trials trials with the offline agent slowed to --latency
seconds per turn (a stand-in for the model's thinking time, which is what a warm start overlaps):
  before      every trial starts a fresh interpreter, and the trainer lets Python tear torch down at exit
              (a copy of trainer/ without the final os._exit)
  fast exit   the trainer as shipped (os._exit once its summary is written), trials still start cold
  after       as shipped: fast exit and warm start (the next trial's interpreter and imports start as
              soon as a trial ends, while the agent writes; supervisor/trial/warm_start.py)

With --compile every variant's trainer has COMPILE = True (as on a GPU), its first cycle (which fills the
run's empty compile cache) is left out of the means, and a fourth variant, the warm start without the compile-stack preload, measures
that preload alone.

A cycle is the period from one run_trial call to the next. Its overhead is the cycle minus the agent's
turns (model latency, excluded by the issue's definition) minus training; experiments per hour at a 300 s
budget are 3600 / (300 + overhead). Parts of the cycle:
  before    run_trial call -> trial process started (harness hash, commit, ledger row)
  process   the trainer subprocess, hand-over to exit (startup + training + evaluation + teardown)
  after     process exit -> decision recorded (summary parse, policy, ledger, git reset, results.tsv)
  journal   decision -> journal entry recorded, minus the agent's turn (validation, ledger, journal.md)
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from supervisor.agents.offline import OfflineAgent  # noqa: E402
from supervisor.core import events as ev  # noqa: E402
from supervisor.core.config import RunConfig, default_cache_dir  # noqa: E402
from supervisor.run import executor as executor_module  # noqa: E402
from supervisor.run.loop import Supervisor  # noqa: E402
from supervisor.store.ledger import Ledger  # noqa: E402
from supervisor.trial.runner import parse_summary, scrub_environment, summary_float  # noqa: E402


def ensure_cache(cache: Path) -> None:
    if not (cache / "manifest.json").is_file():
        from trainer import prepare

        if prepare.main(["--source", "embedded", "--profile", "small", "--cache", str(cache)]):
            raise SystemExit("prepare failed")


def direct_trial(cache: Path, budget: float, workdir: Path, source_dir: Path = ROOT) -> dict[str, float]:
    """The trainer with no supervisor: the baseline every supervised figure is compared to."""
    env = scrub_environment(os.environ)
    env.update({"AUTORESEARCH_CACHE": str(cache), "AUTORESEARCH_TIME_BUDGET": str(budget),
                "AUTORESEARCH_DEVICE": "cpu", "AUTORESEARCH_METRICS": str(workdir / "metrics.jsonl"),
                "PYTHONUNBUFFERED": "1"})
    start = time.perf_counter()
    out = subprocess.run([sys.executable, str(source_dir / "trainer/train.py")], env=env, capture_output=True,
                         text=True, check=True)
    wall = time.perf_counter() - start
    summary = parse_summary(out.stdout)
    return {"wall": wall, "training": summary_float(summary, "training_seconds") or 0.0,
            "compile": summary_float(summary, "compile_seconds") or 0.0}


def trainer_copy(dest: Path, *, fast_exit: bool, compile_on: bool) -> Path:
    """A copy of trainer/ and program.md: without the final os._exit (the old ending, letting Python tear
    torch down) and/or with COMPILE = True."""
    shutil.copytree(ROOT / "trainer", dest / "trainer", ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(ROOT / "program.md", dest / "program.md")
    train = dest / "trainer" / "train.py"
    source = train.read_text()
    if not fast_exit:
        if "    os._exit(0)\n" not in source:
            raise SystemExit("trainer/train.py no longer ends with os._exit(0): update this benchmark")
        source = source.replace("    os._exit(0)\n", "")
    if compile_on:
        source, count = re.subn(r"^COMPILE = .*$", "COMPILE = True  # set by the benchmark", source, flags=re.M)
        if count != 1:
            raise SystemExit("trainer/train.py has no single COMPILE line: update this benchmark")
    train.write_text(source)
    return dest


class ThinkingAgent(OfflineAgent):
    """The offline agent, taking `latency` seconds per turn as a model would; records when it was busy."""

    def __init__(self, latency: float) -> None:
        super().__init__()
        self.latency = latency
        self.busy: list[tuple[float, float]] = []

    def turn(self, ctx):
        start = time.time()
        time.sleep(self.latency)
        result = super().turn(ctx)
        self.busy.append((start, time.time()))
        return result


class Timeline:
    def __init__(self) -> None:
        self.events: list[ev.Event] = []

    def __call__(self, event: ev.Event) -> None:
        if event.kind != ev.METRIC:
            self.events.append(event)


def _busy_between(busy: list[tuple[float, float]], start: float, end: float) -> float:
    return sum(max(0.0, min(b, end) - max(a, start)) for a, b in busy)


def supervised_cycles(cache: Path, budget: float, trials: int, root: Path, *, latency: float, warm_start: bool,
                      source_dir: Path = ROOT) -> list[dict[str, float]]:
    config = RunConfig(tag="bench", journals_root=root, cache_dir=cache, budget_s=budget, max_trials=trials,
                       reflect_every=1000, plateau_trials=1000, device="cpu", warm_start=warm_start,
                       source_dir=source_dir)
    agent = ThinkingAgent(latency)
    sup = Supervisor(config, agent)
    timeline = Timeline()
    sup.bus.subscribe(timeline)
    sup.run()
    ledger = Ledger(config.run_dir / "ledger.sqlite")
    trials_by_id = {t.id: t for t in ledger.finished_trials()}
    ledger.close()
    calls = [e.time for e in timeline.events if e.kind == ev.TOOL_CALL and e.data["tool"] == "run_trial"]
    rows: list[dict[str, float]] = []
    current: dict[str, float] = {}
    for e in timeline.events:
        if e.kind == ev.TRIAL_STARTED:
            current = {"id": e.data["trial_id"], "call": max(c for c in calls if c <= e.time), "started": e.time}
        elif e.kind == ev.TRIAL_FINISHED and current:
            current["finished"] = e.time
        elif e.kind == ev.JOURNAL and current and e.data["trial_id"] == current["id"]:
            t = trials_by_id[int(current["id"])]
            later = [c for c in calls if c > e.time]
            process = t.wall_seconds or 0.0
            row = {
                "before": current["started"] - current["call"],
                "process": process,
                "after": current["finished"] - current["started"] - process,
                "journal": e.time - current["finished"] - _busy_between(agent.busy, current["finished"], e.time),
                "training": t.training_seconds or 0.0,
                "compile": summary_float(t.summary, "compile_seconds") or 0.0,
            }
            if later:  # a whole cycle: this call to the next, the agent's thinking excluded
                period = later[0] - current["call"]
                row["agent"] = _busy_between(agent.busy, current["call"], later[0])
                row["overhead"] = period - row["agent"] - row["training"]
                rows.append(row)
            current = {}
    return rows


VARIANTS = ("before", "fast exit", "after")
# With --compile: the warm start as it was before it preloaded the compile stack, to measure that alone.
COMPILE_VARIANTS = ("before", "fast exit", "warm, no compile preload", "after")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--budget", type=float, default=10.0, help="training seconds per trial (default 10)")
    p.add_argument("--trials", type=int, default=4, help="trials per variant and direct runs (default 4)")
    p.add_argument("--latency", type=float, default=3.0, help="seconds the agent takes per turn (default 3)")
    p.add_argument("--compile", action="store_true",
                   help="trials with COMPILE = True (its cache warm after the first), adding a variant without the "
                        "compile-stack preload")
    p.add_argument("--cache", type=Path, default=None)
    p.add_argument("--json", action="store_true")
    args = p.parse_args(argv)
    names = COMPILE_VARIANTS if args.compile else VARIANTS
    cache = args.cache or default_cache_dir()
    ensure_cache(cache)
    variants: dict[str, list[dict[str, float]]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        old = trainer_copy(Path(tmp) / "old-trainer", fast_exit=False, compile_on=args.compile)
        new = trainer_copy(Path(tmp) / "new-trainer", fast_exit=True, compile_on=args.compile)
        direct = [direct_trial(cache, args.budget, Path(tmp), new) for _ in range(args.trials)]
        settings = {"before": (False, old), "fast exit": (False, new), "warm, no compile preload": (True, new),
                    "after": (True, new)}
        for index, name in enumerate(names):
            warm, source = settings[name]
            preload = executor_module.COMPILE_MODULES
            if name == "warm, no compile preload":
                executor_module.COMPILE_MODULES = ()
            try:
                # With compile, one more trial: the first cycle fills the run's empty compile cache (34 s cold
                # against 7.5 s warm here, docs/benchmarks.md) and is left out of the means.
                cycles = supervised_cycles(cache, args.budget, args.trials + 1 + args.compile, Path(tmp) / f"v{index}",
                                           latency=args.latency, warm_start=warm, source_dir=source)
                variants[name] = cycles[1:] if args.compile else cycles
            finally:
                executor_module.COMPILE_MODULES = preload

    def mean(rows: list[dict[str, float]], key: str) -> float:
        return statistics.fmean(r[key] for r in rows)

    direct_overhead = mean(direct, "wall") - mean(direct, "training")
    results: dict = {
        "budget_s": args.budget, "trials": args.trials, "latency_s": args.latency, "cpu_count": os.cpu_count(),
        "direct": {"wall": mean(direct, "wall"), "training": mean(direct, "training"),
                   "compile": mean(direct, "compile"), "overhead": direct_overhead},
        "variants": {},
    }
    for name, rows in variants.items():
        parts = {k: mean(rows, k) for k in ("before", "process", "after", "journal", "training", "agent", "overhead")}
        parts["supervisor"] = parts["before"] + parts["after"] + parts["journal"]
        parts["experiments_per_hour_at_300s"] = 3600.0 / (300.0 + parts["overhead"])
        parts["experiments_per_hour_at_300s_with_latency"] = 3600.0 / (300.0 + parts["overhead"] + parts["agent"])
        results["variants"][name] = parts
    if args.json:
        print(json.dumps(results, indent=2))
        return 0

    print(f"per-trial overhead, budget {args.budget:g} s, {args.trials} cycles per variant, agent "
          f"{args.latency:g} s per turn, compile {'on' if args.compile else 'off'}, {os.cpu_count()} CPUs")
    print(f"direct trainer (baseline): wall {mean(direct, 'wall'):.3f} s, training {mean(direct, 'training'):.3f} s, "
          f"overhead {direct_overhead:.3f} s")
    width = max(12, *(len(name) + 2 for name in names))
    header = f"{'part (seconds)':<46}" + "".join(f"{name:>{width}}" for name in names)
    print(header)
    labels = [
        ("before: hash, commit, ledger row", "before"),
        ("process: start, training, eval, exit", "process"),
        ("after: parse, decide, ledger, git, tsv", "after"),
        ("journal bookkeeping (agent excluded)", "journal"),
        ("supervisor's own share (the three above)", "supervisor"),
        ("training", "training"),
        ("agent's turns (model latency)", "agent"),
        ("overhead: cycle - agent - training", "overhead"),
        ("experiments/hour at 300 s, latency excluded", "experiments_per_hour_at_300s"),
        ("experiments/hour at 300 s, with this latency", "experiments_per_hour_at_300s_with_latency"),
    ]
    for label, key in labels:
        print(f"{label:<46}" + "".join(f"{results['variants'][name][key]:>{width}.3f}" for name in names))
    before, after = results["variants"]["before"]["overhead"], results["variants"]["after"]["overhead"]
    print(f"{'overhead after / before':<46}{after / before:>{width}.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
