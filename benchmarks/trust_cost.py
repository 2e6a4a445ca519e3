"""The cost of trust: what the sandbox and the separate evaluation add to a trial, on the CPU, in one run.

    python benchmarks/trust_cost.py [--budget 3] [--rounds 5] [--cache DIR] [--json]

Two paths, alternated round by round on the same cache, budget, seed and machine, both started cold (no warm
start, so that neither gets the other's imports for free):

  before   today's path before issue 15: the trainer runs unsandboxed and evaluates itself in its own process
           (a copy of train.py whose end calls the harness's evaluate_bpb on the model instead of hand_over),
           timed from the start of the process to its exit with val_bpb printed;
  after    as shipped: run_trial in bubblewrap, the trainer exports the model (hand_over), the supervisor copies
           it out and a fresh evaluator process (started as the trial starts, in its own sandbox) verifies the
           validation data, loads the program and computes val_bpb with the causality checks; timed from the
           run_trial call to its outcome.

The table shows the medians, the cost of trust per trial (after - before), and the parts of the new path:
the hand-over (export and save, inside the trial), the evaluation after the trial exits, and bubblewrap's
own start. Goal: at most 1 s per trial. The training budget is the same in both, so the difference is only
what trust costs outside training.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from supervisor.core.config import Layout, RunConfig, default_cache_dir  # noqa: E402
from supervisor.run.trial_setup import TrialSetup  # noqa: E402
from supervisor.trial.guards import eval_fingerprint  # noqa: E402
from supervisor.trial.runner import TrialSpec, run_trial, scrub_environment, summary_float  # noqa: E402
from supervisor.trial.sandbox import probe  # noqa: E402

# The end of the shipped train.py, and what "before" runs instead: the old in-process evaluation.
HAND_OVER = (
    "    try:\n"
    "        with autocast:\n"
    "            hand_over(model)\n"
    "    except prepare.HandOverError as exc:\n"
    "        fail(str(exc))\n"
)
EVALUATE_IN_PROCESS = (
    "    with autocast:\n"
    "        record = prepare.evaluate_bpb(model, prepare.EVAL_BATCH_SIZE, device=device)\n"
    "    print(f\"val_bpb: {record['val_bpb']:.6f}\", flush=True)\n"
)


def ensure_cache(cache: Path) -> None:
    if not (cache / "manifest.json").is_file():
        from trainer import prepare

        prepare.prepare(source="embedded", profile="small", cache=cache, max_mb=3.0)


def make_trainers(work: Path) -> tuple[Path, Path]:
    """(shipped trainer folder, in-process-evaluation trainer folder)."""
    shipped, before = work / "after" / "trainer", work / "before" / "trainer"
    for target in (shipped, before):
        target.mkdir(parents=True)
        for name in ("train.py", "prepare.py", "corpus.py"):
            shutil.copy(ROOT / "trainer" / name, target / name)
    text = (before / "train.py").read_text()
    if HAND_OVER not in text:
        raise SystemExit("train.py no longer ends with hand_over(model) as this benchmark expects")
    (before / "train.py").write_text(text.replace(HAND_OVER, EVALUATE_IN_PROCESS))
    return shipped, before


def run_before(trainer: Path, cache: Path, budget: float, seed: int) -> tuple[float, float | None]:
    env = scrub_environment(os.environ)
    env.update(AUTORESEARCH_CACHE=str(cache), AUTORESEARCH_TIME_BUDGET=str(budget), AUTORESEARCH_SEED=str(seed),
               AUTORESEARCH_DEVICE="cpu", PYTHONUNBUFFERED="1")
    env.pop("AUTORESEARCH_MODEL_OUT", None)
    started = time.monotonic()
    proc = subprocess.run([sys.executable, "trainer/train.py"], cwd=trainer.parent, env=env, capture_output=True,
                          text=True, timeout=600)
    wall = time.monotonic() - started
    value = None
    for line in proc.stdout.splitlines():
        if line.startswith("val_bpb:"):
            value = float(line.split(":", 1)[1])
    if value is None:
        raise SystemExit(f"the in-process trainer printed no val_bpb:\n{proc.stdout[-2000:]}\n{proc.stderr[-2000:]}")
    return wall, value


def run_after(setup: TrialSetup, workspace: Path, out: Path, budget: float, seed: int) -> dict:
    out.mkdir(parents=True, exist_ok=True)
    spec = TrialSpec(command=[sys.executable, "trainer/train.py"], cwd=workspace, log_path=out / "log.txt",
                     metrics_path=out / "metrics.jsonl", eval_record_path=out / "eval.json", budget_s=budget,
                     grace_s=600.0, seed=seed, extra_env={"AUTORESEARCH_CACHE": str(setup.config.cache_dir),
                                                          "AUTORESEARCH_DEVICE": "cpu"},
                     **setup.spec_fields(out))
    started = time.monotonic()
    outcome = run_trial(spec)
    wall = time.monotonic() - started
    if outcome.status != "ok":
        raise SystemExit(f"the sandboxed trial crashed: {outcome.reason}\n{outcome.log_tail}")
    return {"wall": wall, "val_bpb": outcome.val_bpb, "handover": summary_float(outcome.summary, "handover_seconds"),
            "evaluation": outcome.evaluation_seconds, "sandboxed": outcome.sandboxed}


def bwrap_start_seconds(setup: TrialSetup, rounds: int = 5) -> float | None:
    plan = setup.trial_plan()
    if plan is None:
        return None
    times = []
    for _ in range(rounds):
        started = time.monotonic()
        subprocess.run(plan.wrap(["/bin/true"]), check=True)
        times.append(time.monotonic() - started)
    return statistics.median(times)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--budget", type=float, default=3.0)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--cache", type=Path, default=None)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    cache = (args.cache or default_cache_dir()).resolve()
    ensure_cache(cache)
    sandbox = probe()
    with tempfile.TemporaryDirectory(prefix="trust-cost-") as tmp:
        work = Path(tmp)
        shipped, before = make_trainers(work)
        config = RunConfig(tag="trust-cost", journals_root=work / "journals", cache_dir=cache, budget_s=args.budget,
                           device="cpu", source_dir=shipped.parent, layout=Layout())
        config.run_dir.mkdir(parents=True)
        setup = TrialSetup(config, shipped.parent, eval_fingerprint(cache))
        setup.write_pristine_harness({f"trainer/{n}": (shipped / n).read_text() for n in ("prepare.py", "corpus.py")})
        rows: list[dict] = []
        for i in range(args.rounds):
            seed = 42 + i
            b_wall, b_value = run_before(before, cache, args.budget, seed)
            after = run_after(setup, shipped.parent, work / f"trial-{i}", args.budget, seed)
            rows.append({"round": i + 1, "before": b_wall, "before_val_bpb": b_value, **{f"after_{k}": v for k, v in
                                                                                     after.items()}})
            print(f"round {i + 1}: before {b_wall:.2f} s (val_bpb {b_value:.4f}); after {after['wall']:.2f} s "
                  f"(val_bpb {after['val_bpb']:.4f}, hand-over {after['handover']} s, evaluation "
                  f"{after['evaluation']:.2f} s)", file=sys.stderr)
        bwrap_s = bwrap_start_seconds(setup)
    med = {key: statistics.median(r[key] for r in rows)
           for key in ("before", "after_wall", "after_evaluation") if all(r[key] is not None for r in rows)}
    handovers = [r["after_handover"] for r in rows if r["after_handover"] is not None]
    result = {"budget_s": args.budget, "rounds": args.rounds, "sandbox": sandbox.label, "median_before_s": med["before"],
              "median_after_s": med["after_wall"], "cost_of_trust_s": med["after_wall"] - med["before"],
              "median_handover_s": statistics.median(handovers) if handovers else None,
              "median_evaluation_s": med.get("after_evaluation"), "bwrap_start_s": bwrap_s, "rows": rows}
    if args.json:
        print(json.dumps(result, indent=2))
        return 0
    print(f"cost of trust, CPU, budget {args.budget:g} s, {args.rounds} alternating rounds, cold starts; "
          f"sandbox: {sandbox.label}")
    print(f"{'path':<44} {'median s':>9}")
    print(f"{'before: unsandboxed, evaluates itself':<44} {result['median_before_s']:>9.2f}")
    print(f"{'after: bwrap + hand-over + evaluator':<44} {result['median_after_s']:>9.2f}")
    print(f"{'cost of trust per trial (after - before)':<44} {result['cost_of_trust_s']:>+9.2f}")
    print(f"{'  of which: hand-over (export, in the trial)':<44} {result['median_handover_s'] or 0:>9.2f}")
    print(f"{'  evaluation after the trial exits':<44} {result['median_evaluation_s'] or 0:>9.2f}")
    if bwrap_s is not None:
        print(f"{'  bubblewrap start':<44} {bwrap_s:>9.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
