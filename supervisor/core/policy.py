"""Noise-floor statistics and the keep policies.

Pure logic, shared by the live loop and the campaign simulator: no I/O, no globals, no clock.

The noise floor is ``factor x sd`` where ``sd`` is the sample standard deviation of ``val_bpb`` between
repeats of identical code with different seeds. A trial's *gain* is ``parent - trial`` (positive is
better), measured against its parent, the keep it was built on. When the parent or the trial has
several runs, their means are compared.

Policies, for a trial whose gain is positive but under the floor (a "sub-floor" gain):

- ``greedy``: keep it, as upstream autoresearch does (any strict improvement is kept).
- ``flag`` (default): keep it, but flag it so the person can see it and re-test it.
- ``confirm``: do not decide on one run. Ask for ``confirm_seeds`` more runs with new seeds
  (``Verdict.RETEST``); with all runs in hand, keep it only if the mean still beats the parent's mean,
  and flag the keep if the mean gain is still under the floor.
- ``strict``: discard it.
- ``sequential``: re-run it one new seed at a time, at most ``confirm_seeds`` times, and decide as soon as the
  runs say enough: keep it (flagged) once it has two runs or more and its mean gain clears
  ``standard_errors`` standard errors of the comparison (``sd x sqrt(1/parent runs + 1/trial runs)``);
  discard it as soon as the mean no longer beats the parent's, or when the re-runs are spent without clearing.
  Unlike confirm's second test (the mean still beats the parent), a lucky no-op rarely clears it, and a trial
  that stops looking promising costs no further run.

Gains at or above the floor are kept unflagged by every policy; gains <= 0 are discarded by every
policy. With no floor measured yet every policy is greedy and its keeps say "unmeasured floor".

Re-runs are samples too. The sd a decision uses (:class:`NoiseEstimate`) pools the seeds' spread with every
group of runs of identical code (a keep re-run unchanged, a trial's confirmation runs): the sum of squared
deviations from each group's own mean over ``N - groups``. A floor whose seeds ran very different numbers of
steps measured the machine's speed as much as the seed, and says so (:func:`uneven_steps`).
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Sequence
from dataclasses import dataclass, field
from enum import StrEnum

DEFAULT_FLOOR_FACTOR = 2.0
DEFAULT_CONFIRM_SEEDS = 2
DEFAULT_POLICY = "flag"
POLICY_NAMES = ("greedy", "flag", "confirm", "strict", "sequential")
# How many standard errors of the comparison a sub-floor mean gain must clear for the sequential rule to keep it.
# Chosen on simulated campaigns the published figures do not use (seed 1): there 0.5 matched confirm's final
# val_bpb at noise sd 0.002 with 9 points fewer false keeps; a higher bar trades progress for fewer false keeps.
# The held-out figures are in docs/keep_policies.md.
DEFAULT_STANDARD_ERRORS = 0.5
# The brief calls the strict rule "reject"; accept the word people will type.
_ALIASES = {"reject": "strict"}
# Seeds of identical code on a steady machine run the same number of steps within a few percent (every step is
# the same work, the budget is the same). When the most steps exceed the fewest by more than this factor, the
# machine's speed decided part of the spread, and the floor says so.
STEP_SPREAD_LIMIT = 1.2


def _fmt(x: float) -> str:
    """Four decimals suit val_bpb (~1.0, gains ~0.001); tiny gains would print as 0.0000 and mislead."""
    if x == 0 or abs(x) >= 5e-5:
        return f"{x:.4f}"
    return f"{x:.2g}"


def _check_factor(factor: float) -> float:
    if isinstance(factor, bool) or not isinstance(factor, int | float):
        raise ValueError(f"floor factor must be a number, got {factor!r}")
    if not math.isfinite(factor) or factor <= 0:
        raise ValueError(f"floor factor must be a positive finite number, got {factor!r}")
    return float(factor)


def _check_sd(sd: float | None) -> float | None:
    if sd is None:
        return None
    sd = float(sd)
    # A negative or NaN sd can only come from a caller bug; deciding on it would silently be greedy.
    if not math.isfinite(sd) or sd < 0:
        raise ValueError(f"noise sd must be a finite number >= 0 or None, got {sd!r}")
    return sd


def uneven_steps(steps: Sequence[int | None]) -> str | None:
    """Why a floor's seeds do not measure only the seed (their step counts differ by more than
    STEP_SPREAD_LIMIT), or None. Unknown counts are left out; fewer than two known say nothing."""
    known = sorted(int(s) for s in steps if s is not None and s > 0)
    if len(known) < 2 or known[-1] <= STEP_SPREAD_LIMIT * known[0]:
        return None
    ran = f"{known[0]} and {known[-1]}" if len(known) == 2 else f"from {known[0]} to {known[-1]}"
    return (f"the seeds ran {ran} steps (more than {STEP_SPREAD_LIMIT:g}x apart): the floor measures machine "
            "speed, not only the seed")


def pooled_sd(groups: Sequence[tuple[float, int]]) -> float | None:
    """The pooled sd of groups given as (sample sd, runs): sqrt(sum (n - 1) sd^2 / sum (n - 1)), which is the
    sum of squared deviations from each group's own mean over N - groups. None with no degree of freedom."""
    checked = [(_check_sd(sd), int(n)) for sd, n in groups if n >= 2]
    freedom = sum(n - 1 for _, n in checked)
    if freedom < 1:
        return None
    return math.sqrt(sum((n - 1) * (sd or 0.0) ** 2 for sd, n in checked) / freedom)


