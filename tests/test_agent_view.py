"""What the model could not see (issue 16): the machine and data in the cached prefix, each noise seed's
val_bpb and steps and the tokens per step in the run header, and inspect_trial (a trial's loss curve
against its parent's at matched steps and tokens, its time split, its log), end to end through both SDKs.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from supervisor.agents.base import Machine, NoiseView, SeedRun, StepSize
from supervisor.agents.llm import build_prompt, render_machine, render_state
from supervisor.core import prompts
from supervisor.core.paths import RunPaths
from supervisor.core.types import NoiseRecord
from supervisor.run import trial_view
from supervisor.run.context import noise_view, peak_flops, peak_table, trial_accelerator
from supervisor.run.loop import Supervisor
from supervisor.store.ledger import Ledger
from tests.agents_support import KEY_VARIABLES, PROVIDERS, SECRET, llm_agent
from tests.llm_server import LLMServer, Reply, ToolUse
from tests.loop_support import fake_config, journal
from tests.test_agents_llm import context

REPO = Path(__file__).resolve().parent.parent
H100 = Machine(accelerator="cuda", device="NVIDIA H100 80GB HBM3", memory_mb=81559.0,
               cpu="Intel Xeon Platinum", cpu_threads="26", torch="2.13.0", profile="full", seq_len=2048,
               vocab_size=8192, train_tokens=3_900_000_000, eval_tokens=20 * 2**19, peak_flops=989e12)
LAPTOP = Machine(accelerator="cpu", device="cpu", memory_mb=16384.0, cpu="Intel Core i7-1185G7",
                 cpu_threads="8", torch="2.13.0", profile="small", seq_len=256, vocab_size=4096,
                 train_tokens=1_200_000, eval_tokens=2**15, no_peak_reason=prompts.NO_PEAK_NOT_GPU)


# ---- the machine, in the cached prefix ---------------------------------------------------------------------
def test_the_machine_says_device_memory_data_and_the_mfu_peak():
    gpu = render_machine(H100)
    assert gpu.splitlines() == [
        prompts.MACHINE_HEAD,
        "Trials train on one NVIDIA H100 80GB HBM3 GPU, 80 GB of memory (CUDA, torch 2.13.0); "
        "CPU: Intel Xeon Platinum.",
        "Data (full profile): sequence length 2048 tokens, vocabulary 8,192 tokens, 3.9B training tokens; "
        "val_bpb is measured on 10.5M held-out tokens.",
        "MFU % = achieved FLOP/s over 989 TFLOP/s, the harness's dense bf16 peak for NVIDIA H100 80GB HBM3.",
    ]
    cpu = render_machine(LAPTOP)
    assert "Trials train on the CPU, no GPU: Intel Core i7-1185G7, 8 threads usable, 16 GB of RAM" in cpu
    assert "MFU is not measured here (the trainer computes MFU only on CUDA and ROCm GPUs)" in cpu
    why = prompts.NO_PEAK_UNKNOWN_GPU.format(device="NVIDIA RTX A2000")
    unknown_card = Machine(**{**H100.__dict__, "device": "NVIDIA RTX A2000", "peak_flops": None,
                              "no_peak_reason": why})
    assert "the harness's table has no peak FLOP/s for NVIDIA RTX A2000" in render_machine(unknown_card)
    no_manifest = Machine(**{**LAPTOP.__dict__, "seq_len": None, "vocab_size": None})
    assert prompts.MACHINE_NO_DATA in render_machine(no_manifest)


def test_the_machine_ends_the_cached_prefix_and_stays_out_of_the_state():
    prompt = build_prompt(context(machine=H100))
    assert prompt.program_block.endswith(render_machine(H100))
    assert prompt.program_block.index("Lower val_bpb.") < prompt.program_block.index(prompts.MACHINE_HEAD)
    assert prompts.MACHINE_HEAD not in prompt.state and "data profile" not in prompt.state
    assert prompt.sections()["machine"] == render_machine(H100)
    # The same run's next turn (another state) has a byte-identical prefix.
    later = build_prompt(context(machine=H100, trials_done=7, noise_floor=0.004))
    assert later.program_block == prompt.program_block and later.state != prompt.state
    assert build_prompt(context()).program_block.endswith("Lower val_bpb.")  # no machine known: nothing added


def test_the_peak_is_read_from_the_harness_as_the_trainer_reads_it():
    from trainer import prepare

    table = peak_table((REPO / "trainer/prepare.py").read_text())
    assert len(table) == len(prepare.PEAK_BF16_FLOPS) and table[0] == ("gh200", 989e12)
    names = ["NVIDIA H100 80GB HBM3", "NVIDIA H100 PCIe", "NVIDIA H200 NVL", "NVIDIA A100-SXM4-40GB",
             "NVIDIA GeForce RTX 4090", "NVIDIA A10G", "NVIDIA L40S", "AMD Instinct MI300X",
             "NVIDIA RTX A2000", "cpu"]
    assert [peak_flops(table, n) for n in names] == [prepare.peak_flops(n) for n in names]
    assert peak_table("PEAK_BF16_FLOPS = make_table()\n") == () and peak_table("def broken(:\n") == ()
    assert trial_accelerator("cpu", "cuda") == "cpu" and trial_accelerator("auto", "rocm") == "rocm"
    assert trial_accelerator("cuda", "rocm") == "rocm" and trial_accelerator("mps", "cpu") == "mps"


# ---- the run header: the seeds behind the floor, the step size ---------------------------------------------
def test_the_header_shows_each_seed_with_its_steps_and_says_when_throughput_made_the_spread():
    noise = NoiseView(seeds=(SeedRun(2000, 1.2011, 14), SeedRun(2001, 1.2093, 8)), sd=0.0058, factor=2.0,
                      budget_s=300.0, commit="abc1234def", trial_id=3)
    state = render_state(context(noise=noise, noise_floor=0.0116, step_sizes=[
        StepSize(3, 4096, prompts.STEP_ROLE_KEEP), StepSize(5, 8192, prompts.STEP_ROLE_LAST)]))
    header = state.split("\n\n")[0]
    assert ("The floor comes from 2 seeds of trial 3's code at 300 s: seed 2000 val_bpb 1.201100 in 14 "
            "steps, seed 2001 val_bpb 1.209300 in 8 steps; floor = 2 x sd 0.005800.") in header
    assert "The seeds ran 8 to 14 steps: throughput differed between identical runs" in header
    assert ("Tokens per optimizer step: 4,096 in trial 3 (the last keep); 8,192 in trial 5 (the last trial)."
            in header)
    steady = NoiseView(seeds=(SeedRun(None, 1.2, None), SeedRun(None, 1.21, None)), sd=0.007, factor=2.0,
                       budget_s=60.0, commit="abc1234def", trial_id=None)
    header = render_state(context(noise=steady)).split("\n\n")[0]
    assert "2 seeds of the code of commit abc1234 at 60 s: val_bpb 1.200000, val_bpb 1.210000;" in header
    assert "throughput differed" not in header


def test_seed_steps_come_from_the_progress_of_the_same_measurement(tmp_path):
    record = NoiseRecord(id=1, created=0.0, commit_sha="c0ffee", budget_s=5.0, platform="cpu",
                         values=(1.5, 1.52), sd=0.014, factor=2.0)
    progress = tmp_path / "progress.json"
    seeds = [{"index": 1, "seed": 2000, "status": "ok", "val_bpb": 1.5, "num_steps": 14},
             {"index": 2, "seed": 2001, "status": "crash", "val_bpb": None, "num_steps": None},
             {"index": 3, "seed": 2002, "status": "ok", "val_bpb": 1.52, "num_steps": 8}]
    progress.write_text(json.dumps({"commit": "c0ffee", "seeds": seeds}))
    view = noise_view(record, [], progress)
    assert view.seeds == (SeedRun(2000, 1.5, 14), SeedRun(2002, 1.52, 8)) and view.trial_id is None
    progress.write_text(json.dumps({"commit": "another", "seeds": seeds}))  # a later measurement's progress
    assert noise_view(record, [], progress).seeds == (SeedRun(None, 1.5, None), SeedRun(None, 1.52, None))
    progress.write_text("{not json")
    assert noise_view(record, [], progress).seeds[0].num_steps is None
    assert noise_view(None, [], progress) is None


def test_tokens_per_step_from_the_summary():
    assert trial_view.tokens_per_step({"num_steps": "14", "total_tokens": "57344"}) == 4096
    # total_tokens_M has 3 decimals: 0.057 / 14 is 4,071, and 4,096 (16 sequences of 256) is within the error.
    assert trial_view.tokens_per_step({"num_steps": "14", "total_tokens_M": "0.057"}, seq_len=256) == 4096
    assert trial_view.tokens_per_step({"num_steps": "14", "total_tokens_M": "0.057"}) == 4071
    assert trial_view.tokens_per_step({"num_steps": "1000", "total_tokens_M": "524.288"}, 2048) == 524288
    assert trial_view.tokens_per_step({"num_steps": "unknown", "total_tokens_M": "1.0"}) is None
    assert trial_view.tokens_per_step({}) is None


# ---- inspect_trial's parts on their own --------------------------------------------------------------------
def test_a_log_is_read_from_its_end_escaped_and_bounded(tmp_path):
    paths = RunPaths(tmp_path)
    folder = paths.trial_dir(7)
    folder.mkdir(parents=True)
    lines = [f"line {i}: loss {5 - i / 1000:.3f}" for i in range(20_000)]
    lines.append("\x1b[31mFAIL: loss is nan\x1b[0m")  # a terminal escape the trial printed
    (folder / trial_view.TRIAL_LOG_NAME).write_text("\n".join(lines) + "\n")
    text = trial_view.log_text(paths, 7, 5)
    assert text.splitlines()[0].startswith("The last 5 lines of trial 7's log (")
    assert text.splitlines()[-1] == "\\x1b[31mFAIL: loss is nan\\x1b[0m" and "line 19999:" in text
    many = trial_view.log_text(paths, 7, trial_view.LOG_LINES_MAX)
    assert len(many) <= trial_view.LOG_MAX_CHARS + 300 and "earlier lines left out" in many
    (folder / trial_view.TRIAL_LOG_NAME).write_text("x" * 1000 + "\n")
    assert len(trial_view.log_text(paths, 7).splitlines()[-1]) == trial_view.LOG_LINE_CHARS + 3
    assert "no log file was kept" in trial_view.log_text(paths, 8)


def test_timing_splits_the_trainer_time_and_the_supervisor_time():
    from supervisor.core.types import Trial, TrialKind, TrialStatus

    def trial(tid: int, compile_s: str, wall: float) -> Trial:
        summary = {"total_seconds": "340.0", "compile_seconds": compile_s, "training_seconds": "300.0",
                   "handover_seconds": "2.0", "supervisor.handover_seconds": "341.5",
                   "supervisor.evaluation_seconds": "9.5", "device": "cuda", "compiled": "true",
                   "num_steps": "900"}
        return Trial(id=tid, kind=TrialKind.TRIAL, commit_sha="c", parent_commit=None, parent_trial=None,
                     description="d", category=None, plan_id=None, status=TrialStatus.KEEP, val_bpb=1.0,
                     extra_values=(), parent_val_bpb=None, delta=None, flagged=False, decision="",
                     crash_reason=None,
                     diff="", log_tail="", summary=summary, budget_s=300.0, platform={}, seed=42, started=0.0,
                     finished=1.0, wall_seconds=wall, training_seconds=300.0, num_steps=900, tokens_per_s=1e6,
                     mfu_percent=40.0, peak_vram_mb=1.0, num_params_m=1.0)

    split = trial_view.time_split(trial(2, "30.0", 343.0))
    assert split == {"startup": 8.0, "compile": 30.0, "training": 300.0, "export": 2.0, "handover": 341.5,
                     "after": 1.5, "wall": 343.0, "evaluation": 9.5, "whole": 352.5}
    text = trial_view.timing_text(trial(2, "30.0", 343.0), trial(1, "12.0", 340.0),
                                  "its parent, trial 1 (keep)")
    row = next(line for line in text.splitlines() if line.startswith("warm-up / compile"))
    assert row.split()[-3:] == ["30.0", "12.0", "+18.0"]
    assert "trial 2: device cuda, compiled true, 900 steps, 1,000,000 tokens/s" in text


# ---- end to end: a model calls inspect_trial after a real trial, through each SDK --------------------------
def inspect_script() -> list[Reply]:
    return [
        Reply("Baseline first.", [ToolUse("run_trial", {"description": "baseline"})]),
        Reply("Recording.", [ToolUse("write_journal", journal(1)["input"])]),
        Reply("Train for more steps.", [
            ToolUse("edit_file", {"path": "trainer/train.py", "search": "STEPS = 10",
                                  "replace": "STEPS = 16"}),
            ToolUse("run_trial", {"description": "sixteen steps instead of ten"}),
        ]),
        Reply("Looking inside before I write it up.", [
            ToolUse("inspect_trial", {"trial_id": 2, "part": "curve"}),
            ToolUse("inspect_trial", {"trial_id": 2, "part": "timing"}),
            ToolUse("inspect_trial", {"trial_id": 2, "part": "log", "lines": 4}),
            ToolUse("inspect_trial", {"trial_id": 9, "part": "curve"}),
        ]),
        Reply("Recording.", [ToolUse("write_journal", journal(2)["input"])]),
    ]


def tool_results(provider: str, body: dict) -> list[str]:
    """The previous reply's tool results as this request carries them: text (Anthropic), tool messages
    (OpenAI)."""
    if provider == "anthropic":
        return [body["messages"][0]["content"][1]["text"]]  # "## Your previous reply", every result in it
    return [m["content"] for m in body["messages"] if m["role"] == "tool"]


@pytest.mark.parametrize("provider", PROVIDERS)
def test_a_model_looks_inside_a_trial_through_the_sdk(tmp_path, monkeypatch, provider):
    monkeypatch.setenv(KEY_VARIABLES[provider], SECRET)
    cache = tmp_path / "cache"
    cache.mkdir()
    manifest = {"profile": "small", "max_seq_len": 256, "vocab_size": 4096, "eval_tokens": 32768,
                "num_train_tokens": 1_000_000}
    (cache / "manifest.json").write_text(json.dumps(manifest))
    with LLMServer(inspect_script(), api_key=SECRET) as server:
        config = fake_config(tmp_path, max_trials=2, reflect_every=10, noise_repeats=2, agent=provider,
                             cache_dir=cache)
        assert Supervisor(config, llm_agent(provider, server)).run() == "finished"
        bodies = [r.body for r in server.requests_to(provider)]
    assert len(bodies) == 5
    results = "\n".join(json.dumps(b) for b in bodies)
    ledger = Ledger(config.run_dir / "ledger.sqlite")
    assert [t.num_steps for t in ledger.finished_trials()] == [10, 16]
    assert len(ledger.journal_entries()) == 2

    # The machine and the data are in the cached prefix of every request, the same each time.
    prefix = [b["system"][1]["text"] if provider == "anthropic" else b["messages"][0]["content"]
              for b in bodies]
    assert len(set(prefix)) == 1 and prompts.MACHINE_HEAD in prefix[0]
    assert "sequence length 256 tokens, vocabulary 4,096 tokens, 1M training tokens" in prefix[0]
    # The run header names both noise seeds with their steps (the stand-in trains 10 steps whatever the seed).
    first, second = ledger.noise_records()[0].values
    assert f"seed 2000 val_bpb {first:.6f} in 10 steps, seed 2001 val_bpb {second:.6f} in 10 steps" in results

    # The reply that inspected trial 2 during its journal gate got the curve, the time split and the log.
    text = "\n".join(tool_results(provider, bodies[4]))
    curve = text.split(prompts.CURVE_AT_STEPS)[1]
    rows = [line.split() for line in curve.splitlines() if re.match(r"\d+ +\d+\.\d{4} ", line)]
    assert [int(r[0]) for r in rows] == list(range(16))
    for step, loss, parent_loss, *rest in rows:
        if int(step) <= 9:  # the stand-in's loss depends on the step only: the same at matched steps
            assert loss == parent_loss and rest[0] == "+0.0000"
        else:
            assert parent_loss == prompts.CURVE_ENDED
    assert "Training loss of trial 2 (discard: sixteen steps" in text
    assert "against its parent, trial 1 (keep)" in text
    timing = next(line for line in text.splitlines() if line.startswith("evaluation of the handed-over"))
    assert len(timing.split()) == len("evaluation of the handed-over model [supervisor]".split()) + 3
    assert "The last 4 lines of trial 2's log" in text and "device: cpu" in text
    assert "there is no trial 9; this run's trials are 1-2" in text
    assert "refused" not in text.lower()  # inspect_trial passed the journal gate


def test_an_unknown_trial_is_an_error_and_a_missing_part_is_named(tmp_path):
    ledger = Ledger(tmp_path / "ledger.sqlite", create=True)
    ledger.init_run("t", "{}")
    ok, text = trial_view.inspect_trial(ledger, RunPaths(tmp_path), 1, "curve")
    assert not ok and text == "error: there is no trial 1: no trial has run yet"
    assert trial_view.id_ranges([1, 2, 3, 5, 7, 8]) == "1-3, 5, 7-8"
    from supervisor.run.tools import validate_input

    problem = validate_input("inspect_trial", {"trial_id": 1})
    assert problem is not None and "missing required field(s): part" in problem
    assert validate_input("inspect_trial", {"trial_id": 1, "part": "log", "lines": 200}) is None
    assert "from 1 to 200" in validate_input("inspect_trial", {"trial_id": 1, "part": "log", "lines": 201})
    ledger.close()


def test_a_baseline_curve_stands_alone_and_against_compares_with_any_trial(tmp_path):
    ledger = Ledger(tmp_path / "ledger.sqlite", create=True)
    ledger.init_run("t", "{}")
    ids = []
    for n, parent in ((1, None), (2, 1), (3, 1)):
        tid = ledger.start_trial(commit_sha=f"c{n}", parent_commit=None, parent_trial=parent,
                                 description=f"idea {n}", category=None, plan_id=None, diff="", budget_s=5.0,
                                 platform={}, seed=42)
        rows = [{"step": s, "elapsed": s / 10, "loss": 4.0 - n / 10 - s / 100} for s in range(1, 41)]
        ledger.add_metrics(tid, 0, rows)
        ledger.finish_trial(tid, status="discard", val_bpb=1.5, summary={"num_steps": "40"})
        ids.append(tid)
    ok, text = trial_view.inspect_trial(ledger, RunPaths(tmp_path), ids[0], "curve")
    assert ok and "against nothing: trial 1 has no parent to compare with (a baseline)" in text
    rows = [line for line in text.splitlines() if re.match(r"\d+ +\d\.\d{4} ", line)]
    assert len(rows) == trial_view.CURVE_POINTS
    ok, text = trial_view.inspect_trial(ledger, RunPaths(tmp_path), ids[2], "curve", against=ids[1])
    assert ok and "against trial 2 (discard)" in text
    assert "40      3.3000     3.4000     -0.1000" in text
    assert "Matched tokens: not shown, the tokens per step of trial 3 are unknown" in text
    ok, text = trial_view.inspect_trial(ledger, RunPaths(tmp_path), ids[2], "timing")
    assert ok and text == prompts.TIMING_NONE.format(trial_id=3)  # no summary timings, no wall clock
    ledger.close()
