"""A constructed run for the morning-after tests: the real loop, on the stand-in trainer, scripted.

The copy of the stand-in trainer made here reports a parameter count and peak VRAM that grow with
WIDTH and a per-seed noise of NOISE_SD, so the report has something to plot and the noise floor is
not zero. The script covers what the graveyard and report must show: a baseline, a clear keep, a keep
under the noise floor (flagged), discards by an agent category and without one, a discard within the
noise, a crash with a log, reflections, a plan tried and a plan dropped with its reason.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

from supervisor.core.config import RunConfig
from supervisor.run.loop import Supervisor
from tests.loop_support import FAKE_SOURCE, CallbackAgent, fake_config

# (edits, description, category or None, plan index or None, interpretation)
SCRIPT: list[tuple[list[tuple[str, str]], str, str | None, int | None, str]] = [
    ([], "baseline: the unmodified training script", "other", None,
     "The baseline sets the reference every later trial is measured against."),
    ([("LR = 0.02", "LR = 0.038")], "raise the learning rate to 0.038", "learning_rate", None,
     "A large gain, far above the noise floor: the default learning rate was too low."),
    ([("LR = 0.038", "LR = 0.04")], "nudge the learning rate to 0.04", None, None,
     "The gain is tiny and sits under the noise floor; it may be luck and should be re-tested."),
    ([("WIDTH = 32", "WIDTH = 16")], "halve the model width to 16", None, None,
     "A narrower model is clearly worse at this budget; capacity matters more than speed here."),
    ([("LR = 0.04  #", "LR = 0.08  #")], "double the learning rate to 0.08 | aggressive", "learning_rate", None,
     "Doubling overshoots; the optimum is near 0.04 and the curve is steep above it."),
    ([('MODE = "ok"', 'MODE = "crash"')], "fused attention kernel (crashes)", "efficiency", None,
     "The fused kernel path crashes with an illegal memory access; not usable on this build."),
    ([("STEPS = 10", "STEPS = 12")], "stream two more metric lines", None, None,
     "Streaming more metric lines changes nothing in the result, as expected for a logging change."),
    ([("WIDTH = 32", "WIDTH = 64")], "double the model width to 64", None, 0,
     "A wider model wins clearly; the earlier narrow result pointed the same way."),
    ([("LR = 0.04  #", "LR = 0.041  #")], "raise the learning rate slightly to 0.041", None, None,
     "Slightly worse but well within the noise; the learning rate is at its optimum for this width."),
]


def make_source(tmp_path: Path) -> Path:
    """A copy of the stand-in trainer with WIDTH-dependent parameters and VRAM, and seed noise."""
    source = tmp_path / "source"
    shutil.copytree(FAKE_SOURCE, source)
    train = source / "trainer/train.py"
    text = train.read_text()
    text = text.replace("NOISE_SD = 0.0", "NOISE_SD = 0.002").replace("SLEEP = 0.05", "SLEEP = 0.01")
    text = text.replace('print(f"num_params_M: {0.05 * DEPTH:g}")', 'print(f"num_params_M: {0.05 * WIDTH:.2f}")')
    text = text.replace('print("peak_vram_mb: 0.0")', 'print(f"peak_vram_mb: {40.0 * WIDTH:.1f}")')
    text = text.replace('print("mfu_percent: unknown")', 'print(f"mfu_percent: {20 + LR * 100:.1f}")')
    train.write_text(text)
    return source


def _journal(trial: dict[str, Any], interpretation: str) -> dict[str, Any]:
    n = trial["id"]
    return {"tool": "write_journal", "input": {
        "hypothesis": f"Trial {n} tests whether '{trial['description']}' lowers val_bpb.",
        "change": f"Trial {n} changed one constant of the training script: {trial['description']}.",
        "interpretation": interpretation,
        "next_step": f"After trial {n}, continue down the plan and re-test anything under the floor.",
    }}


def _reflection(n: int) -> dict[str, Any]:
    return {"tool": "write_reflection", "input": {
        "load_bearing": f"The learning rate near 0.04 is load-bearing; the width is next (reflection {n}).",
        "dead_ends": f"Learning rates above 0.06 and the fused kernel are dead ends here (reflection {n}).",
        "retest": f"Re-test the sub-floor learning-rate nudge with new seeds (reflection {n}).",
        "plan": f"Try a wider model, then the schedule; leave attention windows alone (reflection {n}).",
    }}


def build_run(tmp_path: Path, tag: str = "night") -> RunConfig:
    """Run the scripted night and return its config (the ledger is in config.run_dir)."""
    source = make_source(tmp_path)
    config = fake_config(tmp_path, tag=tag, source_dir=source, reflect_every=4, plateau_trials=50,
                         noise_repeats=3)
    interpretations: dict[int, str] = {}
    queue = list(enumerate(SCRIPT))
    plan_ids: list[int] = []
    state = {"reflections": 0, "planned": False, "dropped": False}

    def act(ctx, _n):
        if ctx.obligation == "journal":
            trial = ctx.pending_trial
            return [_journal(trial, interpretations.get(trial["id"], "No interpretation scripted."))]
        if ctx.obligation == "reflection":
            state["reflections"] += 1
            return [_reflection(state["reflections"])]
        if not state["planned"]:
            state["planned"] = True
            return [{"tool": "plan_add", "input": {"idea": "double the model width", "rationale": "capacity"}},
                    {"tool": "plan_add", "input": {"idea": "sliding-window attention on half the layers",
                                                   "rationale": "cheaper attention, more steps"}}]
        plan_ids[:] = [p.id for p in ctx.plans]
        if len(ctx.results) >= 6 and not state["dropped"]:
            state["dropped"] = True
            return [{"tool": "plan_drop", "input": {
                "plan_id": plan_ids[1],
                "reason": "windows cannot help at this short sequence length; the context is already short"}}]
        if not queue:
            return None
        index, (edits, description, category, plan, interpretation) = queue.pop(0)
        interpretations[index + 1] = interpretation
        calls = [{"tool": "edit_file", "input": {"path": "trainer/train.py", "search": s, "replace": r}}
                 for s, r in edits]
        run_input: dict[str, Any] = {"description": description}
        if category:
            run_input["category"] = category
        if plan is not None:
            run_input["plan_id"] = plan_ids[plan]
        calls.append({"tool": "run_trial", "input": run_input})
        return calls

    agent = CallbackAgent(act)
    supervisor = Supervisor(config, agent)
    supervisor.run()
    return config
