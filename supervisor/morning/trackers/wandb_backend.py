"""Weights & Biases, offline: each trial becomes an offline run folder (`<dir>/wandb/offline-run-*-<id>`),
written with no account, no key and no network; `wandb sync` uploads them later, from the person's own
shell. Nothing here ever holds a W&B key.

The run id is derived from the trial (`<tag>-trial-0007`), so a folder already written for a trial is
found again by its name, and a synced run keeps one id however often it is uploaded.
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from supervisor.morning.trackers.base import Tracker, TrackerError, TrackerRun, missing_package, muted
from supervisor.morning.trackers.records import HistoryRow

# How wandb names a run's folder: [offline-]run-YYYYMMDD_HHMMSS-<run id>.
RUN_FOLDER = re.compile(r"^(?:offline-)?run-\d{8}_\d{6}-(?P<id>.+)$")
MAX_ID_CHARS = 64
# A run id may hold letters, digits, '-' and '_' (a tag may also hold '.').
_ID_UNSAFE = re.compile(r"[^A-Za-z0-9_-]")


def run_id(name: str) -> str:
    """The W&B id of a run name: safe characters only, and short, with a hash when it had to be changed."""
    safe = _ID_UNSAFE.sub("-", name)
    if safe == name and len(safe) <= MAX_ID_CHARS:
        return safe
    digest = hashlib.sha256(name.encode()).hexdigest()[:8]
    return f"{safe[:MAX_ID_CHARS - 9]}-{digest}"


class WandbRun(TrackerRun):
    def __init__(self, run: Any, name: str) -> None:
        self._run = run
        self.name = name

    def log_history(self, rows: Sequence[HistoryRow]) -> None:
        for row in rows:
            self._run.log(dict(row.values), step=row.step)

    def set_summary(self, summary: Mapping[str, Any]) -> None:
        self._run.summary.update(dict(summary))

    def finish(self, *, aborted: bool = False) -> None:
        with muted():
            self._run.finish(exit_code=1 if aborted else 0)

    def discard(self) -> None:
        folder = Path(self._run.dir).parent  # <dir>/wandb/offline-run-.../files
        self.finish()
        if RUN_FOLDER.match(folder.name):
            shutil.rmtree(folder, ignore_errors=True)


class WandbTracker(Tracker):
    name = "wandb"

    def __init__(self, wandb: Any, project: str, directory: Path) -> None:
        super().__init__(project)
        self.wandb = wandb
        self.directory = directory

    @property
    def runs_folder(self) -> Path:
        return self.directory / "wandb"

    def existing(self, group: str) -> dict[str, Any]:
        del group  # run ids carry the tag
        found: dict[str, list[Path]] = {}
        if self.runs_folder.is_dir():
            for folder in sorted(self.runs_folder.iterdir()):
                match = RUN_FOLDER.match(folder.name)
                if match and folder.is_dir():
                    found.setdefault(match["id"], []).append(folder)
        return found

    def key(self, name: str) -> str:
        return run_id(name)  # `existing` is keyed by the folders' run ids

    def delete(self, group: str, handles: Sequence[Any]) -> None:
        for folders in handles:
            for folder in folders:
                shutil.rmtree(folder, ignore_errors=True)

    def start(self, *, group: str, name: str, config: Mapping[str, Any]) -> TrackerRun:
        settings = self.wandb.Settings(
            silent=True, console="off", x_disable_stats=True, x_disable_meta=True, x_disable_machine_info=True,
            disable_git=True, save_code=False, disable_job_creation=True)
        with muted():
            run = self.wandb.init(project=self.project, group=group, name=name, id=run_id(name), config=dict(config),
                                  dir=str(self.directory), mode="offline", reinit="create_new", settings=settings)
        return WandbRun(run, name)

    def where(self) -> str:
        return f"W&B offline runs in {self.runs_folder}"

    def how_to_look(self, group: str) -> str:
        return f"wandb sync {self.runs_folder}/offline-run-*   (uploads them; group {group})"

    def close(self) -> None:
        self.wandb.teardown()  # ends wandb's background service process


def open_store(store: str | None, *, project: str, journals_root: Path, run_dir: Path) -> WandbTracker:
    del journals_root
    directory = Path(store).expanduser().absolute() if store else Path(run_dir)
    if os.environ.get("WANDB_MODE", "offline").strip().lower() not in ("offline", "dryrun", ""):
        raise TrackerError("W&B runs are written offline here (no key needed, nothing leaves the machine): unset "
                           "WANDB_MODE, then upload them with `wandb sync`")
    # wandb reports its own errors to its servers unless told not to; a local export sends nothing.
    os.environ.setdefault("WANDB_ERROR_REPORTING", "false")
    try:
        import wandb
    except ImportError:
        raise missing_package("wandb") from None
    try:
        (directory / "wandb").mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise TrackerError(f"W&B folder {directory}: {exc.strerror or exc}") from None
    return WandbTracker(wandb, project, directory)
