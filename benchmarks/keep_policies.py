"""What the keep policies are worth: simulated research campaigns with known ground truth.

    python benchmarks/keep_policies.py                      # the full grid (minutes on 2 cores)
    python benchmarks/keep_policies.py --quick              # a CI-sized check (seconds)
    python benchmarks/keep_policies.py --chart docs/keep_policies.png --json results.json

Every proposed change has a true effect on val_bpb drawn from a stated distribution (`Scenario`): most changes
do nothing or harm, a few are real gains, and gains shrink as the campaign closes in on what is reachable. The
policy never sees a true effect, only runs observed through Gaussian noise of standard deviation `sigma`.

Each policy decides with `supervisor.core.policy.KeepPolicy.decide`, the code the live loop runs, and is driven
the way `supervisor/run/executor.py` drives it: the parent's values are the observed runs of the last keep (its
confirmation runs included); each RETEST is answered with `seeds_needed` new runs and another `decide` (confirm
asks once, sequential one seed at a time); the sd is `NoiseMeasurement.sd` over R repeats of the starting code,
measured at the start as `--noise-repeats R` does, pooled by `NoiseEstimate` with every earlier trial's
confirmation runs (a group of identical code), as the loop's floor is.

Accounting, the same for every policy: a campaign has a total budget of B runs of the trainer. The baseline run,
every proposal's run, every confirmation re-run and every noise-floor repeat each cost one. A policy that reads
the floor (flag, confirm, strict) pays R runs for it; greedy, upstream's rule, never measures it. When the budget
runs out in the middle of a confirmation the trial is discarded, as the loop discards interrupted re-runs.

Fairness: campaign k draws its proposals and noise from one seed, shared by every policy, noise level and
budget (common random numbers). Proposal i has the same kind, size and first-run noise whichever policy meets
it; a policy that spends runs on re-tests simply meets fewer proposals. Noise draws are standard normals scaled
by sigma, so the noise levels differ only in scale.

The reference ("best possible") is the same proposal stream judged without noise and without paying for a
floor: `KeepPolicy("greedy")` at sigma = 0, which keeps exactly the changes that truly help.

Crashes are not simulated: a crashed trial is discarded before any policy sees it, so it costs every policy
the same run.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import sys
import time
from collections.abc import Iterable, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from supervisor.core.policy import (  # noqa: E402
    DEFAULT_CONFIRM_SEEDS,
    DEFAULT_FLOOR_FACTOR,
    DEFAULT_STANDARD_ERRORS,
    KeepPolicy,
    NoiseEstimate,
    NoiseMeasurement,
    Verdict,
    pooled_sd,
)

POLICIES = ("greedy", "flag", "confirm", "strict", "sequential")
RERUNNING = ("confirm", "sequential")  # the policies that ask for re-runs (confirm_seeds is theirs)
NOISE_LEVELS = (0.0002, 0.0005, 0.001, 0.002, 0.005, 0.01)
BUDGETS = (50, 100, 200, 500)
DEFAULT_NOISE_REPEATS = 3  # `autoresearch noise` measures with 3 repeats unless told otherwise
# Streams are drawn with room for the largest settings swept, so a setting never changes another's draws.
MAX_RERUNS = 8
MAX_NOISE_REPEATS = 16
SWEPT_REPEATS = (2, 5)  # besides the default 3
FRONTIER_CELLS = ((0.002, 100),)  # where issue 19 sets its goal: every setting's false keeps against progress
HARMFUL, NEUTRAL, GAIN = 0, 1, 2


@dataclass(frozen=True)
class Scenario:
    """The true effects of proposed changes, in val_bpb (lower is better)."""

    start_bpb: float = 1.0
    headroom: float = 0.08  # how far below the start the best reachable code is
    p_gain: float = 0.15  # a real gain
    p_neutral: float = 0.35  # no effect at all; the rest (0.5) are harmful
    gain_mean: float = 0.003  # mean size of a real gain at the start; shrinks with the headroom left
    harm_mean: float = 0.003  # mean size of a harm; does not shrink

    def __post_init__(self) -> None:
        if not (0 <= self.p_gain and 0 <= self.p_neutral and self.p_gain + self.p_neutral <= 1):
            raise ValueError("p_gain and p_neutral must be >= 0 and sum to at most 1")
        if self.headroom <= 0 or self.gain_mean <= 0 or self.harm_mean < 0:
            raise ValueError("headroom and gain_mean must be > 0, harm_mean >= 0")

    @property
    def p_harmful(self) -> float:
        return 1.0 - self.p_gain - self.p_neutral

    def effect(self, kind: int, unit: float, current_bpb: float) -> float:
        """The true change in val_bpb when the proposal is applied to code whose true val_bpb is current_bpb.

        ``unit`` is an Exponential(1) draw, so gains and harms are exponential: most small, a few large.
        A gain's mean is ``gain_mean`` times the share of the headroom still left, so gains shrink as
        the campaign improves (and grow back a little if a harmful change was kept).
        """
        if kind == GAIN:
            left = max(current_bpb - (self.start_bpb - self.headroom), 0.0) / self.headroom
            return -self.gain_mean * left * unit
        if kind == HARMFUL:
            return self.harm_mean * unit
        return 0.0

    def describe(self) -> str:
        return (f"{self.p_gain:.0%} real gains (exponential, mean {self.gain_mean:g} x headroom left / "
                f"{self.headroom:g}), {self.p_neutral:.0%} no effect, {self.p_harmful:.0%} harmful "
                f"(exponential, mean {self.harm_mean:g}); start val_bpb {self.start_bpb:g}")


@dataclass(frozen=True)
class Setup:
    """One policy with its settings, as `autoresearch run --policy ... --floor-factor ... --confirm-seeds ...`."""

    policy: str
    floor_factor: float = DEFAULT_FLOOR_FACTOR
    confirm_seeds: int = DEFAULT_CONFIRM_SEEDS
    noise_repeats: int = DEFAULT_NOISE_REPEATS
    standard_errors: float = DEFAULT_STANDARD_ERRORS  # only the sequential policy reads it

    def __post_init__(self) -> None:
        if self.confirm_seeds > MAX_RERUNS:
            raise ValueError(f"confirm_seeds above {MAX_RERUNS} is not simulated")
        if self.measures_floor and not 2 <= self.noise_repeats <= MAX_NOISE_REPEATS:
            raise ValueError(f"noise_repeats must be 2..{MAX_NOISE_REPEATS}")

    @property
    def measures_floor(self) -> bool:
        return self.policy != "greedy"  # greedy keeps any gain: a floor would change nothing it does

    def keep_policy(self) -> KeepPolicy:
        return KeepPolicy(self.policy, self.floor_factor, self.confirm_seeds, self.standard_errors)

    @property
    def label(self) -> str:
        if not self.measures_floor:
            return self.policy
        parts = [f"x{self.floor_factor:g}"]
        if self.policy in RERUNNING:
            parts.append(f"{self.confirm_seeds} seed{'s' if self.confirm_seeds != 1 else ''}")
        if self.policy == "sequential":
            parts.append(f"{self.standard_errors:g} se")
        parts.append(f"R={self.noise_repeats}")
        return f"{self.policy} ({', '.join(parts)})"


@dataclass
class ProposalStream:
    """Everything random in one campaign, drawn once and shared by every policy."""

    kinds: list[int]
    units: list[float]  # Exponential(1) sizes
    first_noise: list[float]  # standard normal noise of each proposal's first run
    rerun_noise: list[list[float]]  # standard normal noise of each proposal's confirmation re-runs
    floor_noise: list[float]  # standard normal noise of the noise-floor repeats
    baseline_noise: float

    @classmethod
    def draw(cls, seed: int, campaign: int, scenario: Scenario, length: int) -> ProposalStream:
        # One child generator per component: a longer stream extends a shorter one instead of reshuffling it.
        kinds_rng, units_rng, first_rng, rerun_rng, floor_rng = (
            np.random.default_rng(s) for s in np.random.SeedSequence([seed, campaign]).spawn(5))
        u = kinds_rng.random(length)
        kinds = np.where(u < scenario.p_gain, GAIN, np.where(u < scenario.p_gain + scenario.p_neutral, NEUTRAL,
                                                              HARMFUL))
        floor = floor_rng.standard_normal(MAX_NOISE_REPEATS + 1)
        return cls(kinds.tolist(), units_rng.exponential(1.0, length).tolist(),
                   first_rng.standard_normal(length).tolist(),
                   rerun_rng.standard_normal((length, MAX_RERUNS)).tolist(),
                   floor[1:].tolist(), float(floor[0]))


@dataclass
class CampaignResult:
    final_bpb: float = 0.0  # true val_bpb of the last keep
    believed_bpb: float = 0.0  # what the campaign believes of it: the mean of its observed runs
    runs: int = 0  # all runs spent: equals the budget
    noise_runs: int = 0
    reruns: int = 0
    proposals: int = 0  # proposals judged (each one first run)
    keeps: int = 0  # kept proposals (the baseline is not counted)
    false_keeps: int = 0  # kept with a true effect >= 0
    harmful_keeps: int = 0  # kept with a true effect > 0 (a subset of false keeps)
    false_keep_harm: float = 0.0  # sum of the true effects of false keeps (bpb lost)
    gains_seen: int = 0  # proposals whose true effect < 0
    gains_missed: int = 0  # of those, not kept
    gain_mass_seen: float = 0.0
    gain_mass_missed: float = 0.0
    flagged: int = 0
    flagged_false: int = 0
    retests: int = 0
    floor: float | None = None  # the floor the policy worked with (None for greedy)


class _PooledNoise:
    """The sd decisions use, as the loop reads it (supervisor/run/floor.py): the floor's seeds pooled with every
    earlier trial that ran its code more than once, by `NoiseEstimate`'s rule (`pooled_sd`, never below the
    seeds' sd). Each group's own sd is computed once, when it joins: recomputing every group's for every
    proposal, as `NoiseEstimate.sd` does, made a 500-run campaign 20 times slower. A test checks the two agree."""

    def __init__(self, seeds: Sequence[float] | None) -> None:
        self.seeds = tuple(seeds or ())
        self.seeds_sd = NoiseMeasurement(list(self.seeds), budget_s=300.0, platform="simulated").sd \
            if seeds else None
        self.groups: list[tuple[float, ...]] = []
        self._spreads: list[tuple[float, int]] = [] if self.seeds_sd is None else [(self.seeds_sd, len(self.seeds))]
        self.sd = self.seeds_sd

    def add(self, values: Sequence[float]) -> None:
        if self.seeds_sd is None or len(values) < 2:
            return
        self.groups.append(tuple(values))
        self._spreads.append((statistics.stdev(values), len(values)))
        pooled = pooled_sd(self._spreads)
        self.sd = self.seeds_sd if pooled is None else max(self.seeds_sd, pooled)

    def estimate(self) -> NoiseEstimate:
        """The loop's own object for the same runs (slow: for checking this one)."""
        return NoiseEstimate(self.seeds, self.seeds_sd, tuple(self.groups))


