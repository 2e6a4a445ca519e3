"""Experiment trackers: a run's trials sent to trackio, Weights & Biases (offline) or MLflow.

One tracker run per trial, grouped by the run's tag (records.py says what goes in it), written by
`autoresearch export tracker` from the ledger (export.py) or streamed by `autoresearch run --tracker`
from the supervisor's process (live.py). Each tracker's SDK is imported only when that tracker is chosen
(an optional extra: `pip install 'autoresearch-supervisor[trackio]'`, `[wandb]`, `[mlflow]`).
"""

from supervisor.morning.trackers.base import (
    DEFAULT_PROJECT,
    TRACKERS,
    Tracker,
    TrackerError,
    TrackerRun,
    TrackerSpec,
    check_installed,
    open_tracker,
    tracker_spec,
)

# Only base is imported here: the CLI's parser reads tracker_spec from it on every command, so importing the
# package must stay light (no ledger, no SDK). records, export and live are imported where they are used.
__all__ = ["DEFAULT_PROJECT", "TRACKERS", "Tracker", "TrackerError", "TrackerRun", "TrackerSpec", "check_installed",
           "open_tracker", "tracker_spec"]