class _Floor:
    """A floor from a spread: factor x sd, and whether the seeds' step counts say it measured the machine."""

    sd: float | None
    steps: Sequence[int | None]

    def floor(self, factor: float = DEFAULT_FLOOR_FACTOR) -> float | None:
        sd = self.sd
        return None if sd is None else _check_factor(factor) * sd

    @property
    def steps_warning(self) -> str | None:
        """Why this floor measures the machine as well as the seed, or None."""
        return uneven_steps(self.steps)


@dataclass
class NoiseMeasurement(_Floor):
    """val_bpb of R repeats of identical code with different seeds, on one budget and one platform.

    Crashed repeats are left out by the caller; every value here must be finite. ``steps``: how many training
    steps each seed ran, where known (a wide spread flags the floor).
    """

    values: list[float]
    budget_s: float
    platform: str
    steps: list[int | None] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.values = [float(v) for v in self.values]
        bad = [v for v in self.values if not math.isfinite(v)]
        if bad:
            raise ValueError(f"noise measurement values must be finite, got {bad!r}")

    @property
    def n(self) -> int:
        return len(self.values)

    @property
    def sd(self) -> float | None:
        """Sample standard deviation (n-1); None with fewer than two repeats (no spread to measure)."""
        if len(self.values) < 2:
            return None
        return statistics.stdev(self.values)

    @property
    def mean(self) -> float | None:
        return statistics.fmean(self.values) if self.values else None

    @property
    def range(self) -> float | None:
        return max(self.values) - min(self.values) if self.values else None


    def describe(self, factor: float = DEFAULT_FLOOR_FACTOR) -> str:
        """One line for the journal and the UI."""
        if self.n < 2:
            return f"noise floor unmeasured ({self.n} repeat{'s' if self.n != 1 else ''}; need at least 2)"
        floor = self.floor(factor)
        assert floor is not None and self.sd is not None and self.range is not None
        text = (
            f"noise floor {_fmt(floor)} ({factor:g} x sd {_fmt(self.sd)} over {self.n} seeds, "
            f"range {_fmt(self.range)}) at {self.budget_s:g}s on {self.platform}"
        )
        warning = self.steps_warning
        return f"{text}; FLAGGED: {warning}" if warning else text


@dataclass(frozen=True)
class NoiseEstimate(_Floor):
    """The noise a decision uses: a floor's seeds pooled with the groups of identical-code re-runs since.

    ``seeds_sd`` is the sd stored with the measurement (a floor given by the person has an sd and no seeds: it
    is used as given, never pooled, since its degrees of freedom are unknown). ``groups``: val_bpb of each
    set of runs of one commit (a keep and its unchanged re-runs, a trial and its confirmation runs).
    """

    seeds: tuple[float, ...]
    seeds_sd: float | None
    groups: tuple[tuple[float, ...], ...] = ()
    steps: tuple[int, ...] = ()

    @property
    def pooled_groups(self) -> list[tuple[float, ...]]:
        """The re-run groups that add to the floor: two runs or more, and a measured floor to add to."""
        if self.seeds_sd is None or len(self.seeds) < 2:
            return []
        return [g for g in self.groups if len(g) >= 2]

    @property
    def runs(self) -> int:
        return len(self.seeds) + sum(len(g) for g in self.pooled_groups)

    @property
    def sd(self) -> float | None:
        groups = self.pooled_groups
        if not groups:
            return _check_sd(self.seeds_sd)
        pooled = pooled_sd([(self.seeds_sd or 0.0, len(self.seeds)), *((statistics.stdev(g), len(g)) for g in groups)])
        # Pooling may only raise the floor: runs of one commit that agree exactly (a script that ignores its seed)
        # would otherwise shrink it, and un-flag gains that are luck.
        seeds = _check_sd(self.seeds_sd)
        return pooled if seeds is None or pooled is None else max(seeds, pooled)


    def describe(self, factor: float = DEFAULT_FLOOR_FACTOR) -> str:
        """One line: the floor, what it is pooled from, and its flag."""
        floor, sd = self.floor(factor), self.sd
        if floor is None or sd is None:
            return "noise floor unmeasured"
        groups = self.pooled_groups
        if groups:
            text = (f"noise floor {_fmt(floor)} ({factor:g} x pooled sd {_fmt(sd)} over {len(self.seeds)} seeds and "
                    f"{len(groups)} group{'s' if len(groups) != 1 else ''} of re-runs, {self.runs} runs)")
        else:
            text = f"noise floor {_fmt(floor)} ({factor:g} x sd {_fmt(sd)} over {len(self.seeds)} seeds)"
        warning = self.steps_warning
        return f"{text}; FLAGGED: {warning}" if warning else text


