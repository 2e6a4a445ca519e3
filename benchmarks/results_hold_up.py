"""What issue 19's checks cost: the no-repeat check before every trial, and the audit score after every keep.

    python benchmarks/results_hold_up.py [--trials 100 500 1000] [--audits 3] [--cache DIR] [--skip-audit] [--json]

Repeats. Before a trial runs, `run_trial` compares its change with every earlier judged trial's
(supervisor/core/repeats.py). The earlier trials are synthetic but realistic: each changes one to three
constants of the real trainer/train.py, as the agent's edits do. The table gives the time of one check against
N earlier trials, the first time (every earlier diff normalised) and again (normalised once, then cached), beside
the baseline measured in the same run: reading those N trials from a ledger, which the tool does anyway.

Audit. A real run of the real trainer (2 s budget, CPU, sandboxed where bubblewrap works) keeps its baseline and
scores it on the audit split; the kept model is then scored again --audits times. The table gives the audit
score's seconds beside the baseline measured in the same run: the trial's own trusted evaluation (which
overlaps the trainer's start-up for a trial, but not for the audit).
"""

from __future__ import annotations

import argparse
import json
import random
import re
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from supervisor.agents.scripted import ScriptedAgent  # noqa: E402
from supervisor.core.config import RunConfig  # noqa: E402
from supervisor.core.repeats import find_repeat  # noqa: E402
from supervisor.core.types import TrialStatus  # noqa: E402
from supervisor.run.loop import Supervisor  # noqa: E402
from supervisor.store.ledger import Ledger  # noqa: E402

CONSTANT = re.compile(r"^([A-Z_]+) = ([0-9.e-]+)(\s.*)?$")


def _edits(source: str, rng: random.Random) -> str:
    """A diff of train.py changing one to three numeric constants (what an agent's trial usually is)."""
    import difflib

    lines = source.splitlines(keepends=True)
    numeric = [i for i, line in enumerate(lines) if CONSTANT.match(line.rstrip("\n"))]
    changed = list(lines)
    for i in rng.sample(numeric, rng.randint(1, min(3, len(numeric)))):
        name, value, rest = CONSTANT.match(lines[i].rstrip("\n")).groups()  # type: ignore[union-attr]
        new = float(value) * rng.choice([0.5, 0.8, 1.25, 1.5, 2.0]) if float(value) else rng.random()
        changed[i] = f"{name} = {new:.6g}{rest or ''}\n"
    return "".join(difflib.unified_diff(lines, changed, "a/trainer/train.py", "b/trainer/train.py"))


def repeats_table(counts: list[int], seed: int = 7) -> list[dict]:
    source = (ROOT / "trainer" / "train.py").read_text(encoding="utf-8")
    rows = []
    for n in counts:
        rng = random.Random(seed + n)
        with tempfile.TemporaryDirectory() as tmp:
            ledger = Ledger(Path(tmp) / "ledger.sqlite", create=True)
            ledger.init_run("bench", RunConfig(tag="bench", journals_root=Path(tmp)).to_json())
            for i in range(n):
                tid = ledger.start_trial(commit_sha=f"{i:040x}", parent_commit="0" * 40, parent_trial=1,
                                         description=f"trial {i}", category=None, plan_id=None,
                                         diff=_edits(source, rng), budget_s=300.0, platform={}, seed=42)
                ledger.finish_trial(tid, status=TrialStatus.DISCARD, val_bpb=1.0 + rng.random() / 100)
            began = time.perf_counter()
            trials = ledger.trials()
            read_s = time.perf_counter() - began
            new = _edits(source, rng)
            began = time.perf_counter()
            find_repeat(new, 1, trials)
            first_s = time.perf_counter() - began
            began = time.perf_counter()
            find_repeat(_edits(source, rng), 1, trials)
            again_s = time.perf_counter() - began
            ledger.close()
        rows.append({"trials": n, "ledger_read_s": read_s, "check_first_s": first_s, "check_again_s": again_s})
    return rows


def audit_table(cache: Path | None, audits: int) -> dict:
    from tests.loop_support import journal, trial, write_script

    with tempfile.TemporaryDirectory() as tmp:
        base = Path(tmp)
        if cache is None:
            from trainer import prepare

            cache = base / "cache"
            prepare.prepare(source="embedded", profile="small", cache=cache)
        config = RunConfig(tag="audit-bench", journals_root=base / "journals", cache_dir=cache, budget_s=2.0,
                           grace_s=120.0, device="cpu", noise_repeats=0, reflect_every=1000, max_trials=1)
        script = write_script(base / "script.jsonl", [trial("baseline"), journal(1)])
        sup = Supervisor(config, ScriptedAgent(script))
        sup.run()
        sup = Supervisor(config, ScriptedAgent(script), resume=True)
        try:
            keep = sup.ledger.trial(1)
            assert keep is not None and keep.status == TrialStatus.KEEP, keep
            seconds = []
            for _ in range(audits):
                began = time.perf_counter()
                sup.executor.score_audit(1)
                seconds.append(time.perf_counter() - began)
            scored = sup.ledger.trial(1)
        finally:
            sup.close()
        assert scored is not None
        evaluation = float(keep.summary.get("supervisor.evaluation_seconds") or "nan")
        return {"trial_evaluation_s": evaluation, "audit_s": seconds, "audit_val_bpb": scored.audit_val_bpb,
                "audit_note": scored.audit_note, "val_bpb": keep.val_bpb}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, nargs="+", default=[100, 500, 1000])
    parser.add_argument("--audits", type=int, default=3)
    parser.add_argument("--cache", type=Path, help="a prepared cache (default: prepare the embedded corpus)")
    parser.add_argument("--skip-audit", action="store_true")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    began = time.perf_counter()
    repeats = repeats_table(args.trials)
    print("no-repeat check before a trial (baseline: reading the N earlier trials from the ledger)")
    print(f"{'earlier trials':>15} {'ledger read':>12} {'check, first':>13} {'check, again':>13} {'again/read':>11}")
    for r in repeats:
        print(f"{r['trials']:>15,} {r['ledger_read_s'] * 1000:>10.1f}ms {r['check_first_s'] * 1000:>11.1f}ms "
              f"{r['check_again_s'] * 1000:>11.1f}ms {r['check_again_s'] / r['ledger_read_s']:>10.2f}x")
    audit = None
    if not args.skip_audit:
        audit = audit_table(args.cache, args.audits)
        median = statistics.median(audit["audit_s"])
        print("\naudit score of a keep (baseline: the same trial's own trusted evaluation)")
        print(f"  trial's evaluation: {audit['trial_evaluation_s']:.1f} s; audit score: median {median:.1f} s "
              f"over {len(audit['audit_s'])} ({', '.join(f'{s:.1f}' for s in audit['audit_s'])}); ratio "
              f"{median / audit['trial_evaluation_s']:.2f}x")
        print(f"  val_bpb {audit['val_bpb']:.4f}, audit val_bpb {audit['audit_val_bpb']}"
              + (f" ({audit['audit_note']})" if audit["audit_note"] else ""))
    print(f"\nwall time {time.perf_counter() - began:.0f} s")
    if args.json:
        print(json.dumps({"repeats": repeats, "audit": audit}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
