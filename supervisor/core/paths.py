"""The run folder's layout: every file and folder a run keeps, named in one place.

The loop writes these, the UI and the CLI (other processes) read them; all go through `RunPaths`.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class RunPaths:
    run_dir: Path

    @property
    def ledger(self) -> Path:
        """The SQLite ledger: the run's single source of truth."""
        return self.run_dir / "ledger.sqlite"

    @property
    def lock(self) -> Path:
        """Held by the one supervisor process running this run."""
        return self.run_dir / "run.lock"

    @property
    def results_tsv(self) -> Path:
        return self.run_dir / "results.tsv"

    @property
    def journal_md(self) -> Path:
        return self.run_dir / "journal.md"

    @property
    def transcript(self) -> Path:
        return self.run_dir / "transcript.jsonl"

    @property
    def log(self) -> Path:
        """The detached supervisor's stdout and stderr."""
        return self.run_dir / "supervisor.log"

    @property
    def live_reply(self) -> Path:
        """The agent's reply while it streams in (a UI in another process tails it); empty between turns."""
        return self.run_dir / "agent_reply.live"

    @property
    def trials(self) -> Path:
        return self.run_dir / "trials"

    def trial_dir(self, trial_id: int, attempt: int = 0) -> Path:
        suffix = "" if attempt == 0 else f"-seed{attempt}"
        return self.trials / f"{trial_id:04d}{suffix}"

    @property
    def exchange(self) -> Path:
        """Where a sandboxed trial writes its metrics and hands over its model (its only writable folder
        besides the compile cache); emptied before every trial."""
        return self.run_dir / "exchange"

    @property
    def harness(self) -> Path:
        """The supervisor's pristine copy of the harness, as committed when the run began: the evaluator runs it."""
        return self.run_dir / "harness"

    @property
    def compile_cache(self) -> Path:
        return self.run_dir / "compile-cache"

    @property
    def noise(self) -> Path:
        return self.run_dir / "noise"

    def noise_dir(self, index: int) -> Path:
        return self.noise / f"{int(time.time())}-{index}"

    @property
    def noise_progress(self) -> Path:
        """Which noise seed runs and what the finished ones scored: the UI, in another process, reads it."""
        return self.noise / "progress.json"

    @property
    def workspace(self) -> Path:
        """The run's own clone of the research repo (unless the config names an upstream repo to use)."""
        return self.run_dir / "workspace"


__all__ = ["RunPaths"]