class Verdict(StrEnum):
    KEEP = "keep"
    DISCARD = "discard"
    RETEST = "retest"  # the confirm or sequential policy wants more seeds before deciding


@dataclass(frozen=True)
class Decision:
    verdict: Verdict
    flagged: bool
    gain: float | None  # parent mean - trial mean; None when there is nothing to compare
    floor: float | None  # None while the noise floor is unmeasured
    reason: str  # a sentence for the journal
    seeds_needed: int = 0  # only for RETEST: how many more runs, with new seeds

    @property
    def kept(self) -> bool:
        return self.verdict is Verdict.KEEP


def _runs(label: str, mean: float, n: int) -> str:
    return f"{label} {_fmt(mean)}" if n == 1 else f"{label} {_fmt(mean)} (mean of {n} runs)"


@dataclass(frozen=True)
class KeepPolicy:
    name: str = DEFAULT_POLICY
    floor_factor: float = DEFAULT_FLOOR_FACTOR
    confirm_seeds: int = DEFAULT_CONFIRM_SEEDS  # confirm: the re-runs; sequential: the most re-runs
    standard_errors: float = DEFAULT_STANDARD_ERRORS  # sequential: what a sub-floor mean gain must clear

    def __post_init__(self) -> None:
        if self.name not in POLICY_NAMES:
            raise ValueError(_unknown_policy_message(self.name))
        _check_factor(self.floor_factor)
        if isinstance(self.confirm_seeds, bool) or not isinstance(self.confirm_seeds, int) or self.confirm_seeds < 0:
            raise ValueError(f"confirm_seeds must be an integer >= 0, got {self.confirm_seeds!r}")
        z = self.standard_errors
        if isinstance(z, bool) or not isinstance(z, int | float) or not math.isfinite(z) or z < 0:
            raise ValueError(f"standard_errors must be a finite number >= 0, got {z!r}")

    @property
    def max_runs(self) -> int:
        """The most runs a trial gets before its verdict: its first and the re-runs the policy may ask for."""
        return 1 + self.confirm_seeds if self.name in ("confirm", "sequential") else 1

    def floor_for(self, noise_sd: float | None) -> float | None:
        sd = _check_sd(noise_sd)
        return None if sd is None else self.floor_factor * sd

    def decide(
        self, parent_values: Sequence[float], trial_values: Sequence[float], noise_sd: float | None
    ) -> Decision:
        """Keep, discard, or (confirm and sequential policies) ask for more seeds.

        ``parent_values``: val_bpb of the parent's runs (one, or several if it was re-tested); empty for
        the baseline, which is kept. ``trial_values``: this trial's runs. ``noise_sd``: the measured sd,
        or None while unmeasured. RETEST is returned only while the trial has fewer than
        :meth:`max_runs` runs, so a caller that answers each RETEST with ``seeds_needed`` new runs and calls
        again ends with KEEP or DISCARD: confirm asks once (for all its seeds), sequential one seed at a time.
        """
        parent, trial = _checked_runs(parent_values, trial_values)
        sd = _check_sd(noise_sd)
        floor = None if sd is None else self.floor_factor * sd

        bad = [v for v in trial if not math.isfinite(v)]
        if bad:
            return Decision(
                Verdict.DISCARD, False, None, floor,
                f"val_bpb {bad[0]} is not a finite number: discarded",
            )
        if not parent:
            return Decision(Verdict.KEEP, False, None, floor, "no parent to compare against: kept as the baseline")
        return self._compare(parent, trial, sd, floor)

    def _compare(self, parent: list[float], trial: list[float], sd: float | None, floor: float | None) -> Decision:
        """The decision for finite runs of a trial against its parent's."""
        parent_mean = statistics.fmean(parent)
        trial_mean = statistics.fmean(trial)
        gain = parent_mean - trial_mean
        what = "mean gain" if len(trial) > 1 else "gain"
        compared = f"{_runs('val_bpb', trial_mean, len(trial))} vs parent {_fmt(parent_mean)}"
        if len(parent) > 1:
            compared += f" (mean of {len(parent)} runs)"

        if gain <= 0:
            return Decision(
                Verdict.DISCARD, False, gain, floor, f"{compared}: {self._no_gain(gain, len(trial), what)}: discarded"
            )

        if floor is None:
            return Decision(
                Verdict.KEEP, False, gain, None,
                f"{compared}: {what} {_fmt(gain)}; unmeasured floor, so kept by the greedy rule "
                "(measure the noise floor to know whether gains this size are real)",
            )

        assert sd is not None  # floor is known, so sd is
        floor_text = f"the noise floor {_fmt(floor)} ({self.floor_factor:g} x sd {_fmt(sd)})"
        if gain >= floor:
            return Decision(
                Verdict.KEEP, False, gain, floor, f"{compared}: {what} {_fmt(gain)} is above {floor_text}: kept"
            )
        under = f"{compared}: {what} {_fmt(gain)} is under {floor_text}"
        if self.name == "sequential":
            return self._sequential(under, gain, floor, sd * math.sqrt(1 / len(parent) + 1 / len(trial)), len(trial))
        return self._sub_floor(under, gain, floor, len(trial))

    def _no_gain(self, gain: float, runs: int, what: str) -> str:
        """Why a trial that did not beat its parent is discarded."""
        if runs > 1 and self.name in ("confirm", "sequential"):
            return f"the gain did not hold up over {runs} runs ({what} {_fmt(gain)})"
        if gain == 0:
            return "no improvement on the parent"
        return f"worse than the parent by {_fmt(-gain)}"

    def _sub_floor(self, under: str, gain: float, floor: float, runs: int) -> Decision:
        """The policy's own rule, for a positive gain under the noise floor."""
        if self.name == "greedy":
            return Decision(Verdict.KEEP, False, gain, floor, f"{under}: kept by the greedy rule")
        if self.name == "flag":
            return Decision(Verdict.KEEP, True, gain, floor, f"{under}: kept by the flag rule, flagged")
        if self.name == "strict":
            return Decision(Verdict.DISCARD, False, gain, floor, f"{under}: discarded by the strict rule")
        # confirm
        if runs == 1 and self.confirm_seeds > 0:
            n = self.confirm_seeds
            return Decision(
                Verdict.RETEST, False, gain, floor,
                f"{under}: re-running with {n} new seed{'s' if n != 1 else ''} before deciding",
                seeds_needed=n,
            )
        return Decision(
            Verdict.KEEP, True, gain, floor,
            f"{under}: it still beats the parent, so kept by the confirm rule, flagged",
        )


    def _sequential(self, under: str, gain: float, floor: float, standard_error: float, runs: int) -> Decision:
        """The sequential rule for a positive mean gain under the floor: keep once it clears standard_errors x
        the comparison's standard error on two runs or more, else one more seed while re-runs are left."""
        bar = self.standard_errors * standard_error
        clears = f"{self.standard_errors:g} standard errors ({_fmt(bar)})"
        if runs >= 2 and gain >= bar:
            return Decision(Verdict.KEEP, True, gain, floor,
                            f"{under}, but clears {clears} over {runs} runs: kept by the sequential rule, flagged")
        if runs < self.max_runs:
            return Decision(Verdict.RETEST, False, gain, floor,
                            f"{under}: re-running with one new seed before deciding (run {runs + 1} of at most "
                            f"{self.max_runs})", seeds_needed=1)
        return Decision(Verdict.DISCARD, False, gain, floor,
                        f"{under} and does not clear {clears} over {runs} runs: discarded by the sequential rule")


