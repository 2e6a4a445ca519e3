"""The keep-policy campaign simulator (benchmarks/keep_policies.py) on tiny configurations.

What these prove: every keep/discard/retest comes from supervisor.core.policy.KeepPolicy.decide (nothing is
re-implemented), the floor comes from NoiseMeasurement, the budget accounting is exact (the floor's repeats and the
confirmation re-runs count against it, a re-test cut short by the budget is discarded), and the ground truth is
scored right (no noise: no false keeps, no missed gains, the best possible result).
"""

from __future__ import annotations

import importlib.util
import json
import math
import statistics
import subprocess
import sys
from pathlib import Path

import pytest

from supervisor.core import policy as policy_module
from supervisor.core.policy import KeepPolicy, NoiseMeasurement, Verdict

ROOT = Path(__file__).resolve().parent.parent
SCRIPT = ROOT / "benchmarks" / "keep_policies.py"


def _load():
    spec = importlib.util.spec_from_file_location("keep_policies_bench", SCRIPT)
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up by name
    spec.loader.exec_module(module)
    return module


kp = _load()
SCENARIO = kp.Scenario()


def stream(campaign: int = 0, length: int = 60):
    return kp.ProposalStream.draw(7, campaign, SCENARIO, length)


def hand_stream(first: list[float], reruns: list[list[float]], floor: list[float], kinds=None):
    """A stream with chosen noise: every proposal a no-op unless kinds says otherwise."""
    n = len(first)
    return kp.ProposalStream(kinds=kinds or [kp.NEUTRAL] * n, units=[1.0] * n, first_noise=first,
                             rerun_noise=[r + [0.0] * (kp.MAX_RERUNS - len(r)) for r in reruns],
                             floor_noise=floor + [0.0] * (kp.MAX_NOISE_REPEATS - len(floor)), baseline_noise=0.0)


class Spy:
    """Wraps the real KeepPolicy.decide and records every call and its verdict."""

    def __init__(self, monkeypatch):
        self.calls: list[tuple[str, list[float], list[float], float | None, Verdict]] = []
        real = KeepPolicy.decide

        def decide(policy, parent, trial, sd):
            d = real(policy, parent, trial, sd)
            self.calls.append((policy.name, list(parent), list(trial), sd, d.verdict))
            return d

        monkeypatch.setattr(policy_module.KeepPolicy, "decide", decide)


def test_defaults_are_the_policy_modules_own():
    assert kp.Setup("confirm").keep_policy() == KeepPolicy("confirm")
    assert kp.Setup("flag").keep_policy() == KeepPolicy("flag")


@pytest.mark.parametrize("name", kp.POLICIES)
def test_every_decision_goes_through_keep_policy_decide(monkeypatch, name):
    spy = Spy(monkeypatch)
    setup = kp.Setup(name)
    r = kp.run_campaign(stream(), SCENARIO, setup, 0.002, 40)
    # the baseline, one call per proposal, and one more call after each re-test the budget let finish
    retest_calls = sum(c[4] is Verdict.RETEST for c in spy.calls)
    answered = sum(len(c[2]) > 1 for c in spy.calls)
    assert retest_calls - answered in (0, 1)  # only the last proposal can be cut short by the budget
    assert len(spy.calls) == 1 + r.proposals + answered
    assert all(c[0] == name for c in spy.calls)
    # confirm asks once per proposal; sequential may ask again after each of its re-runs
    assert r.retests == retest_calls if name != "sequential" else r.retests <= retest_calls
    if name in kp.RERUNNING:
        assert r.retests > 0 and r.reruns > 0
    if name == "greedy":
        assert all(c[3] is None for c in spy.calls)  # upstream never measures a floor
    else:
        sds = [c[3] for c in spy.calls]
        assert sds[0] is not None
        if name in kp.RERUNNING:  # confirmation runs pool into the sd, never below the seeds' (NoiseEstimate)
            assert min(sds) == sds[0] and len(set(sds)) > 1
        else:  # no re-runs, nothing to pool: the seeds' sd all night
            assert len(set(sds)) == 1
    # every re-test is answered with exactly the runs it asked for, of the same trial (or the budget ran out):
    # confirm_seeds for confirm, one at a time for sequential, never past the policy's max_runs
    wanted = 1 if name == "sequential" else setup.confirm_seeds
    for i, call in enumerate(spy.calls):
        if call[4] is Verdict.RETEST and i + 1 < len(spy.calls):
            nxt = spy.calls[i + 1]
            if len(nxt[2]) > 1:
                assert nxt[2][:len(call[2])] == call[2] and len(nxt[2]) == len(call[2]) + wanted
                assert len(nxt[2]) <= setup.keep_policy().max_runs
    assert r.keeps == sum(1 for c in spy.calls[1:] if c[4] is Verdict.KEEP)


