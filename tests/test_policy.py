import math
import statistics

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from supervisor.core.policy import (
    POLICY_NAMES,
    Decision,
    KeepPolicy,
    NoiseMeasurement,
    Verdict,
    parse_policy,
)

PARENT = 1.0
SD = 0.0025  # floor 0.005 with the default factor 2


def decide(name: str, trial: list[float], parent: list[float] | None = None, sd: float | None = SD) -> Decision:
    return KeepPolicy(name).decide([PARENT] if parent is None else parent, trial, sd)


# --- noise statistics, against hand computations -------------------------------------------------


def test_noise_sd_mean_range_floor_by_hand():
    m = NoiseMeasurement([1.0, 1.002, 1.004], budget_s=300, platform="H100")
    # mean 1.002; squared deviations 4e-6, 0, 4e-6 -> var = 8e-6 / (3-1) = 4e-6 -> sd = 0.002
    assert m.mean == pytest.approx(1.002)
    assert m.sd == pytest.approx(0.002)
    assert m.range == pytest.approx(0.004)
    assert m.floor() == pytest.approx(0.004)
    assert m.floor(3.0) == pytest.approx(0.006)
    assert m.n == 3


def test_noise_two_values():
    # two values a, b: sd = |a - b| / sqrt(2)
    m = NoiseMeasurement([0.99, 1.0], 300, "cpu")
    assert m.sd == pytest.approx(0.01 / math.sqrt(2))
    assert m.floor(2.0) == pytest.approx(2 * 0.01 / math.sqrt(2))


def test_noise_too_few_repeats():
    empty = NoiseMeasurement([], 300, "cpu")
    assert empty.sd is None and empty.mean is None and empty.range is None and empty.floor() is None
    one = NoiseMeasurement([1.0], 300, "cpu")
    assert one.sd is None and one.floor() is None
    assert one.mean == 1.0 and one.range == 0.0
    assert "unmeasured" in one.describe()


def test_noise_identical_values_give_zero_floor():
    m = NoiseMeasurement([1.0, 1.0, 1.0], 300, "cpu")
    assert m.sd == 0.0 and m.floor() == 0.0


def test_noise_rejects_non_finite_and_bad_factor():
    with pytest.raises(ValueError, match="finite"):
        NoiseMeasurement([1.0, float("nan")], 300, "cpu")
    with pytest.raises(ValueError, match="factor"):
        NoiseMeasurement([1.0, 1.1], 300, "cpu").floor(0)


def test_noise_describe():
    text = NoiseMeasurement([1.0, 1.002, 1.004], 300, "NVIDIA H100").describe()
    assert "0.0040" in text and "sd 0.0020" in text and "3 seeds" in text and "NVIDIA H100" in text


# --- each policy on constructed results ------------------------------------------------------------

ABOVE = PARENT - 0.01  # gain 0.01 > floor 0.005
BELOW = PARENT - 0.002  # gain 0.002 < floor
WORSE = PARENT + 0.003


@pytest.mark.parametrize("name", POLICY_NAMES)
def test_gain_above_floor_kept_unflagged_by_all(name):
    d = decide(name, [ABOVE])
    assert d.verdict is Verdict.KEEP and not d.flagged
    assert d.gain == pytest.approx(0.01) and d.floor == pytest.approx(0.005)
    assert "above the noise floor 0.0050 (2 x sd 0.0025)" in d.reason


@pytest.mark.parametrize("name", POLICY_NAMES)
def test_negative_gain_discarded_by_all(name):
    d = decide(name, [WORSE])
    assert d.verdict is Verdict.DISCARD and not d.flagged
    assert d.gain == pytest.approx(-0.003)
    assert "worse than the parent by 0.0030" in d.reason


@pytest.mark.parametrize("name", POLICY_NAMES)
def test_equal_discarded_by_all(name):
    d = decide(name, [PARENT])
    assert d.verdict is Verdict.DISCARD and d.gain == 0.0
    assert "no improvement" in d.reason


