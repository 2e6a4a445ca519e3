"""MLflow: one experiment per run's tag, one MLflow run per trial, through `MlflowClient` on any tracking URI.

The default store is a local SQLite database, journals/mlflow.db, shared by every run so `mlflow ui` can
compare nights. (MLflow 3 keeps the `./mlruns` file store in maintenance mode and refuses it unless
MLFLOW_ALLOW_FILE_STORE is set; a `file:` URI given here is passed to MLflow as it is.) MLFLOW_TRACKING_URI,
or `NAME=URI` on the command line, chooses another store, a tracking server included.

config -> params (nested values flattened: `platform.gpu`); history -> the metric `loss`, with its step and
time; summary -> numbers as metrics at the last step, text as tags (`decision`, `status`), `flagged` both.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

from supervisor.morning.trackers.base import Tracker, TrackerError, TrackerRun, missing_package
from supervisor.morning.trackers.records import HistoryRow

DEFAULT_DATABASE = "mlflow.db"
# MLflow's limits: 1000 metrics, 100 params and 100 tags a batch; a param value 6000 characters, a tag 8000.
METRICS_A_BATCH = 1000
PARAMS_A_BATCH = 100
VALUE_CHARS = 5000
SEARCH_PAGE = 1000


def _flatten(values: Mapping[str, Any], prefix: str = "") -> Iterator[tuple[str, Any]]:
    for key, value in values.items():
        if isinstance(value, Mapping):
            yield from _flatten(value, f"{prefix}{key}.")
        else:
            yield f"{prefix}{key}", value


def _text(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)[:VALUE_CHARS]


class MlflowRun(TrackerRun):
    def __init__(self, tracker: MlflowTracker, run_id: str, name: str) -> None:
        self._tracker = tracker
        self.run_id = run_id
        self.name = name
        self._last_step = 0

    def log_history(self, rows: Sequence[HistoryRow]) -> None:
        entities = self._tracker.entities
        now_ms = int(time.time() * 1000)
        metrics = []
        for row in rows:
            stamp = int(row.time * 1000) if row.time is not None else now_ms
            metrics += [entities.Metric(key, value, stamp, row.step) for key, value in row.values.items()]
            self._last_step = max(self._last_step, row.step)
        for first in range(0, len(metrics), METRICS_A_BATCH):
            self._tracker.client.log_batch(self.run_id, metrics=metrics[first:first + METRICS_A_BATCH])

    def set_summary(self, summary: Mapping[str, Any]) -> None:
        entities = self._tracker.entities
        now_ms = int(time.time() * 1000)
        metrics, tags = [], []
        for key, value in summary.items():
            if isinstance(value, bool | int | float):  # a bool is a 0/1 metric (to filter on) and a tag (to read)
                metrics.append(entities.Metric(key, float(value), now_ms, self._last_step))
            if not isinstance(value, int | float) or isinstance(value, bool):
                tags.append(entities.RunTag(key, _text(value)))
        self._tracker.client.log_batch(self.run_id, metrics=metrics, tags=tags)

    def finish(self, *, aborted: bool = False) -> None:
        self._tracker.client.set_terminated(self.run_id, status="KILLED" if aborted else "FINISHED")

    def discard(self) -> None:
        self._tracker.client.delete_run(self.run_id)


class MlflowTracker(Tracker):
    name = "mlflow"

    def __init__(self, client: Any, entities: Any, project: str, uri: str) -> None:
        super().__init__(project)
        self.client = client
        self.entities = entities
        self.uri = uri
        self._experiments: dict[str, str] = {}

    def _experiment(self, group: str, create: bool) -> str | None:
        if group in self._experiments:
            return self._experiments[group]
        experiment = self.client.get_experiment_by_name(group)
        if experiment is None:
            if not create:
                return None
            experiment_id = self.client.create_experiment(group, tags={"autoresearch.project": self.project})
        else:
            experiment_id = experiment.experiment_id
            if experiment.lifecycle_stage == "deleted" and create:
                self.client.restore_experiment(experiment_id)
        self._experiments[group] = experiment_id
        return experiment_id

    def existing(self, group: str) -> dict[str, Any]:
        experiment_id = self._experiment(group, create=False)
        if experiment_id is None:
            return {}
        found: dict[str, Any] = {}
        token = None
        while True:
            page = self.client.search_runs([experiment_id], max_results=SEARCH_PAGE, page_token=token)
            for run in page:
                found[run.info.run_name] = run.info.run_id
            token = page.token
            if not token:
                return found

    def delete(self, group: str, handles: Sequence[Any]) -> None:
        for run_id in handles:
            self.client.delete_run(run_id)

    def start(self, *, group: str, name: str, config: Mapping[str, Any]) -> TrackerRun:
        experiment_id = self._experiment(group, create=True)
        tags = {"autoresearch.tag": group, "autoresearch.project": self.project}
        run = self.client.create_run(experiment_id, run_name=name, tags=tags)
        params = [self.entities.Param(key, _text(value)) for key, value in _flatten(config) if value is not None]
        for first in range(0, len(params), PARAMS_A_BATCH):
            self.client.log_batch(run.info.run_id, params=params[first:first + PARAMS_A_BATCH])
        return MlflowRun(self, run.info.run_id, name)

    def where(self) -> str:
        return f"MLflow at {self.uri}"

    def how_to_look(self, group: str) -> str:
        if self.uri.startswith(("http://", "https://")):
            return f"{self.uri}   (experiment {group})"
        return f"mlflow ui --backend-store-uri {self.uri}   (experiment {group})"


def tracking_uri(store: str | None, journals_root: Path) -> str:
    """The store as MLflow names it: a URI as given; a path is a SQLite file (a folder gets mlflow.db)."""
    if store is None and os.environ.get("MLFLOW_TRACKING_URI"):
        return os.environ["MLFLOW_TRACKING_URI"]  # the person's own MLflow setting, read as MLflow reads it
    if store is None:
        store = str(Path(journals_root) / DEFAULT_DATABASE)
    if "://" in store or store.startswith(("file:", "databricks")):
        return store
    path = Path(store).expanduser().absolute()
    if path.is_dir() or not path.suffix:
        path = path / DEFAULT_DATABASE
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise TrackerError(f"MLflow store {path}: {exc.strerror or exc}") from None
    return f"sqlite:///{path}"


def open_store(store: str | None, *, project: str, journals_root: Path, run_dir: Path) -> MlflowTracker:
    del run_dir
    uri = tracking_uri(store, journals_root)
    # MLflow 3 reports usage to its servers unless told not to; a local export sends nothing.
    os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
    try:
        from mlflow import MlflowClient, entities
    except ImportError:
        raise missing_package("mlflow") from None
    # Creating a store logs its migrations at INFO: not the person's concern. (After the import, which sets
    # MLflow's own levels.)
    for name in ("mlflow", "alembic"):
        logging.getLogger(name).setLevel(logging.WARNING)
    try:
        client = MlflowClient(tracking_uri=uri)
        # The store is opened (and a new one created) on first use: now, so that a refusal comes before a run
        # starts or an export begins, in one line.
        client.search_experiments(max_results=1)
    except Exception as exc:  # noqa: BLE001 - MLflow refuses a store in many ways; each is said in one line
        raise TrackerError(f"MLflow store {uri}: {_first_line(exc)}") from None
    return MlflowTracker(client, entities, project, uri)


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__
