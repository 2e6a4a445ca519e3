"""An honest floor (issue 16): unchanged re-runs are samples, pooled with their parent and into the floor; a floor
whose seeds ran very different step counts says it measured the machine. Real runs of the stand-in trainer, on a
simulated machine (tests/machine_support.py) whose load the test sets."""

from __future__ import annotations

import json
import math
import statistics

import pytest

from supervisor.agents.base import AgentTurn
from supervisor.core import events as ev
from supervisor.core.policy import STEP_SPREAD_LIMIT, NoiseEstimate, NoiseMeasurement, pooled_sd, uneven_steps
from supervisor.run.status import run_status
from supervisor.store.ledger import Ledger
from tests.loop_support import edit, journal, reflection, trial
from tests.machine_support import SimulatedMachine, supervised_on

UNEVEN = ("the seeds ran 6 and 10 steps (more than 1.2x apart): the floor measures machine speed, not only the "
          "seed")


# ---- the statistics, by hand ----------------------------------------------------------------------------------
def test_pooled_sd_is_the_squared_deviations_from_each_group_mean_over_n_minus_groups():
    a, b = [1.0, 1.2, 1.4], [2.0, 2.3]
    squares = sum((x - statistics.fmean(a)) ** 2 for x in a) + sum((x - statistics.fmean(b)) ** 2 for x in b)
    by_hand = math.sqrt(squares / (5 - 2))
    assert pooled_sd([(statistics.stdev(a), 3), (statistics.stdev(b), 2)]) == pytest.approx(by_hand)
    assert pooled_sd([(0.5, 1)]) is None  # one run has no spread to pool


def test_a_noise_estimate_pools_only_groups_of_two_or_more_into_a_measured_floor():
    seeds = (1.50, 1.52, 1.51)
    alone = NoiseEstimate(seeds, statistics.stdev(seeds))
    assert alone.sd == statistics.stdev(seeds) and alone.floor(2.0) == 2 * statistics.stdev(seeds)
    assert "over 3 seeds" in alone.describe() and "pooled" not in alone.describe()
    pooled = NoiseEstimate(seeds, statistics.stdev(seeds), groups=((1.60,), (1.55, 1.65)))
    expected = pooled_sd([(statistics.stdev(seeds), 3), (statistics.stdev([1.55, 1.65]), 2)])
    assert pooled.sd == pytest.approx(expected) and pooled.runs == 5 and len(pooled.pooled_groups) == 1
    assert "pooled sd" in pooled.describe() and "1 group of re-runs, 5 runs" in pooled.describe()
    # A floor given by the person (an sd, no seeds) has unknown degrees of freedom: used as given, never pooled.
    given = NoiseEstimate((), 0.004, groups=((1.0, 1.5),))
    assert given.sd == 0.004 and given.pooled_groups == []


def test_uneven_step_counts_flag_a_floor():
    assert uneven_steps([10, 12]) is None  # 1.2x apart is still a steady machine
    assert uneven_steps([10, 13]) is not None and f"more than {STEP_SPREAD_LIMIT:g}x apart" in uneven_steps([10, 13])
    assert uneven_steps([6, 10]) == UNEVEN
    assert "from 3 to 9 steps" in uneven_steps([3, 9, 5])
    assert uneven_steps([None, 10]) is None and uneven_steps([]) is None  # unknown counts say nothing
    text = NoiseMeasurement([1.5, 1.6], 300, "cpu", steps=[6, 10]).describe()
    assert text.endswith(f"; FLAGGED: {UNEVEN}")
    assert "FLAGGED" not in NoiseMeasurement([1.5, 1.6], 300, "cpu", steps=[10, 10]).describe()


# ---- real runs -------------------------------------------------------------------------------------------------

def _rerun_agent(state, before_rerun=lambda: None):
    """Baseline (with seed noise), a floor of 3 seeds, an unchanged re-run of the baseline, then one change."""

    def agent(ctx, n):
        if ctx.obligation == "journal":
            return [journal(n)]
        if ctx.obligation == "reflection":
            return [reflection(n)]
        if ctx.trials_done == 0:
            return [edit("NOISE_SD = 0.0", "NOISE_SD = 0.01"), trial("baseline with noise")]
        if ctx.trials_done == 1:
            if "noise" not in state:
                state["noise"] = state["sup"].measure_noise(3)
                return AgentTurn(text="measured the noise floor")
            before_rerun()
            return [trial("re-run the baseline unchanged")]
        if ctx.trials_done == 2:
            return [edit("LR = 0.02", "LR = 0.03"), trial("learning rate up a little")]
        return None

    return agent


def _tool_result(config, trial_number):
    lines = [json.loads(x) for x in (config.run_dir / "transcript.jsonl").read_text().splitlines()]
    results = [x["text"] for x in lines if x["role"] == "tool" and x["tool"] == "run_trial" and not x["refused"]]
    return results[trial_number - 1]


