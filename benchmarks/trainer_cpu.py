"""CPU figures for the default trial: how much the small-profile model learns in a fixed budget.

    python benchmarks/trainer_cpu.py [--budget 60] [--cache DIR] [--seed 42] [--json]

Prepares the cache (embedded corpus, small profile) if it is missing, evaluates the untrained
model (a budget-0 trial), runs the default train.py for the budget on the CPU, and prints a table:
untrained val_bpb, val_bpb after the budget, steps, tokens/s, parameters, timings. The machine's
load average is printed too: on a shared machine, other processes lower tokens/s and val_bpb.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from trainer_common import default_cache, ensure_cache, print_table, run_trial


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--budget", type=float, default=60.0, help="training seconds (default 60)")
    p.add_argument("--cache", type=Path, default=None, help="data cache (default $AUTORESEARCH_CACHE or ~/.cache/autoresearch)")
    p.add_argument("--seed", type=int, default=42)
    p.add_argument("--json", action="store_true", help="print the results as JSON instead of a table")
    args = p.parse_args(argv)
    cache = args.cache or default_cache()
    manifest = ensure_cache(cache, "small")

    load_before = os.getloadavg()[0]
    untrained = run_trial(cache, 0, "cpu", seed=args.seed)
    trained = run_trial(cache, args.budget, "cpu", seed=args.seed)
    load_after = os.getloadavg()[0]
    for name, r in (("untrained", untrained), ("trained", trained)):
        if r["returncode"] != 0 or "val_bpb" not in r:
            print(f"{name} trial failed ({r['returncode']}):\n{r['log_tail']}", file=sys.stderr)
            return 1

    first_loss = trained["metrics"][0]["loss"] if trained["metrics"] else None
    last_loss = trained["metrics"][-1]["loss"] if trained["metrics"] else None
    results = {
        "budget_s": args.budget,
        "cpu_threads": os.cpu_count(),
        "load_avg_1min_before_after": [round(load_before, 2), round(load_after, 2)],
        "corpus": f"{manifest['source']}",
        "profile": manifest["profile"],
        "vocab_size": manifest["vocab_size"],
        "eval_tokens": manifest["eval_tokens"],
        "untrained_val_bpb": float(untrained["val_bpb"]),
        "val_bpb": float(trained["val_bpb"]),
        "num_steps": int(trained["num_steps"]),
        "tokens_per_s": trained["tokens_per_s"],
        "total_tokens_M": trained["total_tokens_M"],
        "num_params_M": trained["num_params_M"],
        "depth": trained["depth"],
        "train_loss_first_last": [first_loss, last_loss],
        "training_seconds": trained["training_seconds"],
        "compile_seconds": trained["compile_seconds"],
        "eval_seconds": trained.get("eval_seconds", "unknown"),
        "total_seconds": trained["total_seconds"],
    }
    if args.json:
        print(json.dumps(results, indent=2))
    else:
        print_table([(k, str(v)) for k, v in results.items()],
                    f"trainer on the CPU: default train.py, {args.budget:g} s budget, seed {args.seed}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
