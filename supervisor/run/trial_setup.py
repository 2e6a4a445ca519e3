"""What a trial of this run sees and who measures it: the sandbox plans and the trusted evaluator.

Built once per run (:class:`TrialSetup`) from the run's settings and folders; the executor adds its fields
to every TrialSpec. The trial sees, read-only, the trainer's folder of the workspace and a training view of
the cache (no validation tokens); it writes only the exchange folder and the compile cache. The evaluator
sees the supervisor's pristine copy of the harness (as committed when the run began), the one trial folder
it reports into; the validation data reaches it over its stdin.

The budget a trial gets is seconds of training (``--budget``), or with ``--budget-tokens`` a number of tokens:
then ``--budget`` is a wall-clock cap, and the runner holds the tokens a trial's metrics claim against it.
"""

from __future__ import annotations

import json
import logging
import os
import sys
from pathlib import Path
from typing import Any

from supervisor.core.config import RunConfig
from supervisor.core.paths import RunPaths
from supervisor.trial.environment import scrub_environment
from supervisor.trial.evaluation import EvaluatorSpec
from supervisor.trial.sandbox import Mount, SandboxChoice, SandboxPlan, choose, plan

log = logging.getLogger(__name__)

TRIAL_ROOT = "/trial"
CACHE_INSIDE = "/cache"
EXCHANGE_INSIDE = "/out"
COMPILE_CACHE_INSIDE = "/compile-cache"
HARNESS_INSIDE = "/harness"
JOB_INSIDE = "/job"
# The harness file that serves the evaluation (trainer/prepare.py, section 5).
EVALUATOR_SCRIPT = "prepare.py"


def budget_text(config: RunConfig) -> str:
    """The run's budget per trial in words, as the run's start line and `status --json` say it."""
    if config.budget_tokens is None:
        return f"{config.budget_s:g} s of training per trial"
    return (f"{config.budget_tokens:,} tokens per trial (speed no longer counts); each trial must hand over "
            f"its model within {config.budget_s:g} s (--budget) plus the warm-up allowance")


def cache_files(cache_dir: Path, keys: tuple[str, ...]) -> list[str]:
    """Names (relative to the cache) of the manifest and the files it lists under ``keys``."""
    try:
        manifest = json.loads((cache_dir / "manifest.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return []
    names = ["manifest.json"]
    for key in keys:
        name = manifest.get(key) if isinstance(manifest, dict) else None
        if isinstance(name, str) and "/" not in name and name not in ("", ".", ".."):
            names.append(name)
    return names


class TrialSetup:
    """The sandbox and the evaluator for every trial of one run."""

    def __init__(self, config: RunConfig, workspace_root: Path, expected: dict[str, str] | None,
                 choice: SandboxChoice | None = None) -> None:
        self.config = config
        self.paths = RunPaths(config.run_dir)
        self.workspace_root = workspace_root
        self.expected = expected
        self.choice = choice if choice is not None else choose(config.sandbox)

    # ---- the pristine harness ----------------------------------------------------------------------------
    def write_pristine_harness(self, committed_text: dict[str, str]) -> None:
        """The harness files as committed when the run began, where no trial can reach them (written again
        before every evaluation: an unsandboxed trial could reach them)."""
        self._pristine = dict(committed_text)
        for rel, text in committed_text.items():
            target = self.paths.harness / rel
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_text(text, encoding="utf-8")

    def _evaluator_script(self) -> str | None:
        """The harness file that serves evaluations; None for a harness without one (an upstream checkout's
        prepare.py: its trials then have no trusted result, and say so)."""
        for rel in self.config.layout.harness:
            path = self.paths.harness / rel
            if Path(rel).name == EVALUATOR_SCRIPT and path.is_file() and \
                    "--serve-evaluation" in path.read_text(encoding="utf-8", errors="replace"):
                return rel
        return None

    # ---- the trial's sandbox -----------------------------------------------------------------------------
    def _code_mounts(self) -> list[Mount]:
        layout = self.config.layout
        folder = Path(layout.editable).parent
        if str(folder) not in ("", "."):
            return [Mount(self.workspace_root / folder, f"{TRIAL_ROOT}/{folder.as_posix()}")]
        # The files sit at the top of the workspace, beside .git: mount them one by one.
        return [Mount(self.workspace_root / rel, f"{TRIAL_ROOT}/{rel}", optional=True)
                for rel in [layout.editable, *layout.harness]]

    def trial_plan(self) -> SandboxPlan | None:
        if not self.choice.active:
            return None
        cache = self.config.cache_dir
        names = cache_files(cache, ("train_tokens", "tokenizer", "token_bytes"))
        for folder in (self.paths.exchange, self.paths.compile_cache):
            folder.mkdir(parents=True, exist_ok=True)
        mounts = [*self._code_mounts(),
                  *(Mount(cache / name, f"{CACHE_INSIDE}/{name}", optional=True) for name in names),
                  Mount(self.paths.exchange, EXCHANGE_INSIDE, writable=True),
                  Mount(self.paths.compile_cache, COMPILE_CACHE_INSIDE, writable=True)]
        assert self.choice.bwrap is not None
        return plan(self.choice.bwrap, mounts, TRIAL_ROOT, {"AUTORESEARCH_CACHE": CACHE_INSIDE})

    # ---- the evaluator -----------------------------------------------------------------------------------
    def evaluator(self, job_dir: Path, split: str = "val") -> EvaluatorSpec | None:
        """The evaluator of one job: a trial's validation score, or ``split="audit"``, a keep's audit score."""
        script = self._evaluator_script()
        if script is None:
            return None
        if getattr(self, "_pristine", None):
            self.write_pristine_harness(self._pristine)
        cache = self.config.cache_dir
        env = scrub_environment(os.environ)
        env["PYTHONUNBUFFERED"] = "1"
        env["AUTORESEARCH_DEVICE"] = self.config.device
        sandbox = None
        if self.choice.active:
            assert self.choice.bwrap is not None
            # The harness and the job folder, nothing else: the validation data comes over its stdin.
            mounts = [Mount(self.paths.harness, HARNESS_INSIDE), Mount(job_dir, JOB_INSIDE, writable=True)]
            sandbox = plan(self.choice.bwrap, mounts, HARNESS_INSIDE)
            env.update({"HOME": "/tmp/home", "TMPDIR": "/tmp/home", "AUTORESEARCH_CACHE": "/tmp/home/no-cache"})
            script_path = f"{HARNESS_INSIDE}/{script}"
        else:
            env["AUTORESEARCH_CACHE"] = str(job_dir / "no-cache")  # the harness needs no cache to evaluate
            script_path = str(self.paths.harness / script)
        return EvaluatorSpec(
            command=[sys.executable, "-E", "-s", "-B", script_path, "--serve-evaluation"],
            env=env, cwd=self.config.run_dir, job_dir=job_dir, expected=self.expected, cache_dir=cache,
            device=self.config.device,
            sandbox=sandbox, timeout_s=max(300.0, 2 * self.config.budget_s), split=split)

    def spec_fields(self, job_dir: Path) -> dict[str, Any]:
        """The TrialSpec fields of one trial whose folder is ``job_dir``."""
        return {"exchange_dir": self.paths.exchange, "sandbox": self.trial_plan(), "sandbox_label": self.choice.label,
                "evaluator": self.evaluator(job_dir), "budget_tokens": self.config.budget_tokens}