def _checked_runs(parent_values: Sequence[float], trial_values: Sequence[float]) -> tuple[list[float], list[float]]:
    """(parent, trial) as floats; ValueError for what only a caller bug can produce."""
    trial = [float(v) for v in trial_values]
    if not trial:
        raise ValueError("trial_values is empty: a trial that produced no val_bpb is a crash, decided by the caller")
    parent = [float(v) for v in parent_values]
    # A parent was a keep, so its val_bpb is finite; anything else is a caller bug worth surfacing.
    if any(not math.isfinite(v) for v in parent):
        raise ValueError(f"parent values must be finite, got {parent!r}")
    return parent, trial


def _unknown_policy_message(name: object) -> str:
    return f"unknown keep policy {name!r}; choose one of: {', '.join(POLICY_NAMES)}"


def parse_policy(
    name: str, floor_factor: float = DEFAULT_FLOOR_FACTOR, confirm_seeds: int = DEFAULT_CONFIRM_SEEDS,
    standard_errors: float = DEFAULT_STANDARD_ERRORS,
) -> KeepPolicy:
    """Build a policy from user input (CLI flag, config file); forgiving about case and spaces."""
    key = str(name).strip().lower()
    key = _ALIASES.get(key, key)
    if key not in POLICY_NAMES:
        raise ValueError(_unknown_policy_message(name))
    return KeepPolicy(key, floor_factor, confirm_seeds, standard_errors)
