"""GPU figures for the default trial: compile on vs off, MFU, VRAM, and the real bf16 matmul ceiling.

    python benchmarks/trainer_gpu.py [--budget 300] [--cache DIR] [--seed 42] [--only compiled|eager]
                                     [--matmul-only] [--json]

For a machine with a CUDA or ROCm GPU. Prepares the cache if it is missing (`--profile auto`, so
the full profile on a GPU with >= 20 GB), measures the dense bf16 matmul throughput the GPU really
reaches (the ceiling MFU is judged against, beside the datasheet peak that train.py uses), then runs
the default train.py for the budget twice: COMPILE = True and COMPILE = False. Prints val_bpb,
MFU, peak VRAM, tokens/s, steps and compile time for both. Two 300 s trials take about 12-15 minutes;
where one command may run at most 10 minutes (the device tool), run `--only compiled` and `--only eager` as
two commands: each measures the matmul ceiling again, so each table stands on its own.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from trainer_common import default_cache, ensure_cache, print_table, run_trial


def matmul_ceiling(size: int = 8192, iters: int = 50, dtype_name: str = "bfloat16") -> dict:
    """Measured dense matmul FLOP/s on the current GPU: (size x size) @ (size x size), timed with CUDA events."""
    import torch

    if not torch.cuda.is_available():
        raise RuntimeError("no CUDA/ROCm GPU visible to torch")
    dtype = getattr(torch, dtype_name)
    a = torch.randn(size, size, device="cuda", dtype=dtype)
    b = torch.randn(size, size, device="cuda", dtype=dtype)
    for _ in range(5):
        a @ b
    torch.cuda.synchronize()
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    for _ in range(iters):
        a @ b
    end.record()
    torch.cuda.synchronize()
    seconds = start.elapsed_time(end) / 1000
    return {"size": size, "dtype": dtype_name, "tflops": 2 * size**3 * iters / seconds / 1e12,
            "device_name": torch.cuda.get_device_name()}


def datasheet_peak(device_name: str) -> float | None:
    """The peak MFU is measured against: the harness's table (trainer/prepare.py)."""
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "trainer"))
    from prepare import peak_flops

    return peak_flops(device_name)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--budget", type=float, default=300.0, help="training seconds per trial (default 300)")
    p.add_argument("--cache", type=Path, default=None, help="data cache (default $AUTORESEARCH_CACHE or ~/.cache/autoresearch)")
    p.add_argument("--seed", type=int, default=42)
    p.add_argument("--only", choices=("compiled", "eager"), help="run one of the two trials")
    p.add_argument("--skip-eager", action="store_true", help="the same as --only compiled")
    p.add_argument("--matmul-only", action="store_true", help="only measure the matmul ceiling")
    p.add_argument("--json", action="store_true", help="print the results as JSON instead of a table")
    args = p.parse_args(argv)

    import torch

    if not torch.cuda.is_available():
        print("trainer_gpu.py needs a CUDA or ROCm GPU (torch.cuda.is_available() is False); "
              "on a CPU use benchmarks/trainer_cpu.py", file=sys.stderr)
        return 2
    ceiling = matmul_ceiling()
    peak = datasheet_peak(ceiling["device_name"])
    results: dict = {
        "device_name": ceiling["device_name"],
        "torch": torch.__version__,
        "matmul_bf16_tflops_measured": round(ceiling["tflops"], 1),
        "datasheet_bf16_tflops": peak / 1e12 if peak else "unknown",
    }
    if not args.matmul_only:
        cache = args.cache or default_cache()
        manifest = ensure_cache(cache, "auto")
        results["profile"] = manifest["profile"]
        only = "compiled" if args.skip_eager else args.only
        variants = [(name, overrides) for name, overrides in (("compiled", {"COMPILE": "True"}),
                                                               ("eager", {"COMPILE": "False"}))
                    if only in (None, name)]
        for name, overrides in variants:
            t0 = time.time()
            r = run_trial(cache, args.budget, "cuda", seed=args.seed, overrides=overrides)
            if r["returncode"] != 0:
                print(f"{name} trial failed ({r['returncode']}):\n{r['log_tail']}", file=sys.stderr)
                results[name] = {"failed": r["returncode"], "log_tail": r["log_tail"][-800:]}
                continue
            mfu_measured = "unknown"
            if r.get("tokens_per_s", "unknown") != "unknown" and r.get("mfu_percent", "unknown") != "unknown" and peak:
                # rescale MFU from the datasheet peak to the measured matmul ceiling
                mfu_measured = round(float(r["mfu_percent"]) * peak / (ceiling["tflops"] * 1e12), 2)
            results[name] = {
                "val_bpb": r["val_bpb"],
                "mfu_percent": r["mfu_percent"],
                "mfu_percent_of_measured_ceiling": mfu_measured,
                "peak_vram_mb": r["peak_vram_mb"],
                "tokens_per_s": r["tokens_per_s"],
                "num_steps": r["num_steps"],
                "compile_seconds": r["compile_seconds"],
                "training_seconds": r["training_seconds"],
                "total_seconds": r["total_seconds"],
                "compiled": r["compiled"],
                "wall_seconds": round(time.time() - t0, 1),
            }
    if args.json:
        print(json.dumps(results, indent=2))
    else:
        rows = []
        for key, value in results.items():
            if isinstance(value, dict):
                rows += [(f"{key}.{k}", str(v)) for k, v in value.items()]
            else:
                rows.append((key, str(value)))
        print_table(rows, f"trainer on {results['device_name']}: {args.budget:g} s budget, seed {args.seed}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
