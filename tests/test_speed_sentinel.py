"""The speed sentinel (issue 16): the machine is read around every run, compared with the floor's machine and the
parent's throughput, and a drift is named in the decision and the journal; the policy flags it or runs it again.

The rules are pure and tested on constructed readings; the loop is tested with real runs of the stand-in trainer on
a simulated machine (tests/machine_support.py); the real reader is tested for what does not depend on load."""

from __future__ import annotations

import subprocess
import sys

import pytest

from supervisor.core import events as ev
from supervisor.run.sentinel import (
    CPU_DRIFT_SHARE,
    THROUGHPUT_DRIFT,
    MachineLoad,
    MachineSample,
    compute_neutral,
    drift_reasons,
    floor_load,
    load_between,
    sample_machine,
)
from supervisor.store.ledger import Ledger
from tests.loop_support import edit, journal, reflection, trial
from tests.machine_support import SimulatedMachine, supervised_on

SCRIPT = '''\
PROFILE = "small"
DEPTH = {"full": 8, "small": 4}[PROFILE]  # layers
MATRIX_LR = 0.04  # Muon learning rate
UNEMBEDDING_LR = {"full": 0.004, "small": 0.02}[PROFILE]
ADAM_BETAS = (0.8, 0.95)
WARMDOWN_FRACTION = 0.5
WEIGHT_DECAY = 0.0
SEED = 42


def lr_at(progress):
    return MATRIX_LR * (1 - progress)
'''


# ---- which changes cannot alter the compute -----------------------------------------------------------------------
@pytest.mark.parametrize("old, new", [
    ("MATRIX_LR = 0.04  # Muon learning rate", "MATRIX_LR = 0.08  # twice the rate"),
    ("MATRIX_LR = 0.04", "MATRIX_LR = 2 * 0.04"),
    ('UNEMBEDDING_LR = {"full": 0.004, "small": 0.02}', 'UNEMBEDDING_LR = {"full": 0.008, "small": 0.03}'),
    ("ADAM_BETAS = (0.8, 0.95)", "ADAM_BETAS = (0.9, 0.99)"),
    ("WARMDOWN_FRACTION = 0.5", "WARMDOWN_FRACTION = 0.3"),
    ("WEIGHT_DECAY = 0.0", "WEIGHT_DECAY = 0.1"),
    ("SEED = 42", "SEED = -7"),
    ("# layers", "# how many blocks"),
])
def test_optimiser_and_schedule_numbers_are_compute_neutral(old, new):
    assert compute_neutral(SCRIPT, SCRIPT.replace(old, new))


@pytest.mark.parametrize("old, new", [
    ('DEPTH = {"full": 8, "small": 4}', 'DEPTH = {"full": 8, "small": 6}'),  # more layers: more work
    ("MATRIX_LR = 0.04", "MATRIX_LR = float(open('lr').read())"),  # not a number written out
    ("MATRIX_LR = 0.04", "MATRIX_LR = True"),
    ("WEIGHT_DECAY = 0.0", "WEIGHT_DECAY = 0.0\nEXTRA = 1"),  # a new line
    ("return MATRIX_LR * (1 - progress)", "return MATRIX_LR * (1 - progress) ** 2"),  # code, not a constant
    ("SEED = 42", "SEED = 42 +"),  # does not parse
])
def test_anything_else_is_not_compute_neutral(old, new):
    assert not compute_neutral(SCRIPT, SCRIPT.replace(old, new))


def test_the_unchanged_script_is_compute_neutral():
    assert compute_neutral(SCRIPT, SCRIPT) and compute_neutral("x = (", "x = (")


# ---- readings and the drift rules ----------------------------------------------------------------------------------
def _sample(at, busy, own, gpu=None, cpus=4):
    return MachineSample(at=at, busy_cpu_s=busy, own_cpu_s=own, cpus=cpus, gpu_others=gpu)


def test_load_between_takes_the_supervisors_own_cpu_time_out():
    # 10 s on 4 CPUs: 30 CPU-seconds busy, 10 of them the supervisor's trial: others used half the machine.
    load = load_between(_sample(100.0, 500.0, 50.0, gpu=0), _sample(110.0, 530.0, 60.0, gpu=2))
    assert load.others_cpu_share == pytest.approx(0.5) and load.gpu_others == 2 and load.seconds == 10.0
    # Counters that cannot be read, or a clock that did not move, say nothing rather than guess.
    assert load_between(_sample(1.0, None, 0.0), _sample(2.0, 5.0, 0.0)).others_cpu_share is None
    assert load_between(_sample(1.0, 0.0, 0.0), _sample(1.0, 5.0, 0.0)).others_cpu_share is None
    # Shares are clamped to what a machine has (the counters tick at different moments).
    assert load_between(_sample(0.0, 0.0, 5.0), _sample(1.0, 1.0, 9.0)).others_cpu_share == 0.0
    assert load_between(_sample(0.0, 0.0, 0.0), _sample(1.0, 99.0, 0.0)).others_cpu_share == 1.0