def test_greedy_keeps_sub_floor_unflagged():
    d = decide("greedy", [BELOW])
    assert d.verdict is Verdict.KEEP and not d.flagged
    assert "gain 0.0020 is under the noise floor 0.0050 (2 x sd 0.0025): kept by the greedy rule" in d.reason


def test_flag_keeps_sub_floor_flagged():
    d = decide("flag", [BELOW])
    assert d.verdict is Verdict.KEEP and d.flagged
    assert d.reason.endswith("kept by the flag rule, flagged")


def test_strict_discards_sub_floor():
    d = decide("strict", [BELOW])
    assert d.verdict is Verdict.DISCARD and not d.flagged
    assert "discarded by the strict rule" in d.reason


@pytest.mark.parametrize("name", POLICY_NAMES)
def test_gain_exactly_at_floor_is_not_under_it(name):
    d = KeepPolicy(name).decide([1.0], [0.5], 0.25)  # gain 0.5 == floor 2 x 0.25, exact in binary
    assert d.verdict is Verdict.KEEP and not d.flagged


def test_default_policy_is_flag():
    assert KeepPolicy().name == "flag"


@pytest.mark.parametrize("name", POLICY_NAMES)
def test_no_floor_known_is_greedy_with_unmeasured_reason(name):
    kept = decide(name, [BELOW], sd=None)
    assert kept.verdict is Verdict.KEEP and not kept.flagged and kept.floor is None
    assert "unmeasured floor" in kept.reason
    assert decide(name, [WORSE], sd=None).verdict is Verdict.DISCARD
    assert decide(name, [PARENT], sd=None).verdict is Verdict.DISCARD


def test_floor_factor_is_used():
    d = KeepPolicy("strict", floor_factor=1.0).decide([PARENT], [BELOW], 0.0015)  # floor 0.0015 < gain
    assert d.verdict is Verdict.KEEP and d.floor == pytest.approx(0.0015)
    assert "(1 x sd 0.0015)" in d.reason


def test_zero_sd_is_a_measured_floor_of_zero():
    d = decide("strict", [PARENT - 1e-6], sd=0.0)
    assert d.verdict is Verdict.KEEP and d.floor == 0.0
    assert "1e-06" in d.reason  # tiny gains are not printed as 0.0000


@pytest.mark.parametrize("name", POLICY_NAMES)
def test_non_finite_trial_discarded(name):
    for bad in (float("nan"), float("inf")):
        d = decide(name, [bad])
        assert d.verdict is Verdict.DISCARD and d.gain is None
        assert "not a finite number" in d.reason
    d = decide(name, [BELOW, float("nan")])
    assert d.verdict is Verdict.DISCARD


def test_baseline_without_parent_is_kept():
    d = KeepPolicy("strict").decide([], [1.0], SD)
    assert d.verdict is Verdict.KEEP and d.gain is None and "baseline" in d.reason


def test_parent_repeats_are_averaged():
    # parent runs 1.000 and 1.010 -> mean 1.005; trial 1.001 beats the mean though not the best run
    d = KeepPolicy("greedy").decide([1.0, 1.01], [1.001], SD)
    assert d.verdict is Verdict.KEEP and d.gain == pytest.approx(0.004)
    assert "mean of 2 runs" in d.reason


def test_caller_bugs_raise():
    with pytest.raises(ValueError, match="crash"):
        KeepPolicy().decide([1.0], [], SD)
    with pytest.raises(ValueError, match="parent"):
        KeepPolicy().decide([float("nan")], [1.0], SD)
    with pytest.raises(ValueError, match="sd"):
        KeepPolicy().decide([1.0], [0.9], -1.0)
    with pytest.raises(ValueError, match="sd"):
        KeepPolicy().decide([1.0], [0.9], float("nan"))


# --- confirm: the two-step path ---------------------------------------------------------------------


