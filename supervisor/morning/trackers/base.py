"""The one interface every tracker backend implements, how a tracker is named on the command line, and how
one is opened: its SDK is imported only then, so the rest of the product never loads it.

A tracker run has four verbs: start (name, group, config), log history rows with their step, set summary
values, finish. A backend that cannot do one of them natively says how it stands in for it.
"""

from __future__ import annotations

import argparse
import importlib
import importlib.util
import re
import sys
import threading
from abc import ABC, abstractmethod
from collections import Counter
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, TextIO

from supervisor.core.errors import UserError

if TYPE_CHECKING:  # the CLI's parser imports this module: it stays light (no ledger, no SDK)
    from supervisor.morning.trackers.records import HistoryRow

TRACKERS = ("trackio", "wandb", "mlflow")
DEFAULT_PROJECT = "autoresearch"
_PROJECT_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")
# The modules a tracker needs beyond its SDK, by tracker: MLflow's local store is SQLAlchemy's.
_MODULES = {"trackio": ("trackio",), "wandb": ("wandb",), "mlflow": ("mlflow", "sqlalchemy", "alembic")}
_BACKENDS = {"trackio": "supervisor.morning.trackers.trackio_backend",
             "wandb": "supervisor.morning.trackers.wandb_backend",
             "mlflow": "supervisor.morning.trackers.mlflow_backend"}
# user:password@ in the authority, or a token, key, password or secret in the query string.
_CREDENTIALS_IN_URL = re.compile(r"^[a-z][a-z0-9+.-]*://[^/@]+@|[?&][^=&]*(token|key|pass|secret)[^=&]*=",
                                 re.IGNORECASE)


class TrackerError(UserError):
    """A tracker cannot be used as asked (its package is missing, its store refused); the message says why."""


@dataclass(frozen=True)
class TrackerSpec:
    """A tracker as the command line names it: `trackio`, `wandb=/data/wandb`, `mlflow=sqlite:///m.db`."""

    name: str
    store: str | None = None

    @property
    def text(self) -> str:
        return self.name if self.store is None else f"{self.name}={self.store}"


def tracker_spec(text: str) -> TrackerSpec:
    """`--to` / `--tracker`: NAME or NAME=STORE (a folder; for MLflow a tracking URI or a .db file)."""
    name, sep, store = text.partition("=")
    name = name.strip().lower()
    if name not in TRACKERS:
        raise argparse.ArgumentTypeError(f"unknown tracker {name or text!r}: use trackio, wandb or mlflow "
                                         "(NAME=STORE to choose where it writes)")
    store = store.strip()
    if sep and not store:
        raise argparse.ArgumentTypeError(f"nothing after '{name}=': give a folder (or an MLflow URI), "
                                         "or leave out the '='")
    if _CREDENTIALS_IN_URL.search(store):
        # The spec is echoed in lines, logs and the UI loop's command line: a password must not be in it.
        raise argparse.ArgumentTypeError("the store URI carries credentials: give them to the tracker through "
                                         "its own settings instead (for MLflow, MLFLOW_TRACKING_USERNAME and "
                                         "MLFLOW_TRACKING_PASSWORD)")
    return TrackerSpec(name, store or None)


def project_name(text: str) -> str:
    """`--project`: a name every tracker accepts for a project (trackio names a database file after it)."""
    if not _PROJECT_PATTERN.match(text):
        raise argparse.ArgumentTypeError(f"invalid project {text!r}: use letters, digits, '.', '_' or '-' "
                                         "(starting with a letter or digit)")
    return text


def missing_package(name: str) -> TrackerError:
    return TrackerError(f"the {name} tracker needs its package, which is not installed: "
                        f"pip install 'autoresearch-supervisor[{name}]'")


def check_installed(spec: TrackerSpec) -> None:
    """Refuse at once, in one line, a tracker whose package is missing (without importing it: that is slow)."""
    for module in _MODULES[spec.name]:
        try:
            found = importlib.util.find_spec(module) is not None
        except (ImportError, ValueError):  # a module set to None in sys.modules, a broken parent package
            found = False
        if not found:
            raise missing_package(spec.name)


