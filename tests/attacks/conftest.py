"""The attack runs that several modules share: one baseline each, then the modules' attacks as trials.

A run costs its baseline, its set-up and every trial on the CPU; attacks that need no run of their own (their
assertions read only their own trial) share one:

- ``model_run``: attacks on what the handed-over program computes (test_forged_numbers.py, test_checks.py);
- ``handover_run``: attacks on the tools, the hand-over file and the exchange folder (test_exchange.py,
  test_artifacts.py).

An attack that leaves the run damaged on purpose, or that may be kept (so that later trials would build on it),
comes last in its run. The other modules (test_records_and_budget.py, test_escape.py, test_unsandboxed.py)
make their own runs.
"""

from __future__ import annotations

import pytest

from tests.attacks.support import RunContext, baseline_steps, new_marker, planted_secrets, run_attack


@pytest.fixture(scope="session")
def model_run(prepared_cache, tmp_path_factory):
    from tests.attacks import test_checks, test_forged_numbers

    base = tmp_path_factory.mktemp("model")
    with planted_secrets() as key:
        ctx = RunContext(base, new_marker(), key, prepared_cache)
        steps = [*baseline_steps(), *test_forged_numbers.scaling_steps(ctx), *test_checks.check_steps(ctx),
                 *test_forged_numbers.recall_steps(ctx),
                 *test_forged_numbers.shift_steps(ctx)]
        return run_attack(base, prepared_cache, steps, key=key, marker=ctx.marker)


@pytest.fixture(scope="session")
def handover_run(prepared_cache, tmp_path_factory):
    from tests.attacks import test_artifacts, test_exchange

    base = tmp_path_factory.mktemp("handover")
    with planted_secrets() as key:
        ctx = RunContext(base, new_marker(), key, prepared_cache)
        steps = [*test_exchange.TOOL_ATTACKS, *baseline_steps(), *test_artifacts.handover_steps(ctx),
                 *test_exchange.exchange_steps(ctx), *test_artifacts.remount_steps(ctx)]
        result = run_attack(base, prepared_cache, steps, key=key, marker=ctx.marker)
    test_artifacts.after_run(result, ctx)
    return result