def test_confirm_asks_for_seeds_then_keeps_when_mean_still_beats_parent():
    policy = KeepPolicy("confirm")
    first = policy.decide([PARENT], [BELOW], SD)
    assert first.verdict is Verdict.RETEST and first.seeds_needed == 2 and not first.flagged
    assert "re-running with 2 new seeds" in first.reason
    # more runs: 0.998, 0.999, 1.000 -> mean 0.999, gain 0.001 > 0 but still under the floor
    second = policy.decide([PARENT], [BELOW, 0.999, 1.0], SD)
    assert second.verdict is Verdict.KEEP and second.flagged
    assert second.gain == pytest.approx(0.001)
    assert "mean gain 0.0010" in second.reason and "mean of 3 runs" in second.reason


def test_confirm_discards_when_mean_no_longer_beats_parent():
    policy = KeepPolicy("confirm")
    d = policy.decide([PARENT], [BELOW, 1.002, 1.003], SD)  # mean 1.001
    assert d.verdict is Verdict.DISCARD
    assert "did not hold up over 3 runs" in d.reason


def test_confirm_keeps_unflagged_when_mean_clears_floor():
    d = KeepPolicy("confirm").decide([PARENT], [BELOW, 0.99, 0.99], SD)  # mean 0.994 -> gain 0.006
    assert d.verdict is Verdict.KEEP and not d.flagged


def test_confirm_compares_against_parent_mean():
    # parent mean 1.004; trial mean 1.002 loses to the parent's best run but beats its mean
    d = KeepPolicy("confirm").decide([1.0, 1.008], [1.001, 1.002, 1.003], SD)
    assert d.verdict is Verdict.KEEP and d.gain == pytest.approx(0.002)


def test_confirm_seeds_configurable_and_zero_means_flag():
    assert KeepPolicy("confirm", confirm_seeds=5).decide([PARENT], [BELOW], SD).seeds_needed == 5
    d = KeepPolicy("confirm", confirm_seeds=0).decide([PARENT], [BELOW], SD)
    assert d.verdict is Verdict.KEEP and d.flagged


def test_confirm_only_retests_sub_floor_positive_gains():
    policy = KeepPolicy("confirm")
    assert policy.decide([PARENT], [ABOVE], SD).verdict is Verdict.KEEP
    assert policy.decide([PARENT], [WORSE], SD).verdict is Verdict.DISCARD
    assert policy.decide([PARENT], [BELOW], None).verdict is Verdict.KEEP


@given(
    parent=st.floats(0.5, 2.0),
    first=st.floats(0.5, 2.0),
    extra=st.lists(st.floats(0.5, 2.0), min_size=1, max_size=6),
    sd=st.floats(0.0, 0.05),
    seeds=st.integers(0, 5),
)
def test_confirm_terminates(parent, first, extra, sd, seeds):
    # Simulate the caller: at most one RETEST, after which any number of values gets a final verdict.
    policy = KeepPolicy("confirm", confirm_seeds=seeds)
    values = [first]
    d = policy.decide([parent], values, sd)
    if d.verdict is Verdict.RETEST:
        assert d.seeds_needed == seeds > 0
        values += extra
        d = policy.decide([parent], values, sd)
    assert d.verdict in (Verdict.KEEP, Verdict.DISCARD)
    assert policy.decide([parent], [first, *extra], sd).verdict is not Verdict.RETEST


# --- parse_policy -----------------------------------------------------------------------------------


def test_parse_policy():
    assert parse_policy("flag") == KeepPolicy("flag")
    assert parse_policy(" Confirm ", floor_factor=3.0, confirm_seeds=4) == KeepPolicy("confirm", 3.0, 4)
    assert parse_policy("reject").name == "strict"


