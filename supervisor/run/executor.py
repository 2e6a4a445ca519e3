"""The trial executor: commit, run, decide, record and reset one trial.

The only part of the loop that touches git (through Workspace) and the trainer (through the runner). The
loop hands it a description; it hands back what the agent reads. Killed at any failpoint, the ledger says
what happened: a started trial without a result is marked aborted on --resume, never half-recorded.
"""

from __future__ import annotations

import logging
import math
import os
import signal
import statistics
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from supervisor.agents.base import ToolOutcome
from supervisor.core import events as ev
from supervisor.core import prompts
from supervisor.core.config import RunConfig
from supervisor.core.failpoints import failpoint
from supervisor.core.paths import RunPaths
from supervisor.core.policy import KeepPolicy, Verdict
from supervisor.core.repeats import same_change
from supervisor.core.types import UNSANDBOXED_PREFIX, RunState, Trial, TrialKind, TrialStatus, is_unsandboxed
from supervisor.run.floor import (
    POOLED_FROM,
    POOLED_RUNS,
    RERUN_SEED_BASE,
    RETEST_SEED_BASE,
    floor_machine,
    noise_estimate,
    own_runs,
    rerun_values,
)
from supervisor.run.sentinel import (
    MachineLoad,
    MachineSample,
    compute_neutral,
    drift_reasons,
    load_between,
    sample_machine,
)
from supervisor.run.trial_setup import TrialSetup
from supervisor.store.journal_files import JournalFiles
from supervisor.store.ledger import Ledger
from supervisor.trial.edits import EditError, read_text_in_workspace
from supervisor.trial.evaluation import AUDIT_JOB_DIR, audit_unavailable, kept_model, score_audit
from supervisor.trial.guards import (
    eval_fingerprint,
    finding_rules,
    fingerprint_changes,
    scan_diff,
    scan_source,
)
from supervisor.trial.platform_info import platform_info
from supervisor.trial.runner import TrialOutcome, TrialSpec, run_trial, summary_float
from supervisor.trial.warm_start import COMPILE_MODULES, WarmStarter
from supervisor.trial.workspace import Workspace

log = logging.getLogger(__name__)

PRIMARY_SEED = 42
CONFIRM_SEED_BASE = 1000
# An unchanged re-run of a keep is a new sample of its code, so it gets a seed of its own: this base, plus
# 1000 x the keep's id, plus how many runs the keep has (no two re-runs of one keep share a seed).
METRIC_FLUSH_S = 1.0
WARMUP_SAMPLES = 10  # the unmodified script's last warm-ups the allowance is calibrated from
METRICS_KEPT_FULLY = 20_000  # a trial's metric records stored one for one; beyond, ever more thinly

SetState = Callable[[RunState, str], None]


@dataclass
class _Verdict:
    status: TrialStatus
    flagged: bool
    decision: str


@dataclass
class _Run:
    """What the supervisor knows about one trial's run besides its outcome."""

    seed: int
    rerun_of: Trial | None  # the keep whose code this trial ran unchanged (an empty diff), else None
    compute_neutral: bool  # the change cannot alter the work of a step (sentinel.compute_neutral)
    load: MachineLoad | None = None  # what other processes did while the deciding run ran
    drift: list[str] = field(default_factory=list)  # why the deciding run may measure the machine
    note: str = ""  # what happened before the deciding run (a drifted first run, run again)
    first_run: str = ""  # the drifted first run's numbers, when a second run followed it
    # Runs of this change measured before the deciding run, which count with it: the change's earlier re-tests
    # on this keep (pooled_from names them), then a drifted first run. A second draw is not a free retry.
    earlier_values: list[float] = field(default_factory=list)
    pooled_from: list[int] = field(default_factory=list)

    def summary(self) -> dict[str, str]:
        """The trial summary's supervisor.* fields about the machine and the re-run."""
        out = self.load.as_summary() if self.load is not None else {}
        out["supervisor.compute_neutral"] = str(self.compute_neutral).lower()
        if self.rerun_of is not None:
            out["supervisor.rerun_of"] = str(self.rerun_of.id)
        if self.drift:
            out["supervisor.drift"] = "; ".join(self.drift)
        if self.first_run:
            out["supervisor.drifted_first_run"] = self.first_run
        if self.pooled_from:
            out[POOLED_FROM] = ",".join(str(i) for i in self.pooled_from)
            out[POOLED_RUNS] = str(len(self.earlier_values) - (1 if self.first_run else 0))
        return out


@dataclass
class _Guard:
    """What the guards found about one trial: its script against its parent's, and the harness and data after."""

    findings: list[str]  # constructs in the script (guards.scan_source): the number is never kept
    harness_intact: bool = True
    eval_changed: list[str] = field(default_factory=list)
    tampered: list[str] = field(default_factory=list)  # what the git guard repaired after the trial

    @property
    def untrusted(self) -> str:
        """What the trial changed that voids its number ("" when nothing): a crash."""
        if not self.harness_intact:
            return "the harness"
        if self.tampered:
            return "the workspace's git directory"
        return "the validation data" if self.eval_changed else ""

    @property
    def suspicions(self) -> list[str]:
        """Every finding, one sentence each, as the ledger keeps them."""
        out = list(self.findings)
        if not self.harness_intact:
            out.append("harness: the trial changed the read-only harness while it ran")
        if self.eval_changed:
            out.append(f"validation data: the trial changed {', '.join(self.eval_changed)} while it ran")
        out.extend(f"git directory: {what}" for what in self.tampered)
        return out