def _judge(policy: KeepPolicy, parent: list[float], values: list[float], sd: float | None, reruns: list[float],
           spare: int, result: CampaignResult) -> tuple[bool, bool, int]:
    """Decide one proposal as the loop's `_decide` does: answer every RETEST with `seeds_needed` new runs (drawn
    in order from `reruns`) and decide again. Returns (kept, flagged, re-runs spent); a re-test the `spare` runs
    left cannot pay for is discarded, as the loop discards interrupted re-runs. Extends `values` in place."""
    decision = policy.decide(parent, values, sd)
    spent = 0
    if decision.verdict is Verdict.RETEST:
        result.retests += 1
    while decision.verdict is Verdict.RETEST:
        wanted = decision.seeds_needed
        affordable = min(wanted, spare - spent)
        values += [reruns[spent + j] for j in range(affordable)]
        spent += affordable
        if affordable < wanted:
            return False, False, spent
        decision = policy.decide(parent, values, sd)
    return decision.kept, decision.flagged, spent


def _score(result: CampaignResult, effect: float, kept: bool, flagged: bool) -> None:
    """Count one judged proposal against the ground truth."""
    result.proposals += 1
    if effect < 0:
        result.gains_seen += 1
        result.gain_mass_seen += -effect
        if not kept:
            result.gains_missed += 1
            result.gain_mass_missed += -effect
    if not kept:
        return
    result.keeps += 1
    if effect >= 0:
        result.false_keeps += 1
        result.harmful_keeps += effect > 0
        result.false_keep_harm += effect
    if flagged:
        result.flagged += 1
        result.flagged_false += effect >= 0