def test_floor_load_and_its_stored_form():
    loads = [MachineLoad(0.1, 0, 5.0), MachineLoad(0.3, 1, 5.0), MachineLoad(None, None, 5.0)]
    floor = floor_load(loads)
    assert floor == MachineLoad(pytest.approx(0.2), 1, 15.0)
    assert MachineLoad.from_json(floor.as_json()) == floor
    assert floor_load([]) is None
    for junk in (None, [], {"others_cpu_share": "a lot"}, {"gpu_others": True}, {"seconds": "x"}):
        assert MachineLoad.from_json(junk) is None


def test_drift_rules():
    quiet = MachineLoad(0.05, 0, 60.0)
    assert drift_reasons(MachineLoad(0.05 + CPU_DRIFT_SHARE, 0, 60.0), quiet) == []  # at the margin: not yet
    [cpu] = drift_reasons(MachineLoad(0.8, 0, 60.0), quiet)
    assert cpu == "other processes used 80% of the CPUs during the run, 5% while the noise floor was measured"
    [gpu] = drift_reasons(MachineLoad(0.05, 1, 60.0), quiet)
    assert gpu == "1 other process(es) were on the GPU, 0 while the noise floor was measured"
    # Without a floor reading there is nothing to compare the load with.
    assert drift_reasons(MachineLoad(0.9, 3, 60.0), None) == []
    # Throughput: only on a change that cannot alter the compute, and only beyond the margin.
    slow = 1000.0 * (1 - THROUGHPUT_DRIFT) - 1
    [tokens] = drift_reasons(None, None, tokens_per_s=slow, parent_tokens_per_s=1000.0, compute_neutral=True)
    assert tokens.startswith("tokens/s 849 is 15% below the parent's 1,000 on a change that cannot alter")
    assert drift_reasons(None, None, tokens_per_s=slow, parent_tokens_per_s=1000.0, compute_neutral=False) == []
    assert drift_reasons(None, None, tokens_per_s=900.0, parent_tokens_per_s=1000.0, compute_neutral=True) == []
    assert drift_reasons(None, None, tokens_per_s=None, parent_tokens_per_s=1000.0, compute_neutral=True) == []


def test_the_real_reader_counts_its_own_children_as_its_own():
    """A child that burns CPU and is reaped is the supervisor's own time, not another process's: measured in CPU
    seconds (which load does not change), never in wall time."""
    before = sample_machine()
    burn = "import time\nwhile time.process_time() < 0.3: pass\nprint(time.process_time())"
    used = float(subprocess.run([sys.executable, "-c", burn], capture_output=True, text=True, check=True).stdout)
    after = sample_machine()
    assert before.cpus >= 1 and before.busy_cpu_s is not None and before.own_cpu_s is not None
    assert after.own_cpu_s - before.own_cpu_s >= used * 0.9
    load = load_between(before, after)
    assert 0.0 <= load.others_cpu_share <= 1.0 and load.seconds > 0
    assert before.gpu_others is None or before.gpu_others >= 0


# ---- in the loop ---------------------------------------------------------------------------------------------------

def _change_agent(machine, change, load_change=None):
    """A baseline on a quiet machine, then one change, run while ``load_change`` sets the machine."""

    def agent(ctx, n):
        if ctx.obligation == "journal":
            return [journal(n)]
        if ctx.obligation == "reflection":
            return [reflection(n)]
        if ctx.trials_done == 0:
            return [trial("baseline")]
        if ctx.trials_done == 1:
            if load_change:
                load_change(machine)
            return [change, trial("the change")]
        return None

    return agent