def test_an_unchanged_rerun_is_pooled_with_its_parent_and_into_the_floor(tmp_path):
    state, machine = {}, SimulatedMachine()
    sup, config, _ = supervised_on(machine, tmp_path, _rerun_agent(state))
    state["sup"] = sup
    sup.run()
    ledger = Ledger(config.run_dir / "ledger.sqlite")
    baseline, rerun, later = ledger.trial(1), ledger.trial(2), ledger.trial(3)
    noise = ledger.latest_noise()

    # The re-run is recorded as the trial the agent ran, with a seed of its own, and judged as a sample.
    assert rerun.diff == "" and rerun.status == "discard" and not rerun.flagged
    assert rerun.seed == 100_000 + 1000 * baseline.id + 1 and rerun.val_bpb != baseline.val_bpb
    assert rerun.decision.startswith(f"re-run of trial 1 (the same code, new seed {rerun.seed}): val_bpb")
    assert "pooled with its values (now the mean of 2 runs" in rerun.decision
    # It is a sample of the keep's code, pooled with it for the floor and shown with it; but a child is still judged
    # against the keep's own run (a trial knows its seed: a keep could do worse on purpose when re-run).
    assert baseline.extra_values == () and "still judged against trial 1's own runs" in rerun.decision
    assert later.parent_val_bpb == pytest.approx(baseline.val_bpb)
    # The floor is recomputed over the seeds and the group of identical code; pooling may only raise it.
    seeds_squares = noise.sd ** 2 * (len(noise.values) - 1)
    group_squares = (baseline.val_bpb - rerun.val_bpb) ** 2 / 2
    pooled = max(noise.sd, math.sqrt((seeds_squares + group_squares) / (len(noise.values) - 1 + 1)))
    status = run_status(ledger)
    assert status["noise"]["floor"] == pytest.approx(2 * pooled) and status["noise_floor"] == status["noise"]["floor"]
    assert status["noise"]["rerun_groups"] == 1 and status["noise"]["runs"] == len(noise.values) + 2
    assert status["noise"]["sd"] == noise.sd  # the seeds' own sd is still there, beside the pooled one
    assert "pooled sd" in status["noise"]["text"] and "1 group of re-runs" in status["noise"]["text"]
    assert f"and into the noise floor, now {2 * pooled:.4f} (was {2 * noise.sd:.4f})" in rerun.decision
    # Near or far, measured in floors of the floor the agent was shown.
    floors = abs(rerun.val_bpb - baseline.val_bpb) / (2 * noise.sd)
    assert f"{floors:.1f} floors" in rerun.decision
    assert ("landed" in rerun.decision) == (floors > 1)
    # The agent is told what the trial was; nothing drifted on a quiet machine.
    result = _tool_result(config, 2)
    assert "re-ran trial 1's code unchanged" in result and rerun.decision in result
    assert "DRIFTED" not in rerun.decision and machine.runs == [1.0] * 6


def test_on_a_loaded_cpu_an_unchanged_rerun_is_pooled_and_the_drift_is_named(tmp_path):
    state, machine = {}, SimulatedMachine()
    # Other processes take 90% of the CPUs, and the trainer runs 4x slower: fewer steps, a worse number.
    rerun_on_a_loaded_cpu = _rerun_agent(state, before_rerun=lambda: machine.set(0.9, 4.0))
    sup, config, recorder = supervised_on(machine, tmp_path, rerun_on_a_loaded_cpu)
    state["sup"] = sup
    sup.run()
    ledger = Ledger(config.run_dir / "ledger.sqlite")
    baseline, rerun = ledger.trial(1), ledger.trial(2)
    noise = ledger.latest_noise()

    assert status_groups(ledger) == 1  # pooled all the same: it is a sample of this machine
    floors = (rerun.val_bpb - baseline.val_bpb) / (2 * noise.sd)
    assert floors > 1
    landed = (f"it landed {floors:.1f} floors from trial 1's mean, so the floor may be too small or the machine "
              "drifted")
    drift = ("THE MACHINE DRIFTED during this run (other processes used 90% of the CPUs during the run, 0% while "
             "the noise floor was measured; tokens/s 8,000 is 75% below the parent's 32,000 on a change that "
             "cannot alter the compute)")
    assert landed in rerun.decision and drift in rerun.decision and rerun.flagged
    # Named in the tool result, the journal's result and the run's notices.
    assert landed in _tool_result(config, 2) and drift in _tool_result(config, 2)
    entry = ledger.journal_for(2)
    assert drift in entry.result and landed in entry.result
    assert any("trial 2: the machine drifted" in e.data["message"] for e in recorder.kinds(ev.NOTICE))
    assert rerun.summary["supervisor.others_cpu_share"] == "0.900" and rerun.summary["supervisor.rerun_of"] == "1"
    assert rerun.num_steps == 2 and baseline.num_steps == 10
    journal_md = (config.run_dir / "journal.md").read_text()
    assert "THE MACHINE DRIFTED" in journal_md