def run_campaign(stream: ProposalStream, scenario: Scenario, setup: Setup, sigma: float, budget: int
                 ) -> CampaignResult:
    """One campaign of `budget` runs under one policy, driven as supervisor/run/executor.py drives it."""
    if sigma < 0:
        raise ValueError("sigma must be >= 0")
    floor_runs = setup.noise_repeats if setup.measures_floor else 0
    if budget < floor_runs + 2:
        raise ValueError(f"a budget of {budget} runs leaves nothing to try after the floor and the baseline")
    policy = setup.keep_policy()
    result = CampaignResult()
    true_bpb = scenario.start_bpb
    noise = _PooledNoise([true_bpb + sigma * z for z in stream.floor_noise[:floor_runs]] if floor_runs else None)
    if setup.measures_floor:
        result.noise_runs = floor_runs
        result.floor = policy.floor_for(noise.sd)
    spent = floor_runs

    baseline = [true_bpb + sigma * stream.baseline_noise]
    spent += 1
    if not policy.decide([], baseline, noise.sd).kept:
        raise AssertionError("the policy did not keep the baseline")
    parent = baseline

    i = 0
    while spent < budget:
        if i == len(stream.kinds):
            raise ValueError(f"the stream holds {i} proposals: too few for a budget of {budget} runs")
        effect = scenario.effect(stream.kinds[i], stream.units[i], true_bpb)
        candidate = true_bpb + effect
        values = [candidate + sigma * stream.first_noise[i]]
        spent += 1
        reruns = [candidate + sigma * z for z in stream.rerun_noise[i]]
        kept, flagged, extra = _judge(policy, parent, values, noise.sd, reruns, budget - spent, result)
        spent += extra
        result.reruns += extra
        _score(result, effect, kept, flagged)
        noise.add(values)  # its runs are one group of identical code (a no-op with a single run adds nothing)
        if kept:
            true_bpb = candidate
            parent = values
        i += 1
    result.runs = spent
    result.final_bpb = true_bpb
    result.believed_bpb = statistics.fmean(parent)
    return result


BEST_POSSIBLE = Setup("greedy")  # at sigma 0: keeps exactly the changes that truly help


def best_possible(stream: ProposalStream, scenario: Scenario, budget: int) -> CampaignResult:
    return run_campaign(stream, scenario, BEST_POSSIBLE, 0.0, budget)


# ---- the grid ----------------------------------------------------------------------------------------------