def test_parse_policy_errors_list_valid_names():
    with pytest.raises(ValueError) as err:
        parse_policy("yolo")
    assert "'yolo'" in str(err.value) and "greedy, flag, confirm, strict, sequential" in str(err.value)
    with pytest.raises(ValueError, match="choose one of"):
        KeepPolicy("Flag")  # the dataclass itself is exact; parse_policy is the forgiving door
    with pytest.raises(ValueError, match="factor"):
        parse_policy("flag", floor_factor=0)
    with pytest.raises(ValueError, match="factor"):
        parse_policy("flag", floor_factor=float("inf"))
    with pytest.raises(ValueError, match="confirm_seeds"):
        parse_policy("confirm", confirm_seeds=-1)


# --- properties -------------------------------------------------------------------------------------

bpb = st.floats(0.5, 2.0, allow_nan=False)
runs = st.lists(bpb, min_size=1, max_size=5)
sds = st.none() | st.floats(0.0, 0.05)


@settings(max_examples=300)
@given(parent=runs, trial=runs, sd=sds, factor=st.floats(0.5, 4.0))
def test_policy_properties(parent, trial, sd, factor):
    decisions = {name: KeepPolicy(name, floor_factor=factor).decide(parent, trial, sd) for name in POLICY_NAMES}
    gain = statistics.fmean(parent) - statistics.fmean(trial)
    floor = None if sd is None else factor * sd
    for name, d in decisions.items():
        assert d.gain == gain
        if d.verdict is Verdict.KEEP:
            assert gain > 0, name
        if gain > 0 and floor is not None and gain >= floor:
            assert d.verdict is Verdict.KEEP and not d.flagged, name
        if d.flagged:
            assert d.verdict is Verdict.KEEP and floor is not None and gain < floor, name
        assert d.reason
    # strict never keeps a sub-floor gain
    if floor is not None and gain < floor:
        assert decisions["strict"].verdict is not Verdict.KEEP
    # flag keeps exactly what greedy keeps
    assert decisions["flag"].verdict == decisions["greedy"].verdict
    # confirm may only defer on a single run; it never keeps what greedy would discard
    if decisions["confirm"].verdict is Verdict.RETEST:
        assert len(trial) == 1
    if decisions["greedy"].verdict is Verdict.DISCARD:
        assert decisions["confirm"].verdict is Verdict.DISCARD
    if sd is None:
        assert all(d.verdict == decisions["greedy"].verdict for d in decisions.values())


# --- the sequential rule ----------------------------------------------------------------------------
# SD 0.0025, one parent run: the standard error of the comparison is 0.0025 x sqrt(1 + 1/n) on n trial runs, and
# the bar is half of it: 0.00153 on two runs, 0.00144 on three.


def test_sequential_asks_for_one_seed_at_a_time_up_to_confirm_seeds():
    policy = KeepPolicy("sequential", confirm_seeds=3)
    assert policy.max_runs == 4
    for runs in ([BELOW + 0.001], [BELOW + 0.001, PARENT], [BELOW + 0.001, PARENT, PARENT - 0.0005]):
        d = policy.decide([PARENT], runs, SD)  # mean gains 0.001, 0.0005, 0.0005: positive, under the bar
        assert d.verdict is Verdict.RETEST and d.seeds_needed == 1, runs
        assert f"run {len(runs) + 1} of at most 4" in d.reason
    d = policy.decide([PARENT], [BELOW + 0.001, PARENT, PARENT - 0.0005, PARENT - 0.001], SD)
    assert d.verdict is Verdict.DISCARD and "does not clear 0.5 standard errors" in d.reason


def test_sequential_never_keeps_a_sub_floor_gain_on_one_run():
    d = decide("sequential", [BELOW])  # gain 0.002: above the two-run bar, but one run is not enough
    assert d.verdict is Verdict.RETEST and d.seeds_needed == 1