def test_a_slower_run_of_a_learning_rate_change_is_flagged_and_named(tmp_path):
    machine = SimulatedMachine()
    agent = _change_agent(machine, edit("LR = 0.02", "LR = 0.04"), lambda m: m.set(0.0, 2.0))
    sup, config, recorder = supervised_on(machine, tmp_path, agent)
    sup.run()
    ledger = Ledger(config.run_dir / "ledger.sqlite")
    changed = ledger.trial(2)
    drift = ("THE MACHINE DRIFTED during this run (tokens/s 16,000 is 50% below the parent's 32,000 on a change "
             "that cannot alter the compute): flagged")
    assert changed.flagged and drift in changed.decision and machine.runs == [1.0, 2.0]
    assert drift in ledger.journal_for(2).result
    assert changed.summary["supervisor.compute_neutral"] == "true" and "50% below" in changed.summary["supervisor.drift"]
    assert any("trial 2: the machine drifted" in e.data["message"] and e.data["message"].endswith(": flagged")
               for e in recorder.kinds(ev.NOTICE))


def test_a_change_that_alters_the_compute_may_be_slower_without_a_drift(tmp_path):
    machine = SimulatedMachine()
    sup, config, _ = supervised_on(machine, tmp_path, _change_agent(machine, edit("WIDTH = 32", "WIDTH = 16")))
    sup.run()
    ledger = Ledger(config.run_dir / "ledger.sqlite")
    narrower = ledger.trial(2)
    assert narrower.tokens_per_s == 16000 and ledger.trial(1).tokens_per_s == 32000
    assert not narrower.flagged and "DRIFTED" not in narrower.decision
    assert narrower.summary["supervisor.compute_neutral"] == "false" and "supervisor.drift" not in narrower.summary


def test_the_confirm_policy_runs_a_drifted_trial_again_and_the_quiet_run_decides(tmp_path):
    machine = SimulatedMachine()
    # The change runs first on a loaded machine (3x slower), then, run again, on a quiet one.
    agent = _change_agent(machine, edit("LR = 0.02", "LR = 0.04"),
                          lambda m: m.plan.extend([(0.9, 3.0), (0.0, 1.0)]))
    sup, config, recorder = supervised_on(machine, tmp_path, agent, policy="confirm")
    sup.run()
    ledger = Ledger(config.run_dir / "ledger.sqlite")
    changed = ledger.trial(2)
    assert machine.runs == [1.0, 3.0, 1.0]
    assert changed.decision.startswith("the first run drifted (tokens/s 10,667 is 67% below the parent's 32,000 on "
                                       "a change that cannot alter the compute), so it was run again with the same "
                                       "seed (its val_bpb ")
    assert changed.status == "keep" and not changed.flagged and changed.seed == 42
    assert changed.val_bpb == pytest.approx(1.52) and changed.num_steps == 10 and changed.tokens_per_s == 32000
    assert changed.summary["supervisor.drifted_first_run"].startswith("val_bpb ")
    assert "steps 3, tokens/s 10,667" in changed.summary["supervisor.drifted_first_run"]
    assert (config.run_dir / "trials" / "0002" / "drift-rerun" / "log.txt").exists()
    assert "so it was run again with the same seed" in ledger.journal_for(2).result
    assert any("running it again with the same seed" in e.data["message"] for e in recorder.kinds(ev.NOTICE))


def test_a_busier_machine_than_the_floors_is_named_before_the_number_is_believed(tmp_path):
    """CPU load and other processes on the GPU are compared with what the floor's seeds ran beside."""
    machine = SimulatedMachine()
    machine.gpu_others = 0
    state = {}

    def agent(ctx, n):
        if ctx.obligation == "journal":
            return [journal(n)]
        if ctx.obligation == "reflection":
            return [reflection(n)]
        if ctx.trials_done == 0:
            return [trial("baseline")]
        if ctx.trials_done == 1:
            if "noise" not in state:
                state["noise"] = state["sup"].measure_noise(2)  # on the quiet machine
                return [reflection(n)]
            machine.set(0.6, 1.0)  # busy CPUs, though this trainer's throughput does not show it
            machine.gpu_others = 1  # and a notebook on the GPU
            return [edit("WIDTH = 32", "WIDTH = 40"), trial("wider")]
        return None

    sup, config, _ = supervised_on(machine, tmp_path, agent)
    state["sup"] = sup
    sup.run()
    ledger = Ledger(config.run_dir / "ledger.sqlite")
    wider = ledger.trial(2)
    assert ("THE MACHINE DRIFTED during this run (other processes used 60% of the CPUs during the run, 0% while "
            "the noise floor was measured; 1 other process(es) were on the GPU, 0 while the noise floor was "
            "measured)") in wider.decision
    assert wider.flagged and wider.summary["supervisor.gpu_others"] == "1"