@dataclass
class Cell:
    """One (setup, sigma, budget) over many campaigns: sums, and the per-campaign final true val_bpb."""

    setup: Setup
    sigma: float
    budget: int
    campaigns: int = 0
    totals: dict[str, float] = field(default_factory=dict)
    finals: list[float] = field(default_factory=list)
    floors: list[float] = field(default_factory=list)
    overstatements: list[float] = field(default_factory=list)

    def add(self, r: CampaignResult) -> None:
        self.campaigns += 1
        for key, value in asdict(r).items():
            if key not in ("final_bpb", "believed_bpb", "floor"):
                self.totals[key] = self.totals.get(key, 0.0) + value
        self.finals.append(r.final_bpb)
        self.overstatements.append(r.final_bpb - r.believed_bpb)
        if r.floor is not None:
            self.floors.append(r.floor)

    def per_campaign(self, key: str) -> float:
        return self.totals[key] / self.campaigns

    def share(self, part: str, whole: str) -> float:
        """Pooled over campaigns (sum over sum): a campaign with few keeps weighs less than one with many."""
        return self.totals[part] / self.totals[whole] if self.totals[whole] else float("nan")


def _cell_job(args: tuple[Setup, float, int, Scenario, int, Sequence[int]]) -> Cell:
    setup, sigma, budget, scenario, seed, campaigns = args
    cell = Cell(setup, sigma, budget)
    for k in campaigns:
        cell.add(run_campaign(ProposalStream.draw(seed, k, scenario, budget), scenario, setup, sigma, budget))
    return cell


def _best_job(args: tuple[int, Scenario, int, Sequence[int]]) -> list[float]:
    budget, scenario, seed, campaigns = args
    return [best_possible(ProposalStream.draw(seed, k, scenario, budget), scenario, budget).final_bpb
            for k in campaigns]


@dataclass
class Summary:
    """One row of the tables: a cell compared with the best possible on the same streams."""

    label: str
    policy: str
    floor_factor: float
    confirm_seeds: int
    noise_repeats: int
    standard_errors: float
    sigma: float
    budget: int
    campaigns: int
    false_keep_share: float  # kept changes whose true effect is zero or harmful, over all kept
    gains_missed_share: float  # real gains judged and not kept, over real gains judged
    gain_mass_missed_share: float  # the same, weighted by the size of the gain
    keeps: float  # per campaign
    harmful_keep_share: float  # kept changes whose true effect is harmful, over all kept
    false_keep_harm: float  # per campaign: bpb lost to kept harmful changes
    overstatement: float  # mean (true - measured) val_bpb of the final keep: how much better it looks than it is
    final_bpb: float  # mean true val_bpb at the end
    best_bpb: float  # mean true val_bpb of the best possible
    gap: float  # mean (final - best possible), >= 0 is worse
    gap_se: float  # its standard error over campaigns
    captured: float  # share of the best possible improvement achieved
    rerun_share: float  # share of the budget spent on confirmation re-runs
    noise_share: float  # share of the budget spent measuring the floor
    proposals: float  # per campaign
    flagged_share: float  # of keeps, how many were flagged
    flagged_false_share: float  # of flagged keeps, how many were false (flag's precision)
    false_flagged_share: float  # of false keeps, how many were flagged (flag's recall)
    floor_median_over_sigma: float  # the measured floor, in units of the true noise sd


def summarize(cell: Cell, best: Sequence[float], scenario: Scenario) -> Summary:
    gaps = [f - b for f, b in zip(cell.finals, best, strict=True)]
    gain_best = scenario.start_bpb - statistics.fmean(best)
    nan = float("nan")
    floor_ratio = statistics.median(cell.floors) / cell.sigma if cell.floors and cell.sigma > 0 else nan
    setup = cell.setup
    return Summary(
        label=setup.label, policy=setup.policy, floor_factor=setup.floor_factor, confirm_seeds=setup.confirm_seeds,
        noise_repeats=setup.noise_repeats if setup.measures_floor else 0, standard_errors=setup.standard_errors,
        sigma=cell.sigma, budget=cell.budget, campaigns=cell.campaigns,
        false_keep_share=cell.share("false_keeps", "keeps"),
        gains_missed_share=cell.share("gains_missed", "gains_seen"),
        gain_mass_missed_share=cell.share("gain_mass_missed", "gain_mass_seen"),
        harmful_keep_share=cell.share("harmful_keeps", "keeps"),
        keeps=cell.per_campaign("keeps"), false_keep_harm=cell.per_campaign("false_keep_harm"),
        overstatement=statistics.fmean(cell.overstatements),
        final_bpb=statistics.fmean(cell.finals), best_bpb=statistics.fmean(best),
        gap=statistics.fmean(gaps),
        gap_se=statistics.stdev(gaps) / math.sqrt(len(gaps)) if len(gaps) > 1 else 0.0,
        captured=(scenario.start_bpb - statistics.fmean(cell.finals)) / gain_best if gain_best > 0 else nan,
        rerun_share=cell.totals["reruns"] / (cell.budget * cell.campaigns),
        noise_share=cell.totals["noise_runs"] / (cell.budget * cell.campaigns),
        proposals=cell.per_campaign("proposals"),
        flagged_share=cell.share("flagged", "keeps"),
        flagged_false_share=cell.share("flagged_false", "flagged"),
        false_flagged_share=cell.share("flagged_false", "false_keeps"),
        floor_median_over_sigma=floor_ratio,
    )