def sandbox_text(outcome: TrialOutcome) -> str | None:
    """How a run was confined, as the ledger records it: the runner's label ("bwrap"), "none: <why>" when it
    ran without a sandbox, None when the runner gave no label (it never started the trial)."""
    how = str(getattr(outcome, "sandbox", "") or "").strip()
    if not how or getattr(outcome, "sandboxed", True):
        return how or None
    return how if is_unsandboxed(how) else f"{UNSANDBOXED_PREFIX}: {how}"


def combined_sandbox(runs: list[str | None]) -> str | None:
    """One trial's runs (the primary and its confirmation re-runs): unsandboxed if any run was."""
    return next((r for r in runs if is_unsandboxed(r)), None) or next((r for r in runs if r), None)


class TrialExecutor:
    """Runs trials in the run's workspace and records them in the ledger."""

    def __init__(self, config: RunConfig, ledger: Ledger, files: JournalFiles, bus: ev.EventBus, *,
                 set_state: SetState, run_stopping: Callable[[], bool],
                 runner: Callable[..., TrialOutcome] = run_trial, warm: WarmStarter | None = None) -> None:
        self.config = config
        self.ledger = ledger
        self.files = files
        self.bus = bus
        self.paths = RunPaths(config.run_dir)
        self.platform = platform_info()
        self.trial_stop = threading.Event()  # set to stop the trial that runs now (stop-trial, stop)
        self.warm = warm
        self.last_compiled = False  # whether the last trial compiled: its successor's warm start preloads inductor
        self.set_state = set_state
        self._run_stopping = run_stopping
        self._runner = runner
        self._harness_hash = ""
        self._sandboxes: list[str | None] = []  # how each run of the current trial was confined
        # Reads the machine before and after every run (the speed sentinel); tests put a simulated machine here.
        self.read_machine: Callable[[], MachineSample] = sample_machine

    # ---- the workspace ------------------------------------------------------------------------------------
    def create_workspace(self) -> None:
        """A new run: clone the research repo (or adopt an upstream checkout). Raises WorkspaceError."""
        cfg = self.config
        if cfg.upstream_repo:
            self.workspace = Workspace.adopt(cfg.upstream_repo, cfg.layout, cfg.branch)
        else:
            self.workspace = Workspace.create(cfg.workspace, cfg.source_dir, cfg.layout, cfg.branch)
        self._harness_hash = self.workspace.committed_harness_hash()
        self.ledger.set_meta("eval_fingerprint", eval_fingerprint(cfg.cache_dir))
        self._set_up_trials()

    def open_workspace(self) -> None:
        """A resumed run: the existing workspace on its branch. Raises WorkspaceError."""
        self.workspace = Workspace(self.config.workspace, self.config.layout, self.config.branch)
        self.workspace.ensure_branch()
        self._harness_hash = self.workspace.committed_harness_hash()
        self._set_up_trials()

    def _set_up_trials(self) -> None:
        """The sandbox and the trusted evaluator of this run's trials; an unsandboxed run says so now."""
        self.setup = TrialSetup(self.config, self.workspace.root, self.ledger.get_meta("eval_fingerprint"))
        root = self.workspace.repo.git.rev_list("--max-parents=0", "HEAD").splitlines()[0]
        self._initial_script = self.workspace.show_file(root, self.editable)
        self.setup.write_pristine_harness({rel: self.workspace.show_file(root, rel)
                                           for rel in self.config.layout.harness})
        for repaired in self.workspace.tamper_findings():  # found when the run opened: before any trial of it
            self.bus.emit(ev.NOTICE, level="warning", message=f"workspace: {repaired}")
        if not self.setup.choice.active:
            self.bus.emit(ev.NOTICE, level="warning", message=prompts.UNSANDBOXED_RUN.format(
                why=self.setup.choice.why_not))

    def abort_interrupted(self) -> list[int]:
        """Trials a killed supervisor left running: killed if still alive, marked aborted, not counted."""
        ids = []
        for trial in self.ledger.running_trials():
            if trial.pid:
                kill_orphan_trial(trial.pid, self.config.layout.command)
            self.ledger.finish_trial(trial.id, status=TrialStatus.ABORTED,
                                     crash_reason="the supervisor stopped during this trial; it was not finished")
            ids.append(trial.id)
        return ids

    def restore_branch(self) -> None:
        """Back to the last keep, harness as committed; remember whether the last trial compiled."""
        self.workspace.reset_to(self.branch_target())
        if self.workspace.harness_hash() != self._harness_hash:
            self.workspace.restore_harness()
        finished = self.ledger.finished_trials()
        if finished:
            self.last_compiled = str(finished[-1].summary.get("compiled", "")).strip().lower() == "true"

    def branch_target(self) -> str:
        """Where the branch must be: the last keep, or the initial commit before any keep."""
        best = self.ledger.best_keep()
        if best and best.commit_sha:
            return best.commit_sha
        return self.workspace.repo.git.rev_list("--max-parents=0", self.config.branch).splitlines()[0]

    @property
    def root(self) -> Path:
        return self.workspace.root

    @property
    def editable(self) -> str:
        return self.config.layout.editable

    def editable_text(self) -> str:
        # Opened as read_file opens it: an unsandboxed trial may have left a FIFO or a hard link there.
        try:
            return read_text_in_workspace(self.workspace.root, self.editable, editable=self.editable)
        except EditError as exc:
            return f"(the editable file cannot be shown: {exc})"

    def working_diff(self) -> str:
        return self.workspace.working_diff()

    def revert_edits(self) -> str:
        return self.workspace.revert_editable()

    # ---- what the run knows about its trials ---------------------------------------------------------------
    def trials_done(self) -> int:
        return len([t for t in self.ledger.finished_trials() if t.kind == TrialKind.TRIAL])

    def trial_budget_left(self) -> int | None:
        if self.config.max_trials is None:
            return None
        return self.config.max_trials - self.trials_done()

    def noise_sd(self) -> float | None:
        """The sd decisions use: the floor's seeds pooled with every group of identical-code re-runs."""
        noise = noise_estimate(self.ledger, self.config.budget_s)
        return None if noise is None else noise.sd

    def noise_floor(self) -> float | None:
        sd = self.noise_sd()
        return None if sd is None else sd * self.config.floor_factor

    def policy(self) -> KeepPolicy:
        return KeepPolicy(self.config.policy, self.config.floor_factor, self.config.confirm_seeds)

    def result_text(self, trial: Trial, parent: Trial | None) -> str:
        return prompts.result_text(trial, parent, self.noise_floor())

    def results_table(self, last: int | None = None, status: str | None = None) -> str:
        trials = self.ledger.finished_trials()
        if status:
            trials = [t for t in trials if t.status == status]
        if last:
            trials = trials[-last:]
        return prompts.results_table(trials, self.noise_floor(), self.config.policy)

    # ---- one trial -----------------------------------------------------------------------------------------
    def run_trial(self, description: str, category: str | None, plan_id: int | None,
                  same_change_as: Trial | None = None) -> ToolOutcome:
        """Commit, run, decide, record, reset. Called by the run_trial tool.

        ``same_change_as``: an earlier trial that made this same change to this same keep (a deliberate re-test,
        run_trial's retest_of). Its runs count with this one's, so re-testing until the noise is kind is no
        free retry; this run gets a new seed, to be a new sample."""
        refusal = self._refusal()
        if refusal:
            return ToolOutcome("run_trial", ok=False, refused=True, content=refusal)
        self._only_editable_changed()
        best = self.ledger.best_keep()
        ws = self.workspace
        parent_commit = ws.head()
        diff = ws.working_diff()
        # The keep's own code run again is a sample of it (re-runs are samples): pooled, never judged as an idea.
        rerun_of = best if best is not None and best.commit_sha == parent_commit and not diff.strip() else None
        seed = PRIMARY_SEED if rerun_of is None else \
            RERUN_SEED_BASE + 1000 * rerun_of.id + len(rerun_of.all_values) + len(self._reruns(rerun_of))
        group, earlier = self._change_group(diff, best) if same_change_as is not None and rerun_of is None \
            else ([], [])
        if group:  # a new seed for every re-test of the change: the first trial's id and how many came before
            seed = RETEST_SEED_BASE + 1000 * group[0].id + len(group)
        failpoint("before_commit")
        commit = ws.commit_trial(f"trial: {description}")
        failpoint("after_commit")
        findings = self.scan(parent_commit, commit, diff)
        self._sandboxes = []
        trial_id = self.ledger.start_trial(
            commit_sha=commit, parent_commit=parent_commit, parent_trial=best.id if best else None,
            description=description, category=category, plan_id=plan_id, diff=diff,
            budget_s=self.config.budget_s, platform=self.platform, seed=seed,
        )
        failpoint("trial_started")
        self.trial_stop.clear()
        self.set_state(RunState.TRIAL, f"trial {trial_id}: {description}")
        self.bus.emit(ev.TRIAL_STARTED, trial_id=trial_id, commit=commit, parent=parent_commit,
                      description=description, budget_s=self.config.budget_s, seed=seed,
                      parent_trial=best.id if best else None)
        run = _Run(seed, rerun_of, self._compute_neutral(parent_commit, commit, diff))
        if earlier:
            run.earlier_values = list(earlier)
            run.pooled_from = [t.id for t in group if t.status != TrialStatus.CRASH]
            ids = [str(i) for i in run.pooled_from]
            trials = f"trial {ids[0]}" if len(ids) == 1 else f"trials {', '.join(ids[:-1])} and {ids[-1]}"
            run.note = prompts.DECISION_RETEST_POOLED.format(earlier=trials, runs=len(earlier) + 1,
                                                             values=", ".join(prompts.fmt(v) for v in earlier))
        outcome = self._measured_run(run, trial_id, self.paths.trial_dir(trial_id), live=True)
        guard = self._check_after(findings)
        if outcome.stopped:
            return self._stopped(trial_id, outcome, parent_commit)
        return self._record(trial_id, outcome, best, parent_commit, guard, run)

    def _change_group(self, diff: str, best: Trial | None) -> tuple[list[Trial], list[float]]:
        """Every judged trial that made this change (exactly, or written differently) to this keep, oldest first,
        and the runs they ran themselves (a crash has none): what a re-test of the change is judged with."""
        if best is None:
            return [], []
        group = [t for t in self.ledger.finished_trials() if t.kind == TrialKind.TRIAL and
                 t.parent_trial == best.id and t.diff.strip() and same_change(diff, t.diff)]
        return group, [v for t in group if t.status != TrialStatus.CRASH for v in own_runs(t)]

    def _measured_run(self, run: _Run, trial_id: int, out_dir: Path, live: bool) -> TrialOutcome:
        """One run of the trial, between two readings of the machine (the speed sentinel)."""
        before = self.read_machine()
        outcome = self.execute(trial_id, out_dir, run.seed, live=live)
        run.load = load_between(before, self.read_machine())
        return outcome

    def _compute_neutral(self, parent_commit: str, commit: str, diff: str) -> bool:
        """Whether the change cannot alter the work of a step, so its throughput must match its parent's."""
        if not diff.strip():
            return True
        if not self.editable.endswith(".py"):
            return False
        try:
            return compute_neutral(self.workspace.show_file(parent_commit), self.workspace.show_file(commit))
        except Exception:  # noqa: BLE001 - git could not show a side: not known to be neutral
            return False

    def scan(self, parent_commit: str, commit: str, diff: str) -> list[str]:
        """The guards' findings in the committed script, against its parent's (what the parent already did is
        not reported again); from the diff alone when either side cannot be read as Python source."""
        if not self.editable.endswith(".py"):
            return scan_diff(diff)
        try:
            new, old = self.workspace.show_file(commit), self.workspace.show_file(parent_commit)
        except Exception:  # noqa: BLE001 - git could not show a side (a new file): the diff is what there is
            return scan_diff(diff)
        if new == old:
            return []
        try:
            return scan_source(new, old)
        except Exception as exc:  # noqa: BLE001 - a fault in the scanner must hold the trial, not lose it
            return [prompts.GUARD_FAILED.format(error=f"{type(exc).__name__}: {exc}")]

    def _refusal(self) -> str | None:
        """Why no trial may run now (a changed harness, changed validation data), or None."""
        if not self._harness_ok():
            self.workspace.restore_harness()
            return prompts.HARNESS_CHANGED.format(harness=", ".join(self.config.layout.harness))
        changed = self._eval_data_changed()
        if changed:
            return prompts.EVAL_DATA_CHANGED.format(changed=", ".join(changed), cache_dir=self.config.cache_dir)
        return None

    def _only_editable_changed(self) -> None:
        """Only the editable file may differ from the last keep: revert every other tracked change."""
        ws = self.workspace
        untracked = set(ws.repo.untracked_files)
        stray = [p for p in ws.dirty_paths() if p != self.editable and p not in untracked]
        if stray:
            ws.repo.git.checkout("HEAD", "--", *stray)

    def _check_after(self, findings: list[str]) -> _Guard:
        """After the run: restore a changed harness; everything the guards found about the trial."""
        harness_intact = self._harness_ok()
        if not harness_intact:
            self.workspace.restore_harness()
        # What a trial planted in .git is put back (before any git command too), and voids its number.
        return _Guard(findings, harness_intact, self._eval_data_changed(), self.workspace.tamper_findings())

    def _stopped(self, trial_id: int, outcome: TrialOutcome, parent_commit: str) -> ToolOutcome:
        if not self._run_stopping():
            self.ledger.finish_trial(trial_id, status=TrialStatus.ABORTED, crash_reason=prompts.STOPPED_BY_PERSON,
                                     log_tail=outcome.log_tail, wall_seconds=outcome.wall_seconds,
                                     sandbox=combined_sandbox(self._sandboxes))
            self.workspace.reset_to(parent_commit)
            self.set_state(RunState.RUNNING, "")
            self.bus.emit(ev.TRIAL_FINISHED, trial_id=trial_id, status=TrialStatus.ABORTED, val_bpb=None, delta=None,
                          flagged=False, decision=prompts.STOPPED_BY_PERSON)
            return ToolOutcome("run_trial", ok=False,
                               content=prompts.TRIAL_STOPPED_BY_PERSON.format(trial_id=trial_id))
        # The whole run is stopping: leave it for --resume to mark aborted.
        self.ledger.finish_trial(trial_id, status=TrialStatus.ABORTED, crash_reason="the run was stopped",
                                 log_tail=outcome.log_tail, sandbox=combined_sandbox(self._sandboxes))
        self.workspace.reset_to(parent_commit)
        return ToolOutcome("run_trial", ok=False, content=prompts.RUN_STOPPED_DURING_TRIAL)

    def _record(self, trial_id: int, outcome: TrialOutcome, best: Trial | None, parent_commit: str,
                guard: _Guard, run: _Run) -> ToolOutcome:
        run.drift = self._drift(outcome, run, best)
        if run.drift and self._reruns_drift(run, guard):
            outcome, guard = self._rerun_drifted(trial_id, outcome, guard, run, best)
            if outcome.stopped:
                return self._stopped(trial_id, outcome, parent_commit)
        fields = outcome_fields(outcome)
        fields["summary"].update(run.summary())
        parent_mean = best.mean_val_bpb if best else None
        verdict = self._verdict(trial_id, outcome, best.all_values if best else [], guard, run)
        verdict = self._with_drift(trial_id, verdict, run)
        if verdict.status == TrialStatus.CRASH:
            # The runner's reason (a sandbox violation, the budget, causality...) goes on word for word.
            fields["crash_reason"] = verdict.decision if guard.untrusted else outcome.reason
            fields["val_bpb"] = None  # a crash has no number, whatever was measured
        val = fields.get("val_bpb")
        delta = None if (val is None or parent_mean is None or verdict.status == TrialStatus.CRASH) else val - parent_mean
        self.ledger.finish_trial(
            trial_id, status=verdict.status, flagged=verdict.flagged, decision=verdict.decision,
            parent_val_bpb=parent_mean, delta=delta, suspicions=guard.suspicions,
            sandbox=combined_sandbox(self._sandboxes), **fields,
        )
        failpoint("trial_recorded")
        if verdict.status != TrialStatus.KEEP:
            self.workspace.reset_to(parent_commit)
        else:
            self.score_audit(trial_id)  # after the keep is recorded: nothing the audit does can change it
        failpoint("branch_reset")
        self._add_triggers()
        self.files.render()
        trial = self.ledger.trial(trial_id)
        assert trial is not None
        self.set_state(RunState.RUNNING, "")
        self.bus.emit(ev.TRIAL_FINISHED, trial_id=trial_id, status=verdict.status, val_bpb=trial.val_bpb,
                      delta=delta, flagged=verdict.flagged, decision=verdict.decision)
        return ToolOutcome("run_trial", ok=verdict.status != TrialStatus.CRASH,
                           content=self._report(trial, best, guard, run))

    def _report(self, trial: Trial, parent: Trial | None, guard: _Guard, run: _Run) -> str:
        """What run_trial returns: the numbers and the decision, and what a held trial or a re-run means."""
        report = prompts.trial_report(trial, parent, self.noise_floor())
        if trial.status == TrialStatus.HELD:
            note = prompts.TRIAL_HELD.format(findings="\n".join(f"- {f}" for f in guard.findings))
        elif run.rerun_of is not None and trial.status != TrialStatus.CRASH:
            note = prompts.TRIAL_REPORT_RERUN.format(parent=run.rerun_of.id)
        else:
            return report
        head, _, tail = report.rpartition(prompts.TRIAL_REPORT_NEXT)
        return f"{head}{note}\n{prompts.TRIAL_REPORT_NEXT}{tail}" if head else f"{report}\n{note}"

    def _verdict(self, trial_id: int, outcome: TrialOutcome, parent_values: list[float], guard: _Guard,
                 run: _Run) -> _Verdict:
        if guard.untrusted:
            return _Verdict(TrialStatus.CRASH, False, prompts.DECISION_UNTRUSTED.format(what=guard.untrusted))
        if outcome.status != "ok" or outcome.val_bpb is None:
            return _Verdict(TrialStatus.CRASH, False, prompts.DECISION_CRASHED.format(reason=outcome.reason))
        if guard.findings:
            return self._hold(trial_id, parent_values, outcome.val_bpb, guard.findings, run.earlier_values)
        if run.rerun_of is not None:
            return self._pool(run.rerun_of, outcome.val_bpb, run.seed)
        return self._decide(trial_id, parent_values, outcome.val_bpb, run.earlier_values)

    # ---- re-runs and the speed sentinel (issue 16) ---------------------------------------------------------
    def _reruns(self, keep: Trial) -> list[float]:
        return rerun_values(self.ledger.finished_trials(), keep)

    def _pool(self, parent: Trial, value: float, seed: int) -> _Verdict:
        """An unchanged re-run of a keep: a sample of its code, pooled with the keep's runs into the noise floor
        and shown with them. Recorded as a discard, since nothing new is kept; the decision says why. Children
        are still judged against the keep's own runs (floor.rerun_values says why)."""
        factor = self.config.floor_factor
        before = [*parent.all_values, *self._reruns(parent)]
        estimate = noise_estimate(self.ledger, self.config.budget_s)
        floor = None if estimate is None else estimate.floor(factor)
        after = noise_estimate(self.ledger, self.config.budget_s, pending=(parent.id, value))
        mean = statistics.fmean(before)
        distance = value - mean
        if floor is None:
            landing = prompts.RERUN_NO_FLOOR
        else:
            floors = abs(distance) / floor if floor > 0 else (math.inf if distance else 0.0)
            far = floors > 1.0  # outside the band a same-code run should land in, by the floor's own definition
            landing = (prompts.RERUN_LANDED_FAR if far else prompts.RERUN_LANDED_NEAR).format(floors=floors,
                                                                                                parent=parent.id)
        new_floor = None if after is None else after.floor(factor)
        floor_now = "" if floor is None or new_floor is None else prompts.RERUN_FLOOR_NOW.format(
            after=prompts.fmt(new_floor, 4), before=prompts.fmt(floor, 4))
        return _Verdict(TrialStatus.DISCARD, False, prompts.DECISION_RERUN.format(
            parent=parent.id, seed=seed, value=prompts.fmt(value), distance=distance, mean=prompts.fmt(mean),
            landing=landing, runs=len(before) + 1, new_mean=prompts.fmt(statistics.fmean([*before, value])),
            floor_now=floor_now))

    def _drift(self, outcome: TrialOutcome, run: _Run, parent: Trial | None) -> list[str]:
        """Why this run's number may measure the machine rather than the change ([] when it ran as the floor did)."""
        if outcome.status != "ok" or outcome.val_bpb is None:
            return []  # no number to doubt
        if self.config.budget_tokens is not None:
            return []  # a token budget trains the same tokens however fast the machine: speed cannot move the number
        return drift_reasons(run.load, floor_machine(self.ledger, self.config.budget_s),
                             tokens_per_s=summary_float(outcome.summary, "tokens_per_s"),
                             parent_tokens_per_s=parent.tokens_per_s if parent else None,
                             compute_neutral=run.compute_neutral)

    def _reruns_drift(self, run: _Run, guard: _Guard) -> bool:
        """The confirm policy runs a drifted trial again; the others flag it. A re-run of a keep is pooled either
        way (it samples the machine as it is), and a trial held or voided by the guards is never kept."""
        return (self.config.policy == "confirm" and run.rerun_of is None and not guard.untrusted
                and not guard.findings and not self.trial_stop.is_set())

    def _rerun_drifted(self, trial_id: int, first: TrialOutcome, guard: _Guard, run: _Run,
                       parent: Trial | None) -> tuple[TrialOutcome, _Guard]:
        """Run a drifted trial once more with the same seed; that run decides (if it crashes, the first does)."""
        drift = "; ".join(run.drift)
        self.bus.emit(ev.NOTICE, level="warning", message=prompts.DRIFT_NOTICE.format(
            trial_id=trial_id, drift=drift, action=": running it again with the same seed"))
        second = self._measured_run(run, trial_id, self.paths.trial_dir(trial_id) / "drift-rerun", live=False)
        guard = self._check_after(guard.findings)
        if second.stopped:
            return second, guard
        if second.status != "ok" or second.val_bpb is None:
            run.note = prompts.DECISION_DRIFT_RERUN_CRASHED.format(drift=drift, crash=second.reason)
            return first, guard  # still drifted: the first run decides, flagged
        run.note = prompts.DECISION_DRIFT_RERUN.format(drift=drift, first=prompts.fmt(first.val_bpb))
        run.earlier_values = [*run.earlier_values, first.val_bpb]
        steps, tokens = summary_float(first.summary, "num_steps"), summary_float(first.summary, "tokens_per_s")
        run.first_run = f"val_bpb {prompts.fmt(first.val_bpb)}, steps {steps:g}, tokens/s {tokens:,.0f}" \
            if steps is not None and tokens is not None else f"val_bpb {prompts.fmt(first.val_bpb)}"
        run.drift = self._drift(second, run, parent)
        return second, guard

    def _with_drift(self, trial_id: int, verdict: _Verdict, run: _Run) -> _Verdict:
        """The verdict with the machine named: a drifted run is flagged, whatever the verdict, under every policy
        (under confirm, only when its second run drifted too)."""
        decision = f"{run.note}; {verdict.decision}" if run.note else verdict.decision
        if not run.drift or verdict.status == TrialStatus.CRASH:
            return _Verdict(verdict.status, verdict.flagged, decision)
        drift = "; ".join(run.drift)
        self.bus.emit(ev.NOTICE, level="warning",
                      message=prompts.DRIFT_NOTICE.format(trial_id=trial_id, drift=drift, action=": flagged"))
        return _Verdict(verdict.status, True, prompts.DECISION_MACHINE_DRIFT.format(decision=decision, drift=drift))

    def _hold(self, trial_id: int, parent_values: list[float], value: float, findings: list[str],
              earlier: list[float]) -> _Verdict:
        """A trial the guards found something in is never kept: held for review where the policy would keep it
        (or re-test it: no confirmation runs are spent on it), else discarded with the findings noted. Earlier
        runs of its change (a re-test, a drifted first run) count with its run, as for any trial."""
        for old in earlier:
            self.ledger.add_extra_value(trial_id, old)
        decision = self.policy().decide(parent_values, [value, *earlier], self.noise_sd())
        rules = ", ".join(finding_rules(findings))
        if decision.verdict is Verdict.DISCARD:
            return _Verdict(TrialStatus.DISCARD, False,
                            prompts.DECISION_DISCARD_WITH_FINDINGS.format(decision=decision.reason, rules=rules))
        return _Verdict(TrialStatus.HELD, False,
                        prompts.DECISION_HELD.format(count=len(findings), rules=rules, decision=decision.reason))

    def _decide(self, trial_id: int, parent_values: list[float], value: float,
                earlier: list[float] | None = None) -> _Verdict:
        """The keep policy's verdict, after the confirmation re-runs it asks for. ``earlier``: values of this
        trial's code measured before the deciding run (a drifted first run), which count with it."""
        policy = self.policy()
        sd = self.noise_sd()
        for old in earlier or []:
            self.ledger.add_extra_value(trial_id, old)
        values = [value, *(earlier or [])]
        decision = policy.decide(parent_values, values, sd)
        reruns = 0  # numbers this trial's confirmation runs: their seeds and folders
        # Confirm asks once for all its seeds; sequential asks one seed at a time until it can decide. The policy
        # asks only while the trial has fewer than policy.max_runs runs, so this ends.
        while decision.verdict is Verdict.RETEST:
            self.bus.emit(ev.NOTICE, level="info", message=f"trial {trial_id}: {decision.reason}")
            for _ in range(decision.seeds_needed):
                if self.trial_stop.is_set():
                    break
                seed = CONFIRM_SEED_BASE + trial_id * 10 + reruns
                reruns += 1
                rerun = self.execute(trial_id, self.paths.trial_dir(trial_id, reruns), seed, live=False)
                if rerun.status != "ok" or rerun.val_bpb is None:
                    return _Verdict(TrialStatus.DISCARD, False, prompts.DECISION_CONFIRMATION_CRASHED.format(
                        reason=decision.reason, seed=seed, crash=rerun.reason))
                self.ledger.add_extra_value(trial_id, rerun.val_bpb)
                values.append(rerun.val_bpb)
            decision = policy.decide(parent_values, values, sd)
            if decision.verdict is Verdict.RETEST and self.trial_stop.is_set():
                # A stop cut the re-runs short: do not keep on fewer runs than the policy asked for.
                return _Verdict(TrialStatus.DISCARD, False, prompts.DECISION_CONFIRMATION_INTERRUPTED)
        return _Verdict(TrialStatus.KEEP if decision.verdict is Verdict.KEEP else TrialStatus.DISCARD, decision.flagged, decision.reason)

    # ---- the audit split (issue 19): every keep scored, never for a decision, never shown to the agent --------
    def score_audit(self, trial_id: int) -> None:
        """The kept model's val_bpb on the audit split, into the ledger (or a note saying why there is none).

        A fault of the audit never raises and never changes the keep: the number is for the person's report only
        (an agent that saw it could tune on it: a second validation split). Nothing of it goes on the bus either."""
        try:
            value, note = self._audit(trial_id)
        except Exception as exc:  # noqa: BLE001 - a fault here must not cost the keep or the run
            log.exception("audit scoring of trial %s failed", trial_id)
            value, note = None, f"the audit scoring failed: {type(exc).__name__}: {exc}"
        self.ledger.set_audit(trial_id, value, note)

    def _audit(self, trial_id: int) -> tuple[float | None, str | None]:
        why = audit_unavailable(self.config.cache_dir, self.setup.expected)
        if why:
            return None, why
        trial = self.ledger.trial(trial_id)
        artifact = trial.summary.get("evaluator.artifact_sha256") if trial is not None else None
        folder = self.paths.trial_dir(trial_id)
        model = kept_model(folder, artifact)
        if model is None:
            return None, "the kept model is no longer in the trial's folder"
        spec = self.setup.evaluator(folder / AUDIT_JOB_DIR, split="audit")
        if spec is None:
            return None, "this run's harness has no trusted evaluator to score the audit split with"
        self.set_state(RunState.TRIAL, f"trial {trial_id}: scoring the kept model on the audit split")
        score = score_audit(spec, model, artifact)
        log.info("audit split of trial %s scored in %.1f s", trial_id, score.seconds)
        return score.value, score.note

    def score_missing_audits(self) -> list[int]:
        """Keeps a stop left unaudited (no score and no note) whose model is still there: scored now (on resume)."""
        missing = [t for t in self.ledger.trials([TrialStatus.KEEP]) if t.audit_val_bpb is None and t.audit_note is None
                   and kept_model(self.paths.trial_dir(t.id), None) is not None]
        for trial in missing:
            self.score_audit(trial.id)
        return [t.id for t in missing]

    def _add_triggers(self) -> None:
        """Reflection triggers that the trial just recorded may have set off."""
        cfg = self.config
        trials = [t for t in self.ledger.finished_trials() if t.kind == TrialKind.TRIAL]
        n = len(trials)
        if n and n % cfg.reflect_every == 0:
            self.ledger.add_trigger("checkpoint", f"{n} trials done (a reflection every {cfg.reflect_every})")
        # A streak triggers when it reaches K, 2K, ...: once per K trials, whatever came between.
        no_keep = _streak(trials, lambda t: t.status != TrialStatus.KEEP)
        if no_keep and no_keep % cfg.plateau_trials == 0:
            self.ledger.add_trigger("plateau", f"{no_keep} trials in a row without a keep")
        crashes = _streak(trials, lambda t: t.status == TrialStatus.CRASH)
        if crashes and crashes % cfg.crash_streak == 0:
            self.ledger.add_trigger("crashes", f"{crashes} crashes in a row")

    # ---- running the trainer -------------------------------------------------------------------------------
    def execute(self, trial_id: int | None, out_dir: Path, seed: int, live: bool) -> TrialOutcome:
        """Run the trainer once; stream metrics to the bus and (for the primary run) to the ledger."""
        metrics = _MetricStream(self.ledger, self.bus, trial_id if live else None)

        def on_start(pid: int) -> None:
            if trial_id is not None and live:
                self.ledger.set_trial_pid(trial_id, pid)

        outcome = self._runner(self.spec(out_dir, seed), on_metric=metrics.add, stop_event=self.trial_stop,
                               on_start=on_start, warm_start=self.warm)
        metrics.flush()
        self._calibrate(outcome)
        if trial_id is not None:
            self._sandboxes.append(sandbox_text(outcome))
        if "compiled" in outcome.summary:
            self.last_compiled = outcome.summary["compiled"].strip().lower() == "true"
        self.warm_next_trial()
        return outcome

    def _calibrate(self, outcome: TrialOutcome) -> None:
        """A run of the unmodified script (a noise seed, the baseline) measures the honest warm-up: start-up,
        compile and hand-over beyond the budget. Only the run's own starting script counts, never the agent's."""
        if outcome.status != "ok" or outcome.handover_seconds is None:
            return
        if self.editable_text() != getattr(self, "_initial_script", None):
            return
        samples = list(self.ledger.get_meta("warmup_overheads") or [])[-(WARMUP_SAMPLES - 1):]
        samples.append(round(max(0.0, outcome.handover_seconds - self.config.budget_s), 3))
        self.ledger.set_meta("warmup_overheads", samples)
        allowance, source = self.warmup_allowance()
        self.bus.emit(ev.NOTICE, level="info", message=f"warm-up allowance: a model handed over later than the "
                      f"budget + {allowance:.1f} s ({source}) has no result")

    def warmup_allowance(self) -> tuple[float, str]:
        """Seconds past the budget a trial may hand over its model, and where the figure comes from.

        Calibrated: twice the unmodified script's median warm-up plus 5 s (a loaded machine starts slower), never
        more than --grace (the deadline).
        Before any calibration, --grace itself."""
        grace = self.config.effective_grace_s
        samples = self.ledger.get_meta("warmup_overheads") or []
        if not samples:
            return grace, "--grace"
        calibrated = 2 * statistics.median(samples) + 5.0
        if calibrated >= grace:
            return grace, "--grace"
        return round(calibrated, 1), f"2x the unmodified script's warm-up of {statistics.median(samples):.1f} s + 5 s"

    def warm_next_trial(self) -> None:
        """Start the next trial's interpreter now, so its imports overlap the agent's turns, not training."""
        if self.warm is not None and not self._run_stopping():
            self.warm.prepare(self.spec(self.paths.trials, PRIMARY_SEED, create=False),
                              also=COMPILE_MODULES if self.last_compiled else ())

    def spec(self, out_dir: Path, seed: int, create: bool = True) -> TrialSpec:
        if create:
            out_dir.mkdir(parents=True, exist_ok=True)
        return TrialSpec(
            command=list(self.config.layout.command),
            cwd=self.workspace.root,
            log_path=out_dir / "log.txt",
            metrics_path=out_dir / "metrics.jsonl",
            eval_record_path=out_dir / "eval.json",
            budget_s=self.config.budget_s,
            grace_s=self.config.effective_grace_s,
            **dict(zip(("allowance_s", "allowance_source"), self.warmup_allowance(), strict=True)),
            seed=seed,
            extra_env={"AUTORESEARCH_CACHE": str(self.config.cache_dir),
                       "AUTORESEARCH_DEVICE": self.config.device,
                       # A compile cache of the run's own (surviving reboots, unlike /tmp): a trial whose
                       # graphs did not change loads its kernels instead of recompiling them.
                       "TORCHINDUCTOR_CACHE_DIR": str(self.config.run_dir / "compile-cache" / "inductor"),
                       "TRITON_CACHE_DIR": str(self.config.run_dir / "compile-cache" / "triton")},
            memory_limit_mb=self._memory_limit_mb(),
            **self.setup.spec_fields(out_dir),
        )

    def _memory_limit_mb(self) -> int | None:
        """The person's cap, else on a CPU-only machine 80% of RAM, so a runaway trial dies alone.

        No default cap with a GPU: RLIMIT_AS caps virtual memory, and CUDA reserves far more of it than it uses.
        """
        if self.config.memory_limit_mb is not None:
            return self.config.memory_limit_mb or None  # 0 turns the cap off
        if self.platform.get("accelerator", "cpu") != "cpu" or self.config.device not in ("auto", "cpu"):
            return None
        try:
            pages, page_size = os.sysconf("SC_PHYS_PAGES"), os.sysconf("SC_PAGE_SIZE")
        except (ValueError, OSError):
            return None
        return int(pages * page_size * 0.8 / 2**20)

    def _eval_data_changed(self) -> list[str]:
        """Evaluation inputs in the cache that differ from their fingerprint at the start of the run."""
        expected = self.ledger.get_meta("eval_fingerprint")
        return fingerprint_changes(expected, self.config.cache_dir) if expected else []

    def _harness_ok(self) -> bool:
        return self.workspace.harness_hash() == self._harness_hash

    def discard_warm(self) -> None:
        if self.warm is not None:
            self.warm.discard()

    def after_run_problem(self) -> str:
        """After a run outside a trial (the transfer check): what it changed that voids its number ("" when
        nothing), with the harness restored and the git directory repaired, as after a trial."""
        return self._check_after([]).untrusted


