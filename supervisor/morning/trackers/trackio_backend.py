"""trackio: local-first, no account, W&B-compatible. Runs go to its local SQLite store, one database per
project under TRACKIO_DIR (default ~/.cache/huggingface/trackio), where `trackio show` finds them.

Only the local store is written: no Space, no server, no dashboard started, no network. trackio looks up
the Hugging Face user name for every new run (a request to huggingface.co carrying the person's HF token,
when one is saved); the Hub client is put in offline mode in this process so that it never asks.

trackio has no separate summary: a W&B-style summary is the last value logged under each key, so the
summary values are logged once, at the trial's last step.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from supervisor.morning.trackers.base import Tracker, TrackerError, TrackerRun, missing_package, muted
from supervisor.morning.trackers.records import HistoryRow

# Variables that send trackio's runs to a Hugging Face Space or a self-hosted server instead of the store.
REMOTE_VARIABLES = ("TRACKIO_SPACE_ID", "TRACKIO_SERVER_URL")


class TrackioRun(TrackerRun):
    def __init__(self, tracker: TrackioTracker, run: Any) -> None:
        self._tracker = tracker
        self._run = run
        self.name = run.name
        self._last_step = 0

    def log_history(self, rows: Sequence[HistoryRow]) -> None:
        with muted():
            for row in rows:
                self._run.log(dict(row.values), step=row.step)
                self._last_step = max(self._last_step, row.step)

    def set_summary(self, summary: Mapping[str, Any]) -> None:
        with muted():
            self._run.log(dict(summary), step=self._last_step)

    def finish(self, *, aborted: bool = False) -> None:
        # trackio has no run state: an aborted trial says so in its summary's status.
        del aborted
        trackio = self._tracker.trackio
        with muted():
            self._run.finish()
        # trackio.init made this the thread's current run, which trackio finishes again at exit (and prints):
        # it is finished, so it is no longer current.
        if trackio.context_vars.current_run.get() is self._run:
            trackio.context_vars.current_run.set(None)

    def discard(self) -> None:
        self.finish()
        self._tracker.delete("", [self._tracker.trackio.api.Run(self._tracker.project, self.name, self._run.id)])


class TrackioTracker(Tracker):
    name = "trackio"

    def __init__(self, trackio: Any, project: str) -> None:
        super().__init__(project)
        self.trackio = trackio
        self.directory = Path(trackio.utils.TRACKIO_DIR)

    def existing(self, group: str) -> dict[str, Any]:
        del group  # run names carry the tag: the project's names are enough
        try:
            runs = self.trackio.Api().runs(self.project)
        except ValueError:  # trackio's answer for a project it has no database for yet
            return {}
        return {run.name: run for run in runs}

    def delete(self, group: str, handles: Sequence[Any]) -> None:
        for run in handles:
            run.delete()

    def start(self, *, group: str, name: str, config: Mapping[str, Any]) -> TrackerRun:
        with muted():
            run = self.trackio.init(project=self.project, name=name, group=group, config=dict(config),
                                    resume="never", embed=False, auto_log_gpu=False, auto_log_cpu=False)
        return TrackioRun(self, run)

    def where(self) -> str:
        return f"trackio's store {self.directory}"

    def how_to_look(self, group: str) -> str:
        default = Path(self.trackio.utils.HF_HOME) / "trackio"
        prefix = "" if self.directory == default else f"TRACKIO_DIR={self.directory} "
        return f"{prefix}trackio show --project {self.project}   (group {group})"


def _choose_directory(store: str | None) -> None:
    """TRACKIO_DIR is read once, when trackio is imported: a store chosen on the command line is set first."""
    if store is None:
        return
    wanted = Path(store).expanduser().absolute()
    loaded = sys.modules.get("trackio.utils")
    if loaded is not None:
        if Path(loaded.TRACKIO_DIR) != wanted:
            raise TrackerError(f"trackio is already loaded in this process with its store in {loaded.TRACKIO_DIR}; "
                               f"export to {wanted} from a new process")
        return
    os.environ["TRACKIO_DIR"] = str(wanted)


def _hub_offline() -> None:
    """No request to the Hugging Face Hub from this process (see the module's note): the Hub client reads
    this setting at every request."""
    import huggingface_hub.constants

    huggingface_hub.constants.HF_HUB_OFFLINE = True


def open_store(store: str | None, *, project: str, journals_root: Path, run_dir: Path) -> TrackioTracker:
    del journals_root, run_dir  # trackio's store is its own folder, shared by every project
    remote = [name for name in REMOTE_VARIABLES if os.environ.get(name)]
    if remote:
        raise TrackerError(f"{' and '.join(remote)} would send trackio's runs off this machine; this export "
                           "writes trackio's local store only: unset it, and push the project with trackio's "
                           "own tools afterwards")
    _choose_directory(store)
    try:
        _hub_offline()
        import trackio
    except ImportError:
        raise missing_package("trackio") from None
    tracker = TrackioTracker(trackio, project)
    try:
        tracker.directory.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise TrackerError(f"trackio's store {tracker.directory}: {exc.strerror or exc}") from None
    return tracker