def test_the_verdicts_are_the_policys_not_the_simulators(monkeypatch):
    """Swap the policy's decision for 'keep everything': the simulator must follow it blindly."""

    def keep_all(policy, parent, trial, sd):
        return policy_module.Decision(Verdict.KEEP, False, None, None, "kept by the test")

    monkeypatch.setattr(policy_module.KeepPolicy, "decide", keep_all)
    r = kp.run_campaign(stream(), SCENARIO, kp.Setup("strict"), 0.01, 30)
    assert r.keeps == r.proposals == 30 - 1 - kp.DEFAULT_NOISE_REPEATS


def test_the_floor_is_noise_measurements_sd_over_the_repeats():
    s = stream()
    sigma = 0.003
    r = kp.run_campaign(s, SCENARIO, kp.Setup("strict", floor_factor=2.5, noise_repeats=5), sigma, 30)
    values = [SCENARIO.start_bpb + sigma * z for z in s.floor_noise[:5]]
    assert r.floor == pytest.approx(2.5 * NoiseMeasurement(values, 300, "x").sd)
    assert r.floor == pytest.approx(2.5 * statistics.stdev(values))


@pytest.mark.parametrize("name", kp.POLICIES)
@pytest.mark.parametrize("budget", [8, 25, 60])
def test_budget_accounting(name, budget):
    setup = kp.Setup(name)
    for sigma in (0.0, 0.001, 0.01):
        r = kp.run_campaign(stream(3, budget), SCENARIO, setup, sigma, budget)
        floor_runs = 0 if name == "greedy" else kp.DEFAULT_NOISE_REPEATS
        assert r.noise_runs == floor_runs
        assert r.runs == budget == floor_runs + 1 + r.proposals + r.reruns
        if name not in kp.RERUNNING:
            assert r.reruns == 0 and r.retests == 0
        assert r.keeps <= r.proposals and r.false_keeps <= r.keeps
        assert r.gains_missed <= r.gains_seen


def test_confirm_re_runs_cost_proposals():
    greedy = kp.run_campaign(stream(1), SCENARIO, kp.Setup("greedy"), 0.002, 60)
    confirm = kp.run_campaign(stream(1), SCENARIO, kp.Setup("confirm"), 0.002, 60)
    assert confirm.reruns > 0
    assert confirm.proposals == greedy.proposals - kp.DEFAULT_NOISE_REPEATS - confirm.reruns


def test_confirm_by_hand():
    """sigma 0.001; floor repeats -1, 0, +1 sd -> sd 0.001, floor 0.002 (factor 2).

    The one proposal is a no-op whose first run lands 0.0005 under the parent: a sub-floor gain, so confirm
    re-tests it with 2 seeds; both re-runs land 0.001 under: mean gain 0.00083 > 0, kept and flagged. It is a
    false keep: its true effect is zero."""
    s = hand_stream(first=[-0.5], reruns=[[-1.0, -1.0]], floor=[-1.0, 0.0, 1.0])
    setup = kp.Setup("confirm", floor_factor=2.0, confirm_seeds=2, noise_repeats=3)
    r = kp.run_campaign(s, SCENARIO, setup, 0.001, 3 + 1 + 3)
    assert r.floor == pytest.approx(0.002)
    assert (r.proposals, r.retests, r.reruns, r.keeps, r.false_keeps, r.flagged, r.flagged_false) == (1, 1, 2, 1, 1, 1, 1)
    assert r.final_bpb == SCENARIO.start_bpb  # a no-op kept: the truth did not move
    assert r.believed_bpb == pytest.approx(1.0 - 0.001 * 2.5 / 3)  # but the campaign thinks it did