class _MetricStream:
    """A primary run's metrics: on the bus as they come, into the ledger in batches (one write a second)."""

    def __init__(self, ledger: Ledger, bus: ev.EventBus, trial_id: int | None) -> None:
        self._ledger, self._bus, self._trial_id = ledger, bus, trial_id
        self._buffer: list[dict[str, Any]] = []
        self._seq = 0
        self._seen = 0
        self._flushed = time.monotonic()

    def add(self, metric: dict[str, Any]) -> None:
        if self._trial_id is None:
            return
        # A trial that writes millions of records gets a thinned curve, not millions of rows and events:
        # past METRICS_KEPT_FULLY, every 2nd, then every 4th... (the stride doubles with each further block).
        self._seen += 1
        stride = 1 << min(60, (self._seen - 1) // METRICS_KEPT_FULLY)
        if stride > 1 and self._seen % stride:
            return
        self._buffer.append(metric)
        self._bus.emit(ev.METRIC, trial_id=self._trial_id, metric=metric)
        if time.monotonic() - self._flushed >= METRIC_FLUSH_S:
            self.flush()

    def flush(self) -> None:
        if self._buffer and self._trial_id is not None:
            rows = list(self._buffer)
            self._buffer.clear()
            self._ledger.add_metrics(self._trial_id, self._seq, rows)
            self._seq += len(rows)
            failpoint("metrics_flushed")
        self._flushed = time.monotonic()


def outcome_fields(outcome: TrialOutcome) -> dict[str, Any]:
    """A trainer run's numbers as the ledger's trial columns."""
    s = outcome.summary

    def num(key: str) -> float | None:
        return summary_float(s, key)

    steps = num("num_steps")
    # What the supervisor itself measured goes beside what the trainer printed, under names it cannot print.
    record = outcome.eval_record or {}
    measured = {"supervisor.handover_seconds": outcome.handover_seconds,
                "supervisor.evaluation_seconds": outcome.evaluation_seconds,
                "supervisor.sandbox": outcome.sandbox or None,
                "supervisor.budget_tokens": outcome.budget_tokens,
                **{f"evaluator.{k}": record.get(k) for k in ("causality_deviation", "repeat_deviation",
                                                               "rows_checked", "artifact_sha256", "evaluator")}}
    summary = {k: v for k, v in s.items() if not k.startswith(("supervisor.", "evaluator."))}
    summary.update({k: (f"{v:.4g}" if isinstance(v, float) else str(v)) for k, v in measured.items() if v is not None})
    return {
        "val_bpb": outcome.val_bpb if outcome.status == "ok" else None,
        "summary": summary,
        "log_tail": outcome.log_tail,
        "wall_seconds": outcome.wall_seconds,
        "training_seconds": num("training_seconds"),
        "num_steps": int(steps) if steps is not None else None,
        "tokens_per_s": num("tokens_per_s"),
        "mfu_percent": num("mfu_percent"),
        "peak_vram_mb": num("peak_vram_mb"),
        "num_params_m": num("num_params_M"),
    }


def _streak(trials: list[Trial], predicate: Callable[[Trial], bool]) -> int:
    """How many of the last trials in a row satisfy `predicate`."""
    n = 0
    for t in reversed(trials):
        if not predicate(t):
            break
        n += 1
    return n


def kill_orphan_trial(pid: int, command: list[str]) -> bool:
    """Kill the process group of a trial left running by a supervisor that died (SIGKILL, power cut).

    Only if that process still looks like our trial (its command line holds the trial's command), so a
    recycled pid is never hit.
    """
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return False
    if not command or command[-1] not in cmdline:
        return False
    try:
        os.killpg(pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        return False
    return True