def test_sequential_keeps_flagged_once_the_mean_clears_half_a_standard_error():
    d = decide("sequential", [BELOW, PARENT - 0.0012])  # mean gain 0.0016 >= 0.5 x 0.0025 x sqrt(1.5) = 0.00153
    assert d.verdict is Verdict.KEEP and d.flagged
    assert "clears 0.5 standard errors (0.0015) over 2 runs: kept by the sequential rule, flagged" in d.reason
    d = decide("sequential", [BELOW, PARENT - 0.001])  # mean gain 0.0015: just under the bar, one re-run left
    assert d.verdict is Verdict.RETEST


def test_sequential_stops_as_soon_as_the_mean_no_longer_beats_the_parent():
    d = decide("sequential", [BELOW, PARENT + 0.003])  # mean gain -0.0005 after two of three runs
    assert d.verdict is Verdict.DISCARD and not d.flagged
    assert "did not hold up over 2 runs" in d.reason


def test_sequential_bar_uses_the_parents_runs_and_the_setting():
    # four parent runs: se = 0.0025 x sqrt(1/4 + 1/2) = 0.00217; 0.5 se = 0.00108; 1 se = 0.00217
    parent = [PARENT - 0.001, PARENT + 0.001, PARENT, PARENT]
    assert KeepPolicy("sequential").decide(parent, [BELOW + 0.0009, BELOW + 0.0009], SD).kept  # gain 0.0011
    strict_bar = KeepPolicy("sequential", standard_errors=1.0)
    assert strict_bar.decide(parent, [BELOW + 0.0009, BELOW + 0.0009], SD).verdict is Verdict.RETEST
    assert strict_bar.decide(parent, [BELOW - 0.0003, BELOW - 0.0003], SD).kept  # gain 0.0023 >= 0.00217


def test_sequential_without_re_runs_is_strict_under_the_floor():
    policy = KeepPolicy("sequential", confirm_seeds=0)
    assert policy.max_runs == 1
    assert policy.decide([PARENT], [BELOW], SD).verdict is Verdict.DISCARD
    assert policy.decide([PARENT], [ABOVE], SD).kept


def test_sequential_setting_is_checked():
    for bad in (-0.1, float("nan"), float("inf"), True, "1"):
        with pytest.raises(ValueError, match="standard_errors"):
            KeepPolicy("sequential", standard_errors=bad)
    assert parse_policy("Sequential", 2.0, 3, 0.75) == KeepPolicy("sequential", 2.0, 3, 0.75)


@settings(max_examples=300)
@given(parent=runs, first=bpb, extra=st.lists(bpb, min_size=8, max_size=8), sd=sds, seeds=st.integers(0, 6),
       z=st.floats(0.0, 3.0))
def test_sequential_terminates_and_keeps_only_what_greedy_keeps(parent, first, extra, sd, seeds, z):
    """Driven as the loop drives it: every RETEST answered with seeds_needed runs, until a verdict."""
    policy = KeepPolicy("sequential", confirm_seeds=seeds, standard_errors=z)
    values = [first]
    d = policy.decide(parent, values, sd)
    while d.verdict is Verdict.RETEST:
        assert len(values) < policy.max_runs and d.seeds_needed == 1
        values += extra[len(values) - 1:len(values) - 1 + d.seeds_needed]
        d = policy.decide(parent, values, sd)
    assert len(values) <= policy.max_runs
    greedy = KeepPolicy("greedy").decide(parent, values, sd)
    if d.kept:
        assert greedy.kept
        if sd is not None and d.gain < 2 * sd:  # a sub-floor keep has two runs or more and is flagged
            assert d.flagged and len(values) >= 2


def test_the_run_config_accepts_every_policy_the_module_has():
    from supervisor.core.config import POLICY_NAMES as CONFIG_POLICY_NAMES
    from supervisor.core.config import RunConfig

    assert CONFIG_POLICY_NAMES == POLICY_NAMES  # config keeps its own list (core config imports no policy code)
    assert RunConfig(tag="t", policy="sequential").policy == "sequential"