def run_grid(setups: Iterable[Setup], sigmas: Sequence[float], budgets: Sequence[int], scenario: Scenario,
             campaigns: int, seed: int, jobs: int) -> list[Summary]:
    setups = list(dict.fromkeys(setups))
    ks = range(campaigns)
    cell_args = [(s, sigma, b, scenario, seed, ks) for s in setups for sigma in sigmas for b in budgets]
    best_args = [(b, scenario, seed, ks) for b in budgets]
    if jobs > 1:
        with ProcessPoolExecutor(max_workers=jobs) as pool:
            bests = list(pool.map(_best_job, best_args))
            # Big budgets first, so the last jobs to finish are short ones.
            order = sorted(range(len(cell_args)), key=lambda j: -cell_args[j][2])
            done = dict(zip(order, pool.map(_cell_job, [cell_args[j] for j in order], chunksize=1), strict=True))
        cells = [done[j] for j in range(len(cell_args))]
    else:
        bests = [_best_job(a) for a in best_args]
        cells = [_cell_job(a) for a in cell_args]
    best_by_budget = dict(zip(budgets, bests, strict=True))
    return [summarize(c, best_by_budget[c.budget], scenario) for c in cells]


# ---- what is swept -----------------------------------------------------------------------------------------


def main_setups(floor_factor: float = DEFAULT_FLOOR_FACTOR, confirm_seeds: int = DEFAULT_CONFIRM_SEEDS,
                noise_repeats: int = DEFAULT_NOISE_REPEATS) -> list[Setup]:
    return [Setup(p, floor_factor, confirm_seeds, noise_repeats) for p in POLICIES]


def tuning_setups(factors: Sequence[float], seeds: Sequence[int], repeats: Sequence[int],
                  standard_errors: Sequence[float] = ()) -> list[Setup]:
    """The levers the defaults are chosen from: the floor's factor (for confirm it is also *when* it re-runs:
    every positive gain under factor x sd), the confirmation seeds, the repeats the floor is measured with, and
    what a sub-floor mean gain must clear under the sequential rule (with the most re-runs it may ask for)."""
    out = [Setup("strict", f) for f in factors]
    out += [Setup("flag", f) for f in factors]
    out += [Setup("confirm", f, n) for f in factors for n in seeds]
    out += [Setup(p, DEFAULT_FLOOR_FACTOR, DEFAULT_CONFIRM_SEEDS, r)
            for p in ("strict", "confirm") for r in repeats]
    out += [Setup("sequential", DEFAULT_FLOOR_FACTOR, n, standard_errors=z) for z in standard_errors for n in seeds
            if n >= 1]
    return out



SCENARIOS = {
    "base": Scenario(),
    # Twice as many real gains: a better agent or an easier target.
    "rich": Scenario(p_gain=0.3, p_neutral=0.3),
    # Fewer gains, and harms as small as gains: harmful changes hide in the noise as well as gains do.
    "subtle-harm": Scenario(p_gain=0.1, p_neutral=0.3, harm_mean=0.001),
    # Gains that never shrink: the campaign is far from what is reachable all night.
    "no-shrink": Scenario(headroom=10.0),
}


# ---- output ------------------------------------------------------------------------------------------------


def pct(x: float) -> str:
    return "-" if math.isnan(x) else f"{100 * x:.0f}%"


def _table(head: Sequence[str], rows: Iterable[Sequence[str]]) -> str:
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    return "\n".join(lines)


def main_table(rows: Sequence[Summary]) -> str:
    head = ("noise sd", "budget", "policy", "false keeps", "harmful keeps", "bpb lost to them",
            "real gains missed", "(by size)", "final true val_bpb", "vs best possible", "of best gain",
            "reported best flatters by", "re-runs", "floor runs", "keeps")
    return _table(head, ([
        f"{r.sigma:g}", str(r.budget), r.policy, pct(r.false_keep_share), pct(r.harmful_keep_share),
        f"{r.false_keep_harm:.4f}", pct(r.gains_missed_share), pct(r.gain_mass_missed_share), f"{r.final_bpb:.4f}",
        f"+{r.gap:.4f} ± {r.gap_se:.4f}", pct(r.captured), f"{r.overstatement:.4f}", pct(r.rerun_share),
        pct(r.noise_share), f"{r.keeps:.1f}",
    ] for r in rows))


def lever_table(rows: Sequence[Summary], sigmas: Sequence[float]) -> str:
    """Per setting: share of the best possible gain achieved / false keeps, per noise level over all budgets."""
    by_label: dict[str, list[Summary]] = {}
    for r in rows:
        by_label.setdefault(r.label, []).append(r)
    head = ["setting", *[f"sd {s:g}" for s in sigmas], "mean", "re-runs", "floor runs"]
    out = []
    for label, rs in by_label.items():
        cells = []
        for s in sigmas:
            at = [r for r in rs if r.sigma == s]
            cells.append(f"{statistics.fmean(r.captured for r in at):.0%} / "
                         f"{statistics.fmean(r.false_keep_share for r in at):.0%}")
        progress = statistics.fmean(r.captured for r in rs)
        false_keeps = statistics.fmean(r.false_keep_share for r in rs)
        out.append([label, *cells, f"**{progress:.1%} / {false_keeps:.1%}**",
                    pct(statistics.fmean(r.rerun_share for r in rs)), pct(statistics.fmean(r.noise_share for r in rs))])
    return _table(head, out)


