"""The scale-transfer check, run for real: the chain of keeps at a larger scale, through the trials' machinery.

Each code of the chain (every judged keep and its parent) runs with the same seeds, round-robin (seed 1 of every
code, then seed 2...), so a stop half-way leaves every code with about as many runs, and a machine that slows
down during the check slows every code alike. Every run is a trial run in all but name: the keep's committed
script with the scale's lines added (supervisor/core/transfer.py), in the run's sandbox, measured by the trusted
evaluator, under the scaled budget; a run that changes the harness, the evaluation data or the git directory
has no number, as a trial would not. Runs go to the ledger's transfer_runs table, never to trials: the check
judges the night's keeps, it is not part of the night.

A check that is stopped or killed keeps what finished; the next `autoresearch transfer` at the same scale runs
only what is missing (a run left "running" by a dead supervisor is killed if alive and recorded as aborted).
"""

from __future__ import annotations

import hashlib
import statistics
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path

from supervisor.core import events as ev
from supervisor.core.transfer import (
    TRANSFER_SEED_BASE,
    ChainLink,
    Scale,
    ScaleError,
    TransferResult,
    codes_to_run,
    keep_chain,
    label_chain,
    scale_script,
)
from supervisor.core.types import RunState, TransferRun, TransferStatus, Trial
from supervisor.run.executor import TrialExecutor, kill_orphan_trial
from supervisor.store.ledger import Ledger
from supervisor.trial.runner import TrialOutcome, run_trial, summary_float

UNSCALABLE = "could not be scaled: "
ABORTED_BY_DEATH = "the supervisor stopped during this run; it was not finished"


@dataclass(frozen=True)
class TransferPlan:
    """What a check at one scale will run: the chain, its codes, and the (code, seed) runs still missing."""

    scale: Scale
    chain: list[ChainLink]
    codes: list[Trial]
    seeds: int
    missing: list[tuple[int, Trial]]  # (seed index, code), in the order they run
    done: int  # runs of this scale already finished (ok or crashed) in the ledger

    def describe(self, budget_s: float, budget_tokens: int | None) -> str:
        judged = [link.keep.id for link in self.chain if link.parent is not None]
        per_run = self.scale.budget_s(budget_s)
        tokens = self.scale.budget_tokens(budget_tokens)
        budget = f"{tokens:,} tokens (at most {per_run:g} s)" if tokens else f"{per_run:g} s"
        lines = [f"scale: {self.scale.key}",
                 f"keeps judged: {len(judged)} ({', '.join(map(str, judged)) or 'none'}); codes run: "
                 f"{len(self.codes)} (trials {', '.join(str(c.id) for c in self.codes) or 'none'})",
                 f"seeds per code: {self.seeds}; runs: {len(self.missing)} to go"
                 + (f", {self.done} already done" if self.done else ""),
                 f"budget per run: {budget}; training alone: about {len(self.missing) * per_run / 60:.0f} min"]
        return "\n".join(lines)


def scale_dir(run_dir: Path, scale: Scale) -> Path:
    """Where the runs of one scale keep their logs (the key hashed: it holds spaces and '=')."""
    return run_dir / "transfer" / hashlib.sha256(scale.key.encode()).hexdigest()[:10]


def _finished(runs: list[TransferRun]) -> set[tuple[int, int]]:
    """(trial, seed) pairs that need no new run: finished, crashed, or not scalable (crashing again is waste)."""
    return {(r.trial_id, r.seed) for r in runs if r.status in (TransferStatus.OK, TransferStatus.CRASH)}


def plan_transfer(ledger: Ledger, scale: Scale, seeds: int, last: int | None = None) -> TransferPlan:
    """The check's plan from the ledger alone (nothing is written)."""
    if seeds < 1:
        raise ScaleError(f"--seeds must be at least 1, got {seeds}")
    chain = keep_chain(ledger.trials(), last)
    codes = codes_to_run(chain) if any(link.parent is not None for link in chain) else []
    runs = ledger.transfer_runs(scale.key)
    finished = _finished(runs)
    unscalable = {r.trial_id for r in runs if (r.reason or "").startswith(UNSCALABLE)}
    missing = [(i, code) for i in range(seeds) for code in codes
               if (code.id, TRANSFER_SEED_BASE + i) not in finished and code.id not in unscalable]
    return TransferPlan(scale, chain, codes, seeds, missing, len(finished))


