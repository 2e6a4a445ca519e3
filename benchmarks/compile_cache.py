"""What the run's persistent compile cache saves: the same compiled trial cold, then warm.

    python benchmarks/compile_cache.py [--budget 5] [--device cpu] [--cache DIR]

The supervisor gives every trial TORCHINDUCTOR_CACHE_DIR/TRITON_CACHE_DIR inside the run folder, so a trial
whose graphs did not change loads its kernels instead of recompiling. This runs trainer/train.py (a copy
with COMPILE = True) twice against one fresh cache folder and prints compile and total seconds of each;
the cold run is the baseline.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from supervisor.core.config import default_cache_dir  # noqa: E402
from supervisor.trial.runner import parse_summary, scrub_environment, summary_float  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--budget", type=float, default=5.0)
    p.add_argument("--device", default="cpu")
    p.add_argument("--cache", type=Path, default=None, help="prepared data cache")
    args = p.parse_args(argv)
    data = args.cache or default_cache_dir()
    if not (data / "manifest.json").is_file():
        print(f"no prepared data in {data}: run `autoresearch prepare` first", file=sys.stderr)
        return 1
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        (work / "trainer").mkdir()
        for name in ("prepare.py", "corpus.py", "train.py"):
            shutil.copy2(ROOT / "trainer" / name, work / "trainer" / name)
        train = work / "trainer/train.py"
        train.write_text(re.sub(r"^COMPILE = .*$", "COMPILE = True  # forced by the benchmark", train.read_text(),
                                flags=re.M))
        env = scrub_environment(os.environ)
        env.update({"AUTORESEARCH_CACHE": str(data), "AUTORESEARCH_TIME_BUDGET": str(args.budget),
                    "AUTORESEARCH_DEVICE": args.device, "AUTORESEARCH_METRICS": str(work / "m.jsonl"),
                    "TORCHINDUCTOR_CACHE_DIR": str(work / "inductor"), "TRITON_CACHE_DIR": str(work / "triton")})
        rows = []
        for label in ("cold cache (baseline)", "warm cache"):
            out = subprocess.run([sys.executable, str(train)], env=env, capture_output=True, text=True)
            if out.returncode != 0:
                print(out.stdout[-2000:], out.stderr[-2000:], file=sys.stderr)
                return 1
            s = parse_summary(out.stdout)
            rows.append((label, summary_float(s, "compile_seconds"), summary_float(s, "total_seconds"),
                         summary_float(s, "num_steps")))
    print(f"compile cache, {args.device}, budget {args.budget:g}s")
    print(f"{'run':<24}{'compile s':>10}{'total s':>10}{'steps':>8}")
    for label, comp, total, steps in rows:
        print(f"{label:<24}{comp or 0:>10.1f}{total or 0:>10.1f}{int(steps or 0):>8}")
    cold, warm = rows[0][1] or 0.0, rows[1][1] or 0.0
    print(f"{'warm / cold compile':<24}{(warm / cold if cold else float('nan')):>10.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