def flag_table(rows: Sequence[Summary], sigmas: Sequence[float]) -> str:
    """What the flags are worth: of the flag policy's keeps, which are flagged, and how right the flags are."""
    head = ["floor factor", *[f"sd {s:g}" for s in sigmas]]
    out = []
    for factor in sorted({r.floor_factor for r in rows if r.policy == "flag"}):
        cells = []
        for s in sigmas:
            at = [r for r in rows if r.policy == "flag" and r.floor_factor == factor and r.sigma == s
                  and r.noise_repeats == DEFAULT_NOISE_REPEATS]
            cells.append(f"{statistics.fmean(r.flagged_share for r in at):.0%} flagged, "
                         f"{statistics.fmean(r.false_flagged_share for r in at):.0%} caught, "
                         f"{statistics.fmean(r.flagged_false_share for r in at):.0%} right")
        out.append([f"x{factor:g}", *cells])
    return _table(head, out)


def sensitivity_table(results: dict[str, list[Summary]], sigmas: Sequence[float]) -> str:
    head = ["scenario", "setting", *[f"sd {s:g}" for s in sigmas], "mean"]
    out = []
    for name, rows in results.items():
        for label in dict.fromkeys(r.label for r in rows):
            rs = [r for r in rows if r.label == label]
            cells = [f"{r.captured:.0%} / {r.false_keep_share:.0%}" for s in sigmas for r in rs if r.sigma == s]
            out.append([name, label, *cells,
                        f"{statistics.fmean(r.captured for r in rs):.0%} / "
                        f"{statistics.fmean(r.false_keep_share for r in rs):.0%}"])
    return _table(head, out)


def levers_moved_from_defaults(r: Summary) -> int:
    """How many of a setting's levers differ from the defaults (0: the policy at its defaults)."""
    return sum([r.floor_factor != DEFAULT_FLOOR_FACTOR,
                r.policy in RERUNNING and r.confirm_seeds != DEFAULT_CONFIRM_SEEDS,
                r.noise_repeats not in (0, DEFAULT_NOISE_REPEATS),
                r.policy == "sequential" and r.standard_errors != DEFAULT_STANDARD_ERRORS])


def versus_table(rows: Sequence[Summary], policy: str = "sequential", against: str = "confirm") -> str:
    """Per cell: false keeps and final true val_bpb of two policies at their defaults, and which is better."""
    head = ("noise sd", "budget", f"{against} false keeps", f"{policy} false keeps", f"{against} final",
            f"{policy} final", f"{policy} - {against}", "± se (either)", "no worse on both")
    out = []
    for sigma, budget in dict.fromkeys((r.sigma, r.budget) for r in rows):
        pair = {r.policy: r for r in rows if r.sigma == sigma and r.budget == budget}
        if policy not in pair or against not in pair:
            continue
        ours, theirs = pair[policy], pair[against]
        both = ours.false_keep_share <= theirs.false_keep_share and ours.final_bpb <= theirs.final_bpb
        out.append([f"{sigma:g}", str(budget), pct(theirs.false_keep_share), pct(ours.false_keep_share),
                    f"{theirs.final_bpb:.4f}", f"{ours.final_bpb:.4f}", f"{ours.final_bpb - theirs.final_bpb:+.4f}",
                    f"{max(ours.gap_se, theirs.gap_se):.4f}", "yes" if both else "no"])
    return _table(head, out)


def frontier_table(rows: Sequence[Summary], sigma: float, budget: int) -> str:
    """Every setting at one (sd, budget), best progress first: false keeps against the final true val_bpb, and
    that val_bpb against greedy's and confirm's on the same streams."""
    at = [r for r in rows if r.sigma == sigma and r.budget == budget]
    greedy = next((r.final_bpb for r in at if r.policy == "greedy"), float("nan"))
    confirm = next((r for r in at if r.policy == "confirm" and levers_moved_from_defaults(r) == 0), None)
    head = ("setting", "false keeps", "harmful keeps", "final true val_bpb", "vs greedy", "of best gain",
            "re-runs", "beats confirm on both")
    out = []
    for r in sorted(at, key=lambda r: r.final_bpb):
        both = "-" if confirm is None or r is confirm else (
            "yes" if r.final_bpb <= confirm.final_bpb and r.false_keep_share <= confirm.false_keep_share else "no")
        out.append([r.label, pct(r.false_keep_share), pct(r.harmful_keep_share), f"{r.final_bpb:.4f}",
                    f"{r.final_bpb - greedy:+.4f}", pct(r.captured), pct(r.rerun_share), both])
    return _table(head, out)


POLICY_STYLE = {"greedy": ("tab:red", "o"), "flag": ("tab:orange", "s"), "confirm": ("tab:blue", "^"),
                "strict": ("tab:green", "D"), "sequential": ("tab:purple", "v")}