def abort_left_running(ledger: Ledger, command: list[str]) -> list[int]:
    """Runs a dead supervisor left running: their processes killed if still alive, recorded as aborted."""
    for run in ledger.transfer_runs():
        if run.status == TransferStatus.RUNNING and run.pid:
            kill_orphan_trial(run.pid, command)
    return ledger.abort_running_transfer_runs(ABORTED_BY_DEATH)


class TransferCheck:
    """Runs a plan with one executor (the run's workspace, sandbox and evaluator), then labels the keeps."""

    def __init__(self, executor: TrialExecutor, run_stopping: Callable[[], bool]) -> None:
        self.ex = executor
        self.ledger = executor.ledger
        self.run_stopping = run_stopping
        self._unscalable: set[int] = set()  # codes this check found it cannot run at the scale

    def run(self, plan: TransferPlan) -> TransferResult:
        ex = self.ex
        for run_id in abort_left_running(self.ledger, ex.config.layout.command):
            ex.bus.emit(ev.NOTICE, level="warning", message=f"transfer run {run_id} was left running by a "
                                                            "supervisor that stopped; recorded as aborted")
        ex.trial_stop.clear()
        ex.discard_warm()  # a warm interpreter is prepared for the night's budget and script, not this one
        total = len(plan.missing)
        try:
            for n, (index, code) in enumerate(plan.missing, start=1):
                if self.run_stopping() or ex.trial_stop.is_set():
                    ex.bus.emit(ev.NOTICE, level="warning", message="transfer check stopped: what finished is kept; "
                                                                    "the same command runs the rest")
                    break
                if code.id in self._unscalable:
                    continue  # found out on an earlier seed: its other seeds would say the same
                self._one(plan.scale, code, TRANSFER_SEED_BASE + index, f"run {n} of {total}")
        finally:
            ex.restore_branch()
        return transfer_result(self.ledger, plan.scale.key, ex.config.floor_factor)

    def _one(self, scale: Scale, code: Trial, seed: int, progress: str) -> None:
        ex, ledger = self.ex, self.ledger
        assert code.commit_sha is not None
        run_id = ledger.start_transfer_run(scale=scale.key, scale_json=scale.as_dict(), trial_id=code.id,
                                           commit_sha=code.commit_sha, seed=seed)
        try:
            scaled = scale_script(ex.workspace.show_file(code.commit_sha, ex.editable), scale)
        except ScaleError as exc:
            self._unscalable.add(code.id)
            ledger.finish_transfer_run(run_id, status=TransferStatus.CRASH, reason=f"{UNSCALABLE}{exc}")
            ex.bus.emit(ev.NOTICE, level="warning", message=f"transfer: trial {code.id} {UNSCALABLE}{exc}")
            return
        ex.set_state(RunState.TRIAL, f"transfer check ({scale.key}): trial {code.id}, seed {seed} ({progress})")
        ex.bus.emit(ev.NOTICE, level="info", message=f"transfer ({scale.key}): trial {code.id}, seed {seed}, "
                                                     f"{progress}")
        ex.workspace.reset_to(code.commit_sha)
        ex.workspace.editable_path.write_text(scaled, encoding="utf-8")
        outcome = run_trial(self._spec(scale, code, seed), stop_event=ex.trial_stop,
                            on_start=lambda pid: ledger.set_transfer_pid(run_id, pid))
        problem = ex.after_run_problem()
        status, value, reason = _result(outcome, problem)
        unchanged = _scale_without_effect(scale, code, outcome)
        if status == TransferStatus.OK and unchanged:
            self._unscalable.add(code.id)
            status, value, reason = TransferStatus.CRASH, None, f"{UNSCALABLE}{unchanged}"
        ledger.finish_transfer_run(run_id, status=status, val_bpb=value, reason=reason,
                                   wall_seconds=outcome.wall_seconds)
        said = f"val_bpb {value:.6f}" if value is not None else f"{status}: {reason}"
        ex.bus.emit(ev.NOTICE, level="info" if value is not None else "warning",
                    message=f"transfer ({scale.key}): trial {code.id}, seed {seed}: {said}")
        ex.set_state(RunState.RUNNING, "")

    def _spec(self, scale: Scale, code: Trial, seed: int):
        cfg = self.ex.config
        out_dir = scale_dir(cfg.run_dir, scale) / f"trial{code.id}-seed{seed}"
        spec = self.ex.spec(out_dir, seed)
        budget_s = scale.budget_s(cfg.budget_s)
        # The warm-up allowance was calibrated on the night's model; a deeper one compiles and exports slower,
        # so a scaled run gets the deadline (--grace, or a quarter of its own budget) instead.
        grace = cfg.grace_s if cfg.grace_s is not None else max(30.0, 0.25 * budget_s)
        return replace(spec, budget_s=budget_s, budget_tokens=scale.budget_tokens(cfg.budget_tokens),
                       grace_s=grace, allowance_s=None, allowance_source="--grace")