def test_a_floor_whose_seeds_ran_very_different_step_counts_is_flagged(tmp_path):
    machine = SimulatedMachine()
    sup, config, recorder = supervised_on(machine, tmp_path, lambda ctx, n: None)
    machine.plan = [(0.0, 1.0), (0.0, 1.0)]
    steady = sup.measure_noise(2)
    assert steady.steps == [10, 10] and steady.steps_warning is None and "FLAGGED" not in steady.describe()
    assert run_status(sup.ledger)["noise"]["flag"] is None

    machine.plan = [(0.0, 1.0), (0.0, 1.7)]  # the second seed ran on a slower machine: 6 steps, not 10
    uneven = sup.measure_noise(2)
    assert uneven.steps == [10, 6] and uneven.steps_warning == UNEVEN
    assert uneven.describe().endswith(f"; FLAGGED: {UNEVEN}")
    last = recorder.kinds(ev.NOISE)[-1].data
    assert last["flag"] == UNEVEN and last["steps"] == [10, 6]
    assert any(e.data["message"] == f"the noise floor is FLAGGED: {UNEVEN}" for e in recorder.kinds(ev.NOTICE))
    noise = run_status(sup.ledger)["noise"]
    assert noise["flag"] == UNEVEN and noise["steps"] == [10, 6] and noise["text"].endswith(f"FLAGGED: {UNEVEN}")
    assert noise["machine"]["others_cpu_share"] == 0.0
    progress = json.loads((config.run_dir / "noise" / "progress.json").read_text())
    assert [s["num_steps"] for s in progress["seeds"]] == [10, 6]
    sup.close()


def status_groups(ledger: Ledger) -> int:
    return run_status(ledger)["noise"]["rerun_groups"]


def test_pooling_never_lowers_the_floor_so_a_script_that_ignores_its_seed_gains_nothing():
    """Runs of one commit that agree to the digit (a script that pins its own seed) would halve a pooled floor."""
    seeds = (1.500, 1.507, 1.503)
    identical = tuple((1.40 + i / 100,) * 2 for i in range(6))
    estimate = NoiseEstimate(seeds, statistics.stdev(seeds), groups=identical)
    assert estimate.sd == statistics.stdev(seeds)
    wider = NoiseEstimate(seeds, statistics.stdev(seeds), groups=((1.40, 1.45),))
    assert wider.sd > statistics.stdev(seeds)  # a group that spreads more still raises it


def test_a_keep_that_sabotages_its_reruns_does_not_make_a_comment_look_like_a_gain(tmp_path):
    """The attack: the kept script trains worse whenever its seed says it is a re-run, so re-runs of it land
    high; then a child that changes nothing but a comment reproduces the keep's own number. Judged against the
    keep's own run, the child is no gain."""
    seed_line = 'seed = int(os.environ.get("AUTORESEARCH_SEED", "42"))'
    sabotage = (seed_line, seed_line + "\nif seed >= 100000:\n    LR = 0.5  # re-runs of this keep train badly on purpose")
    state = {}

    def agent(ctx, n):
        if ctx.obligation == "journal":
            return [journal(n)]
        if ctx.obligation == "reflection":
            return [reflection(n)]
        if ctx.trials_done == 0:
            return [edit("NOISE_SD = 0.0", "NOISE_SD = 0.002"), edit(*sabotage), trial("baseline")]
        if ctx.trials_done == 1 and "noise" not in state:
            state["noise"] = state["sup"].measure_noise(3)
            return AgentTurn(text="measured the noise floor")
        if 1 <= ctx.trials_done <= 3:
            return [trial(f"re-run the baseline unchanged ({ctx.trials_done})")]
        if ctx.trials_done == 4:
            return [edit("LR = 0.02  # learning rate", "LR = 0.02  # the learning rate"), trial("a comment")]
        return None

    sup, config, _ = supervised_on(SimulatedMachine(), tmp_path, agent)
    state["sup"] = sup
    sup.run()
    ledger = Ledger(config.run_dir / "ledger.sqlite")
    baseline, child = ledger.trial(1), ledger.trial(5)
    reruns = [ledger.trial(i) for i in (2, 3, 4)]
    assert all(r.val_bpb > baseline.val_bpb + 0.05 for r in reruns)  # the sabotage worked on the re-runs
    assert child.status != "keep", child.decision
    assert child.parent_val_bpb == pytest.approx(baseline.val_bpb)