def make_chart(main: Sequence[Summary], levers: Sequence[Summary], path: Path, budgets: Sequence[int],
               frontier_at: Sequence[tuple[int, float]]) -> None:
    """Six panels: four metrics against the noise sd (solid: the smaller budget, dashed: the larger), and the
    trade-off between progress and false keeps for every setting swept, at two (budget, sd) points."""
    try:
        import matplotlib
    except ImportError as exc:
        raise SystemExit("the chart needs matplotlib: pip install matplotlib") from exc
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(2, 3, figsize=(16, 9.5))
    panels = [
        (axes[0, 0], "false keeps (true effect zero or harmful), share of keeps", lambda r: r.false_keep_share),
        (axes[0, 1], "real gains missed, share of real gains judged", lambda r: r.gains_missed_share),
        (axes[0, 2], "progress: share of the best possible gain achieved", lambda r: r.captured),
        (axes[1, 0], "budget spent on re-runs and the floor (flag's line lies under strict's)",
         lambda r: r.rerun_share + r.noise_share),
    ]
    shown = [b for b in budgets if any(r.budget == b for r in main)]
    for ax, title, value in panels:
        for policy in POLICIES:
            color, marker = POLICY_STYLE[policy]
            for b, style in zip(shown, ("-", "--"), strict=False):
                rs = sorted((r for r in main if r.policy == policy and r.budget == b), key=lambda r: r.sigma)
                if rs:
                    ax.plot([r.sigma for r in rs], [100 * value(r) for r in rs], style, color=color, marker=marker,
                            markersize=4, label=f"{policy}, {b} runs")
        ax.set_xscale("log")
        sigmas = sorted({r.sigma for r in main})
        ax.set_xticks(sigmas, [f"{x:g}" for x in sigmas], fontsize=8)
        ax.minorticks_off()
        ax.set_xlabel("noise sd of val_bpb between runs")
        ax.set_ylabel("%")
        ax.set_title(title, fontsize=10)
        ax.grid(True, which="both", alpha=0.3)
    axes[0, 0].legend(fontsize=7, ncol=2)

    for ax, (b, s) in zip((axes[1, 1], axes[1, 2]), frontier_at, strict=False):
        pts = [r for r in levers if r.budget == b and r.sigma == s]
        for r in pts:
            color, marker = POLICY_STYLE[r.policy]
            levers_moved = levers_moved_from_defaults(r)
            default = levers_moved == 0
            ax.scatter(100 * r.false_keep_share, 100 * r.captured, color=color, marker=marker,
                       s=70 if default else 22, edgecolors="black" if default else "none", zorder=3)
            # Label the defaults and what moves away from them along one lever; the rest stay unlabelled dots.
            if levers_moved == 0 or (levers_moved == 1 and r.policy != "flag"):
                short = r.label.replace(f", R={DEFAULT_NOISE_REPEATS}", "")
                short = short.replace(" seeds", "s").replace(" seed", "s")
                ax.annotate(short, (100 * r.false_keep_share, 100 * r.captured), fontsize=6.5,
                            xytext=(4, -3 if r.policy == "flag" else 2), textcoords="offset points")
        ax.set_xlabel("false keeps, % of keeps (left is better)")
        ax.set_ylabel("% of the best possible gain (up is better)")
        ax.set_title(f"every setting swept, at sd {s:g} and {b} runs (ringed: the defaults)", fontsize=10)
        ax.grid(True, alpha=0.3)
    fig.suptitle("Keep policies in simulated campaigns (same proposals and noise for every policy)", fontsize=12)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


# ---- command line ------------------------------------------------------------------------------------------


def _floats(text: str) -> list[float]:
    try:
        values = [float(x) for x in text.split(",") if x.strip()]
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"expected numbers separated by commas, got {text!r}") from exc
    if not values or any(not math.isfinite(v) or v < 0 for v in values):
        raise argparse.ArgumentTypeError(f"expected finite numbers >= 0, got {text!r}")
    return values