def _scale_without_effect(scale: Scale, code: Trial, outcome: TrialOutcome) -> str | None:
    """Why a deeper run evidently was not deeper: it reports the night's parameter count (a script whose model
    ignores its depth constant, say `GPT(n_layer=6)`). None when it changed, or either count is unknown."""
    if scale.depth_factor == 1 or code.num_params_m is None:
        return None
    scaled = summary_float(outcome.summary, "num_params_M")
    if scaled is None or abs(scaled - code.num_params_m) > 1e-9 * max(1.0, abs(scaled)):
        return None
    return (f"the run at {scale.key} reports the night's parameter count ({scaled:g}M): the model does not "
            f"follow {scale.depth_name}, so the run is not at the larger scale")


def _result(outcome: TrialOutcome, problem: str) -> tuple[TransferStatus, float | None, str | None]:
    if outcome.stopped:
        return TransferStatus.ABORTED, None, "stopped"
    if problem:
        return TransferStatus.CRASH, None, f"the run changed {problem}: its number is void"
    if outcome.status == "ok" and outcome.val_bpb is not None:
        return TransferStatus.OK, outcome.val_bpb, None
    return TransferStatus.CRASH, None, outcome.reason


def transfer_result(ledger: Ledger, scale_key: str, factor: float, trials: list[Trial] | None = None,
                    runs: list[TransferRun] | None = None) -> TransferResult:
    """The labels at one scale from the ledger: the keeps whose code and parent's code ran there. ``trials`` and
    ``runs`` (of this scale): what the caller already read, so a status poll reads the ledger once."""
    runs = ledger.transfer_runs(scale_key) if runs is None else runs
    ran = {r.trial_id for r in runs}
    chain = [link for link in keep_chain(ledger.trials() if trials is None else trials)
             if link.parent is not None and link.keep.id in ran and link.parent.id in ran]
    values: dict[int, list[float]] = {}
    for r in runs:
        if r.status == TransferStatus.OK and r.val_bpb is not None:
            values.setdefault(r.trial_id, []).append(r.val_bpb)
    unscalable = {r.trial_id: (r.reason or "")[len(UNSCALABLE):] for r in runs
                  if (r.reason or "").startswith(UNSCALABLE)}
    return label_chain(chain, values, factor, unscalable, scale_key)


def transfer_results(ledger: Ledger, factor: float, trials: list[Trial] | None = None) -> list[TransferResult]:
    """Every scale the run was checked at, in the order first checked (nothing more is read when there is none)."""
    runs = ledger.transfer_runs()
    if not runs:
        return []
    trials = ledger.trials() if trials is None else trials
    keys = list(dict.fromkeys(r.scale for r in runs))
    return [transfer_result(ledger, key, factor, trials, [r for r in runs if r.scale == key]) for key in keys]


def scale_means(ledger: Ledger, scale_key: str) -> dict[int, float]:
    """The mean val_bpb of every code at one scale (for the report's chart)."""
    values: dict[int, list[float]] = {}
    for r in ledger.transfer_runs(scale_key):
        if r.status == TransferStatus.OK and r.val_bpb is not None:
            values.setdefault(r.trial_id, []).append(r.val_bpb)
    return {k: statistics.fmean(v) for k, v in values.items()}


def result_lines(result: TransferResult) -> list[str]:
    """The labels as lines for a terminal: one per judged keep, then the counts."""
    if not result.verdicts:
        return [f"scale {result.scale_key}: no keep could be judged (no keep with a parent ran there)"]
    lines = [f"scale {result.scale_key}" + (f" (pooled sd {result.sd:.2g})" if result.sd else "")]
    for v in result.verdicts:
        base = f"night gain {v.base_gain:+.4f}; " if v.base_gain is not None else ""
        lines.append(f"  trial {v.keep.id:>4} {str(v.label):<13} {base}{v.reason}: {v.keep.description}")
    counts = result.counts()
    lines.append("  " + ", ".join(f"{n} {label}" for label, n in counts.items()))
    return lines
