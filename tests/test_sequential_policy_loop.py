"""The sequential keep policy in a real supervised run: real git, the stand-in trainer, the real ledger.

The stand-in trainer is deterministic, so WIDTH 32 -> 33 gains the same 0.0017 on every seed. What decides is the
noise sd the run was given: the gain is under the floor (2 x sd) either way, so the policy re-runs it one seed at
a time, and keeps it as soon as the mean clears half a standard error, or discards it once the re-runs are spent.
"""

from __future__ import annotations

import math

import pytest

from supervisor.run.loop import Supervisor
from supervisor.store.ledger import Ledger
from tests.loop_support import CallbackAgent, edit, fake_config, journal, reflection, trial


def _agent(ctx, n):
    if ctx.obligation == "journal":
        return [journal(n)]
    if ctx.obligation == "reflection":
        return [reflection(n)]
    if ctx.trials_done == 0:
        return [trial("baseline")]
    if ctx.trials_done == 1:
        return [edit("WIDTH = 32", "WIDTH = 33"), trial("a sub-floor change")]
    return None


@pytest.mark.parametrize(("sd", "status", "reruns"), [
    # bar 0.5 x 0.002 x sqrt(1 + 1/2) = 0.0012 < 0.0017 on the second run: kept after one re-run
    (0.002, "keep", 1),
    # bar 0.5 x 0.007 x sqrt(1 + 1/3) = 0.0040 > 0.0017 even on three runs: both re-runs spent, discarded
    (0.007, "discard", 2),
])
def test_sequential_policy_re_runs_one_seed_at_a_time(tmp_path, sd, status, reruns):
    config = fake_config(tmp_path, policy="sequential", confirm_seeds=2)
    sup = Supervisor(config, CallbackAgent(_agent))
    sup.ledger.add_noise(commit_sha="0" * 40, budget_s=5.0, platform="test", values=[1.5, 1.5 + sd * math.sqrt(2)],
                         sd=sd, factor=2.0)
    sup.run()

    ledger = Ledger(config.run_dir / "ledger.sqlite")
    baseline, change = ledger.trial(1), ledger.trial(2)
    gain = baseline.val_bpb - change.val_bpb
    assert 0 < gain < 2 * sd  # a sub-floor gain, the case the policy re-runs
    assert change.status == status
    assert len(change.extra_values) == reruns and all(v == change.val_bpb for v in change.extra_values)
    # one folder per confirmation run, each with its own seed; no run beyond what the policy asked for
    assert (config.run_dir / f"trials/0002-seed{reruns}/log.txt").exists()
    assert not (config.run_dir / f"trials/0002-seed{reruns + 1}").exists()
    assert "sequential rule" in change.decision and "0.5 standard errors" in change.decision
    assert change.flagged == (status == "keep")  # a keep under the floor is flagged
    train_py = (config.workspace / "trainer/train.py").read_text()
    assert ("WIDTH = 33" in train_py) == (status == "keep")