class TrackerRun(ABC):
    """One trial's run in a tracker."""

    name: str

    @abstractmethod
    def log_history(self, rows: Sequence[HistoryRow]) -> None:
        """Append points of the trial's curves, each at its step (steps only grow)."""

    @abstractmethod
    def set_summary(self, summary: Mapping[str, Any]) -> None:
        """Set (or update) the run's final values; may be called again with more keys."""

    @abstractmethod
    def finish(self, *, aborted: bool = False) -> None:
        """Close the run; an aborted trial's run is marked so where the tracker can say it."""

    @abstractmethod
    def discard(self) -> None:
        """Remove this run (a half-written one, after a failure), so that it is not taken for a done one."""


class Tracker(ABC):
    """A tracker's store, opened: where runs of one project go, grouped by the run's tag."""

    name: ClassVar[str]

    def __init__(self, project: str) -> None:
        self.project = project

    @abstractmethod
    def existing(self, group: str) -> dict[str, Any]:
        """Runs already in the group (or more: callers look up their own names): key -> what `delete` needs."""

    def key(self, name: str) -> str:
        """The key `existing` files a run name under (the name itself, unless the tracker renames runs)."""
        return name

    @abstractmethod
    def delete(self, group: str, handles: Sequence[Any]) -> None:
        """Remove runs `existing` returned (for a re-export that replaces them)."""

    @abstractmethod
    def start(self, *, group: str, name: str, config: Mapping[str, Any]) -> TrackerRun:
        """A new run in the group."""

    @abstractmethod
    def where(self) -> str:
        """Where the runs are, in a few words (a folder, a URI)."""

    @abstractmethod
    def how_to_look(self, group: str) -> str:
        """The command that shows the runs."""

    def close(self) -> None:  # noqa: B027 - optional: only a tracker that holds something overrides it
        """Let go of the store (a background process, a connection); the default holds nothing."""


def open_tracker(spec: TrackerSpec, *, project: str, journals_root: Path, run_dir: Path) -> Tracker:
    """The tracker `spec` names, its SDK imported now. Default stores: trackio's own (TRACKIO_DIR or
    ~/.cache/huggingface/trackio), W&B offline files in the run's folder, MLflow in journals/mlflow.db."""
    check_installed(spec)
    module = importlib.import_module(_BACKENDS[spec.name])
    return module.open_store(spec.store, project=project, journals_root=journals_root, run_dir=run_dir)


# ---- trackers' own lines on stdout -------------------------------------------------------------------------
class _ThreadMutedStream:
    """sys.stdout for every thread but those inside `muted()`.

    Tracker SDKs print a few lines per run ("* Created new run", "* Run finished. Uploading logs"); over a
    thousand trials they would bury the export's own lines, and in a live run the headless console. The
    live sink runs on its own thread while the loop keeps printing, so swapping sys.stdout for everyone
    (contextlib.redirect_stdout) would silence the loop too.
    """

    def __init__(self, target: TextIO) -> None:
        self.target = target
        self.muted_threads: Counter[int] = Counter()

    def write(self, text: str) -> int:
        if self.muted_threads[threading.get_ident()]:
            return len(text)
        return self.target.write(text)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.target, name)


_stream_lock = threading.Lock()
_stream: _ThreadMutedStream | None = None


@contextmanager
def muted() -> Iterator[None]:
    """Drop what this thread writes to stdout while inside; other threads print as before."""
    global _stream
    ident = threading.get_ident()
    with _stream_lock:
        if _stream is None or sys.stdout is not _stream:
            _stream = _ThreadMutedStream(sys.stdout)
            sys.stdout = _stream  # type: ignore[assignment]
        stream = _stream
        stream.muted_threads[ident] += 1
    try:
        yield
    finally:
        with _stream_lock:
            stream.muted_threads[ident] -= 1
            if stream.muted_threads[ident] <= 0:
                del stream.muted_threads[ident]
            if not stream.muted_threads and sys.stdout is stream:
                sys.stdout = stream.target
                _stream = None
