"""A/B trials of changes that might raise the trainer's MFU: each predicted, each measured against the baseline.

    python benchmarks/trainer_gpu_ab.py [--budget 45] [--candidates NAME,...] [--device cuda] [--cache DIR]
                                        [--seed 42] [--json] [--list]

For a GPU (the device tool's one-command limit is 10 minutes: at the default 45 s budget all six runs fit in
about 8 minutes; split them with --candidates otherwise). Every candidate is a small rewrite of a copy of
trainer/train.py, run for the same budget on the same cache; the baseline runs first and again last, so the
table shows the drift between two identical runs next to every gain. A candidate is worth keeping in
train.py only when its gain over the baseline is larger than that drift; keep those by editing train.py
itself, then run `benchmarks/trainer_gpu.py` for the 300 s figures.

Columns: tokens/s over the timed steps (the trainer's summary), its ratio to the first baseline, the median
tokens/s of single steps after the third (less sensitive to one slow step), MFU against the harness's
datasheet peak, peak VRAM, compile seconds (outside the budget), val_bpb and steps. `--device cpu` runs the
same plumbing on a CPU (slow and meaningless as a measurement; for checking that every patch still applies).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from trainer_common import default_cache, ensure_cache, replace_once, run_trial


@dataclass(frozen=True)
class Candidate:
    name: str
    prediction: str
    patch: Callable[[str], str] | None = None
    overrides: dict[str, str] | None = None


def _compile_newton_schulz(source: str) -> str:
    return replace_once(source, "\n\nclass Muon(torch.optim.Optimizer):",
                        "\n\nnewton_schulz = torch.compile(newton_schulz)  # set by the benchmark\n"
                        "\n\nclass Muon(torch.optim.Optimizer):")


def _max_autotune(source: str) -> str:
    return replace_once(source, "train_model = torch.compile(model) if use_compile else model",
                        'train_model = torch.compile(model, mode="max-autotune-no-cudagraphs") if use_compile else model')


def _no_step_sync(source: str) -> str:
    return replace_once(source, '''        if kind in ("cuda", "rocm"):
            torch.cuda.synchronize()
        dt = time.time() - t0''', '''        dt = time.time() - t0''')


CANDIDATES = [
    Candidate("baseline", "the reference: train.py as it is"),
    Candidate("batch32", "DEVICE_BATCH_SIZE 16 -> 32: larger GEMMs (M = 64k rows), half the micro-batches per step; "
                         "+5 to 15% tokens/s, about twice the activation memory",
              overrides={"DEVICE_BATCH_SIZE": "32"}),
    Candidate("batch64", "DEVICE_BATCH_SIZE 16 -> 64: a quarter of the micro-batches; a further gain smaller than "
                         "batch32's, four times the activation memory",
              overrides={"DEVICE_BATCH_SIZE": "64"}),
    Candidate("compiled-muon", "torch.compile on the Newton-Schulz iteration: fuses its elementwise work and cuts "
                               "launches in the optimizer step; +1 to 3% tokens/s, a few seconds more compile",
              patch=_compile_newton_schulz),
    Candidate("max-autotune", "inductor's max-autotune (no CUDA graphs) for the model: better GEMM and fused kernels; "
                              "0 to 5% tokens/s for minutes more compile per changed graph",
              patch=_max_autotune),
    Candidate("no-step-sync", "drop torch.cuda.synchronize() after loss.item(): item() already waits for the stream, "
                              "so about 0% (a control for the sync's cost)",
              patch=_no_step_sync),
    Candidate("baseline-again", "the reference again: the drift between two identical runs"),
]
BY_NAME = {c.name: c for c in CANDIDATES}
DEFAULT = ["baseline", "batch32", "batch64", "compiled-muon", "max-autotune", "baseline-again"]


def _number(value: object) -> float | None:
    try:
        return float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return None


def measure(candidate: Candidate, cache: Path, budget: float, device: str, seed: int) -> dict:
    r = run_trial(cache, budget, device, seed=seed, overrides=candidate.overrides, patch=candidate.patch)
    if r["returncode"] != 0:
        return {"name": candidate.name, "failed": r["returncode"], "log_tail": r["log_tail"][-600:]}
    steps = [m["tokens_per_s"] for m in r["metrics"][3:] if m.get("tokens_per_s")]
    return {
        "name": candidate.name,
        "tokens_per_s": _number(r.get("tokens_per_s")),
        "median_step_tokens_per_s": statistics.median(steps) if steps else None,
        "mfu_percent": _number(r.get("mfu_percent")),
        "peak_vram_mb": _number(r.get("peak_vram_mb")),
        "compile_seconds": _number(r.get("compile_seconds")),
        "val_bpb": _number(r.get("val_bpb")),
        "num_steps": _number(r.get("num_steps")),
        "wall_seconds": r["wall_seconds"],
    }


def _cell(value: float | None, spec: str) -> str:
    return "n/a" if value is None else format(value, spec)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--budget", type=float, default=45.0, help="training seconds per run (default 45)")
    p.add_argument("--candidates", default=",".join(DEFAULT),
                   help=f"comma-separated, in order (default {','.join(DEFAULT)}); --list shows them all")
    p.add_argument("--device", default="cuda", choices=("cuda", "cpu"))
    p.add_argument("--cache", type=Path, default=None)
    p.add_argument("--seed", type=int, default=42)
    p.add_argument("--json", action="store_true")
    p.add_argument("--list", action="store_true", help="print the candidates and their predictions, run nothing")
    args = p.parse_args(argv)
    if args.list:
        for c in CANDIDATES:
            print(f"{c.name:<15} {c.prediction}")
        return 0
    names = [n.strip() for n in args.candidates.split(",") if n.strip()]
    unknown = [n for n in names if n not in BY_NAME]
    if unknown:
        p.error(f"unknown candidate(s) {', '.join(unknown)}; known: {', '.join(BY_NAME)}")
    if args.device == "cuda":
        import torch

        if not torch.cuda.is_available():
            print("trainer_gpu_ab.py needs a CUDA or ROCm GPU; --device cpu only checks the plumbing", file=sys.stderr)
            return 2
    cache = args.cache or default_cache()
    manifest = ensure_cache(cache, "auto")
    rows = [measure(BY_NAME[name], cache, args.budget, args.device, args.seed) for name in names]
    reference = next((r.get("tokens_per_s") for r in rows if r["name"] == "baseline" and "failed" not in r), None)
    for row in rows:
        tps = row.get("tokens_per_s")
        row["ratio_to_baseline"] = tps / reference if tps and reference else None
    if args.json:
        print(json.dumps({"budget_s": args.budget, "device": args.device, "profile": manifest["profile"],
                          "rows": rows}, indent=2))
        return 0
    print(f"A/B trials on {args.device}, {args.budget:g} s each, profile {manifest['profile']}, seed {args.seed}")
    header = (f"{'candidate':<15}{'tokens/s':>11}{'ratio':>8}{'median/step':>13}{'MFU %':>8}{'VRAM MB':>10}"
              f"{'compile s':>11}{'val_bpb':>10}{'steps':>7}")
    print(header)
    for row in rows:
        if "failed" in row:
            print(f"{row['name']:<15} failed (exit {row['failed']}): {row['log_tail'].splitlines()[-1:]}")
            continue
        print(f"{row['name']:<15}{_cell(row['tokens_per_s'], ',.0f'):>11}{_cell(row['ratio_to_baseline'], '.3f'):>8}"
              f"{_cell(row['median_step_tokens_per_s'], ',.0f'):>13}{_cell(row['mfu_percent'], '.2f'):>8}"
              f"{_cell(row['peak_vram_mb'], ',.0f'):>10}{_cell(row['compile_seconds'], '.1f'):>11}"
              f"{_cell(row['val_bpb'], '.4f'):>10}{_cell(row['num_steps'], '.0f'):>7}")
    print()
    for name in names:
        print(f"{name}: predicted {BY_NAME[name].prediction}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