def _ints(text: str) -> list[int]:
    try:
        values = [int(x) for x in text.split(",") if x.strip()]
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"expected whole numbers separated by commas, got {text!r}") from exc
    if not values or min(values) < 1:
        raise argparse.ArgumentTypeError(f"expected whole numbers >= 1, got {text!r}")
    return values


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    p.add_argument("--quick", action="store_true", help="a CI-sized check: few campaigns, two noise levels, "
                                                        "budgets 50 and 100, a small sweep")
    p.add_argument("--campaigns", type=int, help="campaigns per cell (default 200; 12 with --quick)")
    p.add_argument("--seed", type=int, default=20240, help="seed of the proposal streams (default 20240)")
    p.add_argument("--noise", type=_floats, help=f"noise sds (default {','.join(map(str, NOISE_LEVELS))})")
    p.add_argument("--budgets", type=_ints, help=f"budgets in runs (default {','.join(map(str, BUDGETS))})")
    p.add_argument("--scenario", choices=sorted(SCENARIOS), default="base", help="the proposal distribution")
    p.add_argument("--no-sweep", action="store_true", help="only the five policies at their defaults")
    p.add_argument("--jobs", type=int, default=min(2, os.cpu_count() or 1), help="worker processes (default 2)")
    p.add_argument("--json", type=Path, help="write every row as JSON here")
    p.add_argument("--chart", type=Path, help="draw the chart here (PNG or SVG, needs matplotlib)")
    args = p.parse_args(argv)
    if args.campaigns is None:
        args.campaigns = 12 if args.quick else 200
    if args.campaigns < 2:
        p.error("--campaigns must be at least 2 (a standard error needs two)")
    if args.jobs < 1:
        p.error("--jobs must be at least 1")
    args.noise = args.noise or ([0.001, 0.005] if args.quick else list(NOISE_LEVELS))
    args.budgets = sorted(args.budgets or ([50, 100] if args.quick else list(BUDGETS)))
    need = (DEFAULT_NOISE_REPEATS if args.no_sweep else max(SWEPT_REPEATS)) + 2
    if args.budgets[0] < need:
        p.error(f"--budgets must be at least {need} runs: the floor's repeats and the baseline come first")
    if args.chart is not None and args.chart.suffix.lower() not in (".png", ".svg"):
        p.error("--chart must end in .png or .svg")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    scenario = SCENARIOS[args.scenario]
    start = time.perf_counter()
    main_set = main_setups()
    if args.no_sweep:
        sweep: list[Setup] = []
    elif args.quick:
        sweep = tuning_setups((1.0, 2.0, 3.0), (1, 2), SWEPT_REPEATS, (0.5, 1.0))
    else:
        sweep = tuning_setups((1.0, 1.5, 2.0, 3.0, 4.0), (1, 2, 3), SWEPT_REPEATS, (0.25, 0.5, 0.75, 1.0))
    rows = run_grid([*main_set, *sweep], args.noise, args.budgets, scenario, args.campaigns, args.seed, args.jobs)
    main_rows = [r for s in main_set for r in rows if r.label == s.label]
    main_rows.sort(key=lambda r: (r.sigma, r.budget, POLICIES.index(r.policy)))
    sensitivity: dict[str, list[Summary]] = {}
    if not args.no_sweep:
        probe_budget = 100 if 100 in args.budgets else args.budgets[0]
        probe = [*main_set, *(Setup("confirm", DEFAULT_FLOOR_FACTOR, n) for n in (1, 2, 3)
                              if n != DEFAULT_CONFIRM_SEEDS)]
        for name, other in SCENARIOS.items():
            if name != args.scenario:
                sensitivity[name] = run_grid(probe, args.noise, [probe_budget], other, args.campaigns, args.seed,
                                             args.jobs)
    wall = time.perf_counter() - start

    print("# Keep policies in simulated campaigns\n")
    print(f"scenario {args.scenario}: {scenario.describe()}")
    print(f"{args.campaigns} campaigns per cell, seed {args.seed}; defaults: floor factor {DEFAULT_FLOOR_FACTOR:g}, "
          f"confirm seeds {DEFAULT_CONFIRM_SEEDS}, floor measured with {DEFAULT_NOISE_REPEATS} repeats inside "
          f"the budget (greedy does not measure it)")
    print(f"wall time {wall:.1f} s with {args.jobs} worker{'s' if args.jobs > 1 else ''}\n")
    print("## The policies at their defaults\n")
    print(main_table(main_rows) + "\n")
    if sweep:
        print("## The levers: share of the best possible gain achieved / false keeps (mean over budgets "
              f"{', '.join(map(str, args.budgets))})\n")
        print(lever_table([r for r in rows if r.policy != "flag" or r.floor_factor == DEFAULT_FLOOR_FACTOR],
                          args.noise) + "\n")
        print("## Flags (policy flag): share of keeps flagged, share of false keeps caught, share of flags right\n")
        print(flag_table(rows, args.noise) + "\n")
        for sigma, budget in FRONTIER_CELLS:
            if sigma in args.noise and budget in args.budgets:
                print(f"## The frontier at sd {sigma:g} and {budget} runs: every setting, best progress first\n")
                print(frontier_table(rows, sigma, budget) + "\n")
    print("## Sequential against confirm, both at their defaults, in every cell\n")
    print(versus_table(main_rows) + "\n")
    if sensitivity:
        print(f"## Other scenarios, budget {probe_budget}: share of the best possible gain / false keeps\n")
        for name, other in SCENARIOS.items():
            if name in sensitivity:
                print(f"- {name}: {other.describe()}")
        print()
        print(sensitivity_table(sensitivity, args.noise) + "\n")
    if args.json:
        payload = {"scenario": asdict(scenario), "campaigns": args.campaigns, "seed": args.seed,
                   "wall_seconds": wall, "rows": [asdict(r) for r in rows],
                   "sensitivity": {k: [asdict(r) for r in v] for k, v in sensitivity.items()}}
        args.json.write_text(json.dumps(payload, indent=1, allow_nan=True), encoding="utf-8")
    if args.chart:
        frontier = [(b, s) for b, s in ((100, 0.002), (500, 0.005)) if b in args.budgets and s in args.noise]
        if len(frontier) < 2:
            frontier = [(args.budgets[0], args.noise[0]), (args.budgets[-1], args.noise[-1])]
        shown = [b for b in (100, 500) if b in args.budgets] or args.budgets[:2]
        make_chart(main_rows, rows, args.chart, shown, frontier)
        print(f"chart: {args.chart}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