def test_confirm_cut_short_by_the_budget_is_discarded():
    s = hand_stream(first=[-0.5], reruns=[[-1.0, -1.0]], floor=[-1.0, 0.0, 1.0])
    r = kp.run_campaign(s, SCENARIO, kp.Setup("confirm"), 0.001, 3 + 1 + 2)  # room for one re-run of two
    assert (r.proposals, r.retests, r.reruns, r.keeps, r.runs) == (1, 1, 1, 0, 6)


def test_strict_and_greedy_by_hand():
    # a real gain of 0.003 x 1.0 (headroom all left) seen through +0.5 sd of noise: observed gain 0.0025
    s = hand_stream(first=[0.5], reruns=[[]], floor=[-1.0, 0.0, 1.0], kinds=[kp.GAIN])
    assert kp.run_campaign(s, SCENARIO, kp.Setup("strict", floor_factor=3.0), 0.001, 5).keeps == 0  # under 0.003
    strict = kp.run_campaign(s, SCENARIO, kp.Setup("strict", floor_factor=2.0), 0.001, 5)
    assert strict.keeps == 1 and strict.final_bpb == pytest.approx(1.0 - 0.003)
    greedy = kp.run_campaign(s, SCENARIO, kp.Setup("greedy"), 0.001, 2)
    assert greedy.keeps == 1 and greedy.gains_missed == 0


@pytest.mark.parametrize("name", kp.POLICIES)
def test_zero_noise_has_no_false_keeps_and_misses_nothing(name):
    for k in range(4):
        s = stream(k, 80)
        r = kp.run_campaign(s, SCENARIO, kp.Setup(name), 0.0, 80)
        assert r.false_keeps == 0 and r.gains_missed == 0 and r.reruns == 0 and r.flagged == 0
        assert r.floor in (None, 0.0)
        assert r.gains_seen > 0 and r.keeps == r.gains_seen
        # the same proposals judged perfectly; policies that paid for a floor saw fewer of them
        best = kp.best_possible(s, SCENARIO, 80)
        shorter = kp.best_possible(s, SCENARIO, 80 - r.noise_runs)
        assert r.final_bpb == shorter.final_bpb
        assert r.final_bpb >= best.final_bpb


def test_streams_are_shared_and_extend_without_reshuffling():
    short, long = stream(5, 30), stream(5, 90)
    assert long.kinds[:30] == short.kinds and long.units[:30] == short.units
    assert long.first_noise[:30] == short.first_noise and long.rerun_noise[:30] == short.rerun_noise
    assert long.floor_noise == short.floor_noise and long.baseline_noise == short.baseline_noise
    assert stream(6, 30).first_noise != short.first_noise


def test_gains_shrink_as_the_campaign_improves():
    assert SCENARIO.effect(kp.GAIN, 1.0, SCENARIO.start_bpb) == pytest.approx(-SCENARIO.gain_mean)
    halfway = SCENARIO.start_bpb - SCENARIO.headroom / 2
    assert SCENARIO.effect(kp.GAIN, 1.0, halfway) == pytest.approx(-SCENARIO.gain_mean / 2)
    assert SCENARIO.effect(kp.HARMFUL, 1.0, halfway) == pytest.approx(SCENARIO.harm_mean)
    assert SCENARIO.effect(kp.NEUTRAL, 3.0, halfway) == 0.0


def test_grid_summary_against_the_best_possible():
    rows = kp.run_grid(kp.main_setups(), [0.0, 0.005], [20], SCENARIO, campaigns=4, seed=1, jobs=1)
    by = {(r.policy, r.sigma): r for r in rows}
    assert by["greedy", 0.0].gap == 0.0 and by["greedy", 0.0].captured == pytest.approx(1.0)
    assert by["greedy", 0.0].false_keep_share == 0.0 and by["greedy", 0.0].overstatement == 0.0
    for r in rows:
        assert r.gap >= 0 or r.sigma > 0
        assert r.noise_share == (0.0 if r.policy == "greedy" else kp.DEFAULT_NOISE_REPEATS / 20)
        assert 0.0 <= r.false_keep_share <= 1.0 or r.keeps == 0
    assert by["confirm", 0.005].rerun_share > 0


def test_command_line_quick_run_is_deterministic_across_workers(tmp_path, capsys):
    args = ["--quick", "--campaigns", "3", "--no-sweep", "--budgets", "20,40"]
    assert kp.main([*args, "--jobs", "1", "--json", str(tmp_path / "one.json")]) == 0
    out = capsys.readouterr().out
    assert "| 0.001 | 20 | confirm |" in out and "| 0.005 | 40 | strict |" in out
    proc = subprocess.run([sys.executable, str(SCRIPT), *args, "--jobs", "2", "--json", str(tmp_path / "two.json")],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    one = json.loads((tmp_path / "one.json").read_text())["rows"]
    two = json.loads((tmp_path / "two.json").read_text())["rows"]
    assert one == two and len(one) == len(kp.POLICIES) * 2 * 2


def test_command_line_refuses_bad_input(capsys):
    for bad, message in ((["--budgets", "4"], "at least"), (["--noise", "abc"], "numbers"),
                         (["--campaigns", "1"], "at least 2"), (["--chart", "x.pdf"], ".png or .svg")):
        with pytest.raises(SystemExit) as err:
            kp.main(bad)
        assert err.value.code == 2
        assert message in capsys.readouterr().err


def test_chart(tmp_path):
    pytest.importorskip("matplotlib")
    rows = kp.run_grid(kp.main_setups() + [kp.Setup("confirm", 2.0, 1)], [0.001, 0.005], [20, 40], SCENARIO,
                       campaigns=2, seed=1, jobs=1)
    path = tmp_path / "chart.png"
    kp.make_chart([r for r in rows if r.label != "confirm (x2, 1 seed, R=3)"], rows, path, [20, 40],
                  [(20, 0.001), (40, 0.005)])
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and path.stat().st_size > 20_000


def test_sequential_by_hand():
    """sigma 0.001; floor repeats -1, 0, +1 sd -> sd 0.001, floor 0.002; one parent run, so the bar is
    0.5 x 0.001 x sqrt(1 + 1/n) on n runs: 0.00061 on two, 0.00058 on three.

    Proposal 1, a no-op: first run 0.0005 under the parent (sub-floor), re-run 0.0005 over: mean gain 0, discarded
    after one re-run (confirm would have paid for two). Proposal 2, a no-op: 0.0005 under, then 0.0005 under
    again: mean gain 0.0005 < 0.00061, so a third run; 0.001 under: mean 0.00067 >= 0.00058, kept and flagged."""
    s = hand_stream(first=[-0.5, -0.5], reruns=[[0.5, -5.0], [-0.5, -1.0, -5.0]], floor=[-1.0, 0.0, 1.0])
    r = kp.run_campaign(s, SCENARIO, kp.Setup("sequential"), 0.001, 3 + 1 + 2 + 3)
    assert (r.proposals, r.retests, r.reruns, r.keeps, r.false_keeps, r.flagged) == (2, 2, 3, 1, 1, 1)
    assert r.believed_bpb == pytest.approx(1.0 - 0.001 * 2 / 3)


def test_the_floor_pools_confirmation_runs_as_the_loop_does():
    """Pooling as NoiseEstimate does: squared deviations from each group's mean over N - groups, never lower than
    the seeds' sd. In a campaign (sigma 0.001, seeds -1, 0, +1: sd 0.001, floor 0.002): proposal 1 runs -0.5, then
    +3 and -1 when confirm re-tests it (mean worse than the parent: discarded), a group whose spread pools the sd
    up to sqrt((2 + 9.5) / 4) x 0.001 = 0.0017. Proposal 2's gain, 0.0025, is above the seeds' floor but under the
    pooled 0.0034, so confirm re-tests it, and the budget has no run left for that: discarded, not kept."""
    noise = kp._PooledNoise([1.0 + 0.001 * z for z in (-1.0, 0.0, 1.0)])
    assert noise.sd == pytest.approx(0.001)
    noise.add([1.0])  # one run is no group
    noise.add([1.0, 1.0])
    assert noise.sd == pytest.approx(0.001)  # identical runs never shrink it
    noise.add([1.002, 0.998])
    assert noise.sd == pytest.approx(math.sqrt((2 * 0.001 ** 2 + 0 + 0.004 ** 2 / 2) / 4))
    # the simulator's running sum is the loop's NoiseEstimate, group after group
    s = stream(2)
    for i in range(12):
        noise.add([1.0 + 0.002 * z for z in s.rerun_noise[i][: 1 + i % 4]])
        assert noise.sd == pytest.approx(noise.estimate().sd, rel=1e-12)

    s = hand_stream(first=[-0.5, -2.5], reruns=[[3.0, -1.0], []], floor=[-1.0, 0.0, 1.0])
    r = kp.run_campaign(s, SCENARIO, kp.Setup("confirm"), 0.001, 3 + 1 + 3 + 1)
    assert (r.proposals, r.retests, r.reruns, r.keeps) == (2, 2, 2, 0)
    strict = kp.run_campaign(s, SCENARIO, kp.Setup("strict"), 0.001, 3 + 1 + 1)  # no re-runs: the seeds' floor
    assert strict.keeps == 0 and strict.proposals == 1  # proposal 1 alone fits; its gain 0.0005 is sub-floor
    unpooled = kp.run_campaign(hand_stream(first=[-2.5], reruns=[[]], floor=[-1.0, 0.0, 1.0]), SCENARIO,
                               kp.Setup("confirm"), 0.001, 3 + 1 + 1)
    assert unpooled.keeps == 1  # the same gain against the seeds' floor alone is kept at once


@pytest.mark.parametrize("sigma", [0.0005, 0.002])
def test_sequential_keeps_fewer_false_changes_than_flag_and_confirm_for_confirms_progress(sigma):
    """A small seeded grid (30 campaigns of 100 runs; seed 5, not the published 20240 nor the tuning seed 1):
    sequential keeps fewer false changes than flag and than confirm, and ends no worse than confirm, with room
    for the grid's standard error. It does not match flag's progress at sd 0.002 (docs/keep_policies.md)."""
    setups = [kp.Setup("flag"), kp.Setup("confirm"), kp.Setup("sequential")]
    rows = {r.policy: r for r in kp.run_grid(setups, [sigma], [100], SCENARIO, campaigns=30, seed=5, jobs=1)}
    flag, confirm, sequential = rows["flag"], rows["confirm"], rows["sequential"]
    assert sequential.false_keep_share < confirm.false_keep_share < flag.false_keep_share
    assert sequential.final_bpb <= confirm.final_bpb + 2 * confirm.gap_se


# ---- the benchmark-only Bayes rules (issue 19's frontier) ------------------------------------------------------


@pytest.mark.parametrize("g", [-0.006, -0.001, 0.0, 0.0015, 0.004, 0.012])
def test_posterior_gain_matches_numerical_integration(g):
    """The closed form (exponential effects convolved with Gaussian noise) against brute-force quadrature."""
    s, p_gain, gain_mean, p_harm, harm_mean = 0.0025, 0.15, 0.002, 0.5, 0.003
    x = [i * 1e-6 for i in range(1, 60_000)]  # effect sizes 0..0.06, far past where the exponentials matter

    def phi(z):
        return math.exp(-0.5 * z * z) / (s * math.sqrt(2 * math.pi))

    gain = p_gain * sum(math.exp(-v / gain_mean) / gain_mean * phi((g - v) / s) for v in x) * 1e-6
    harm = p_harm * sum(math.exp(-v / harm_mean) / harm_mean * phi((g + v) / s) for v in x) * 1e-6
    null = (1 - p_gain - p_harm) * phi(g / s)
    expected = gain / (gain + harm + null)
    assert kp.posterior_gain(g, s, p_gain, gain_mean, p_harm, harm_mean) == pytest.approx(expected, rel=2e-3)


def test_posterior_gain_edges():
    args = (0.15, 0.003, 0.5, 0.003)
    assert kp.posterior_gain(0.001, 0.0, *args) == 1.0 and kp.posterior_gain(0.0, 0.0, *args) == 0.0
    ps = [kp.posterior_gain(g / 1000, 0.002, *args) for g in range(-40, 41)]  # far tails: no overflow, no nan
    assert all(0.0 <= p <= 1.0 for p in ps) and ps == sorted(ps) and ps[0] < 1e-6 and ps[-1] > 1 - 1e-6
    assert kp.posterior_gain(0.002, 0.002, 0.15, 0.0, 0.5, 0.003) == 0.0  # no headroom left: no gain to find


@pytest.mark.parametrize("setup", [kp.BayesSetup("oracle", threshold=0.3), kp.BayesSetup("eb", threshold=0.2),
                                   kp.BayesSetup("oracle-parent", 2.0, 2, threshold=0.5, lower=0.3),
                                   kp.BayesSetup("eb", 2.0, 3, threshold=0.3, lower=0.1)])
def test_bayes_rules_keep_the_same_run_accounting(setup):
    """Driven by the same loop as the live policies: every run costs one, the floor only for the rule that reads
    the measured sd, re-runs only for the sequential ones, never past their most runs."""
    for budget in (8, 60):
        for sigma in (0.0, 0.002):
            r = kp.run_campaign(stream(3, budget), SCENARIO, setup, sigma, budget)
            assert r.noise_runs == (kp.DEFAULT_NOISE_REPEATS if setup.policy == "eb" else 0)
            assert r.runs == budget == r.noise_runs + 1 + r.proposals + r.reruns
            assert r.reruns <= setup.confirm_seeds * r.proposals and (r.reruns == 0 or setup.sequential)
            if sigma == 0.0:  # no noise: the posterior is certain, so every rule is the best possible
                assert r.false_keeps == 0 and r.gains_missed == 0 and r.reruns == 0


def test_bayes_rules_are_benchmark_only():
    with pytest.raises(ValueError):
        kp.BayesSetup("greedy")
    with pytest.raises(ValueError):
        kp.BayesSetup("oracle", threshold=0.3, lower=0.5)
    with pytest.raises(TypeError):
        kp.BayesSetup("oracle").keep_policy()


def test_frontier_on_a_small_grid():
    """30 campaigns of 100 runs at sd 0.002 (seed 5: neither the published 20240 nor the tuning seed 1).

    The oracle's threshold moves it along a frontier: a higher bar, fewer false keeps than greedy, and less
    progress. Told the parent's true val_bpb as well, it dominates the sequential policy: fewer false keeps
    and no worse progress (with room for the grid's standard error). Told only the prior and sigma, it does not:
    a single run against a lucky parent is the sequential policy's own handicap, and re-runs are what it spends
    to overcome it (docs/keep_policies.md)."""
    setups = [kp.Setup("greedy"), kp.Setup("sequential"), kp.BayesSetup("oracle", threshold=0.1),
              kp.BayesSetup("oracle", threshold=0.3), kp.BayesSetup("oracle-parent", threshold=0.5)]
    cells, _ = kp.run_cells(setups, [0.002], [100], SCENARIO, campaigns=30, seed=5, jobs=1)
    rows = {r.label: r for r in kp.frontier_rows(cells)}
    greedy, sequential = rows["greedy"], rows[kp.Setup("sequential").label]
    low, high = rows["oracle (P >= 0.1)"], rows["oracle (P >= 0.3)"]
    parent = rows["oracle-parent (P >= 0.5)"]
    assert greedy.vs_greedy == 0.0 and not greedy.meets_goal
    assert high.false_keep_share < low.false_keep_share and high.false_keep_share < greedy.false_keep_share
    assert high.final_bpb > low.final_bpb
    assert parent.false_keep_share < sequential.false_keep_share
    assert parent.final_bpb <= sequential.final_bpb + 2 * sequential.vs_greedy_se
    assert all(r.meets_goal == (r.false_keep_share <= kp.FRONTIER_GOAL and r.vs_greedy <= 0) for r in rows.values())
    assert kp.frontier_verdict(list(rows.values()))[0].startswith("sd 0.002, 100 runs, rules the loop could run:")


def test_command_line_frontier(capsys):
    assert kp.main(["--frontier", "--quick", "--campaigns", "3", "--jobs", "1"]) == 0
    out = capsys.readouterr().out
    assert "## sd 0.002, 100 runs" in out and "| oracle (P >= 0.3) | 0.3 |" in out and "wall time" in out
