"""The ledger: one SQLite database (WAL, synchronous=FULL) per run, the source of truth.

Every write is a committed transaction before the loop moves on, so a SIGKILL at any moment loses nothing
that was finished. The human-readable files (results.tsv, journal.md, transcript.jsonl) are rendered from
here and can always be rebuilt. Other processes (a UI attached later, `autoresearch control`) read the
same file and talk to the loop through the `commands` table.

The schema's version is PRAGMA user_version; the numbered MIGRATIONS build a new ledger and bring an old one
up to date when it is opened for writing (see Ledger). tests/fixtures/ holds ledgers written by older code.
"""

from __future__ import annotations

import json
import os
import sqlite3
import threading
import time
import urllib.parse
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from supervisor.core.errors import UserError
from supervisor.core.types import (
    FINISHED_STATUSES,
    Command,
    JournalEntry,
    NoiseRecord,
    Plan,
    PlanStatus,
    Reflection,
    RepeatRecord,
    RunRecord,
    RunState,
    Steering,
    TransferRun,
    TransferStatus,
    Trial,
    TrialKind,
    TrialStatus,
    Trigger,
    Turn,
)

__all__ = ["MIGRATIONS", "SCHEMA_VERSION", "Ledger", "LedgerError", "Migration", "Trial"]  # Trial: old imports

# The first ledger's tables (commit 8df4d7f, schema 1). Everything since is a numbered step in MIGRATIONS, so
# a new ledger and an upgraded old one are built by the same steps and cannot drift apart.
FIRST_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS run (
    id INTEGER PRIMARY KEY CHECK (id = 1),
    tag TEXT NOT NULL,
    created REAL NOT NULL,
    config TEXT NOT NULL,
    state TEXT NOT NULL,
    state_detail TEXT NOT NULL DEFAULT '',
    pid INTEGER,
    updated REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS trials (
    id INTEGER PRIMARY KEY,
    kind TEXT NOT NULL DEFAULT 'trial',          -- trial | imported
    commit_sha TEXT,
    parent_commit TEXT,
    parent_trial INTEGER,
    description TEXT NOT NULL,
    category TEXT,
    plan_id INTEGER,
    status TEXT NOT NULL,                        -- running | keep | discard | crash | aborted (| held: 2)
    val_bpb REAL,
    extra_values TEXT NOT NULL DEFAULT '[]',     -- val_bpb of confirmation re-runs (confirm policy)
    parent_val_bpb REAL,
    delta REAL,                                  -- val_bpb - parent's (negative is better)
    flagged INTEGER NOT NULL DEFAULT 0,
    decision TEXT NOT NULL DEFAULT '',
    crash_reason TEXT,
    diff TEXT NOT NULL DEFAULT '',
    log_tail TEXT NOT NULL DEFAULT '',
    summary TEXT NOT NULL DEFAULT '{}',
    budget_s REAL,
    platform TEXT NOT NULL DEFAULT '{}',
    seed INTEGER,
    started REAL,
    finished REAL,
    wall_seconds REAL,
    training_seconds REAL,
    num_steps INTEGER,
    tokens_per_s REAL,
    mfu_percent REAL,
    peak_vram_mb REAL,
    num_params_m REAL
);
CREATE TABLE IF NOT EXISTS metrics (
    trial_id INTEGER NOT NULL,
    seq INTEGER NOT NULL,
    step INTEGER, elapsed REAL, loss REAL, lr REAL, tokens_per_s REAL, mfu REAL, vram_mb REAL,
    PRIMARY KEY (trial_id, seq)
);
CREATE TABLE IF NOT EXISTS journal (
    id INTEGER PRIMARY KEY,
    trial_id INTEGER NOT NULL UNIQUE,
    created REAL NOT NULL,
    hypothesis TEXT NOT NULL,
    change TEXT NOT NULL,
    result TEXT NOT NULL,
    interpretation TEXT NOT NULL,
    next_step TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS reflections (
    id INTEGER PRIMARY KEY,
    created REAL NOT NULL,
    after_trial INTEGER,
    triggers TEXT NOT NULL,
    load_bearing TEXT NOT NULL,
    dead_ends TEXT NOT NULL,
    retest TEXT NOT NULL,
    plan TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS triggers (
    id INTEGER PRIMARY KEY,
    created REAL NOT NULL,
    kind TEXT NOT NULL,
    detail TEXT NOT NULL,
    reflection_id INTEGER
);
CREATE TABLE IF NOT EXISTS plans (
    id INTEGER PRIMARY KEY,
    created REAL NOT NULL,
    idea TEXT NOT NULL,
    rationale TEXT NOT NULL DEFAULT '',
    status TEXT NOT NULL DEFAULT 'open',         -- open | tried | dropped
    reason TEXT,
    closed REAL,
    trial_id INTEGER
);
CREATE TABLE IF NOT EXISTS steering (
    id INTEGER PRIMARY KEY,
    created REAL NOT NULL,
    message TEXT NOT NULL,
    delivered_turn INTEGER,
    delivered REAL
);
CREATE TABLE IF NOT EXISTS turns (
    id INTEGER PRIMARY KEY,
    created REAL NOT NULL,
    role TEXT NOT NULL,                          -- agent | tool | system
    text TEXT NOT NULL DEFAULT '',
    tool TEXT,
    input TEXT,
    refused INTEGER NOT NULL DEFAULT 0,
    usage TEXT
);
CREATE TABLE IF NOT EXISTS noise (
    id INTEGER PRIMARY KEY,
    created REAL NOT NULL,
    commit_sha TEXT NOT NULL,
    budget_s REAL NOT NULL,
    platform TEXT NOT NULL,
    values_json TEXT NOT NULL,
    sd REAL,
    factor REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS commands (
    id INTEGER PRIMARY KEY,
    created REAL NOT NULL,
    command TEXT NOT NULL,
    arg TEXT NOT NULL DEFAULT '',
    consumed REAL
);
"""

JSON_FIELDS = ("summary", "platform", "extra_values", "suspicions")


@dataclass(frozen=True)
class Migration:
    """One step of the schema, applied once, in order, inside the upgrade's single transaction.

    `apply` must be harmless on a ledger that already has the step (check before adding): schema 1 grew
    columns without a version bump, and a version edited by hand is trusted at its lower value.
    `readable_before` says whether today's queries still read a ledger that lacks the step (true of an added
    column with a default, which a reader takes as unknown); a read-only open never upgrades, so it refuses
    a ledger that misses a step marked False and names the command that upgrades it.
    """

    version: int
    description: str
    apply: Callable[[sqlite3.Connection], None]
    readable_before: bool = True


def _statements(script: str) -> list[str]:
    """A script's statements one by one: `executescript` would commit the upgrade's transaction halfway."""
    statements, pending = [], ""
    for line in script.splitlines(keepends=True):
        pending += line
        if sqlite3.complete_statement(pending):
            statements.append(pending.strip())
            pending = ""
    return statements


def _add_missing_columns(db: sqlite3.Connection, table: str, columns: Sequence[tuple[str, str]]) -> None:
    have = {row[1] for row in db.execute(f"PRAGMA table_info({table})")}
    for name, declaration in columns:
        if name not in have:
            db.execute(f"ALTER TABLE {table} ADD COLUMN {name} {declaration}")


def _create_first_schema(db: sqlite3.Connection) -> None:
    for statement in _statements(FIRST_SCHEMA):
        db.execute(statement)


def _add_trial_pid_suspicions_sandbox(db: sqlite3.Connection) -> None:
    # pid and suspicions arrived during schema 1 without a bump, so many schema-1 ledgers have them already.
    _add_missing_columns(db, "trials", (("pid", "INTEGER"), ("suspicions", "TEXT NOT NULL DEFAULT '[]'"),
                                        ("sandbox", "TEXT")))


def _add_steering_acknowledgement(db: sqlite3.Connection) -> None:
    _add_missing_columns(db, "steering", (("acknowledged", "REAL"), ("ack_how", "TEXT"), ("ack_note", "TEXT")))


AUDIT_REPEATS_TRANSFER = """
CREATE TABLE IF NOT EXISTS repeats (
    id INTEGER PRIMARY KEY,
    created REAL NOT NULL,
    earlier_trial INTEGER NOT NULL,              -- the trial the refused submission repeated
    match TEXT NOT NULL,                         -- exact | near
    description TEXT NOT NULL DEFAULT ''
);
CREATE TABLE IF NOT EXISTS transfer_runs (
    id INTEGER PRIMARY KEY,
    created REAL NOT NULL,
    scale TEXT NOT NULL,                         -- the scale's key: runs compare only within one
    scale_json TEXT NOT NULL DEFAULT '{}',
    trial_id INTEGER NOT NULL,                   -- the trial whose code ran (a keep, or the chain's root)
    commit_sha TEXT NOT NULL,
    seed INTEGER NOT NULL,
    status TEXT NOT NULL,                        -- running | ok | crash | aborted
    val_bpb REAL,
    reason TEXT,
    wall_seconds REAL,
    pid INTEGER,
    started REAL,
    finished REAL
);
"""


def _add_audit_repeats_transfer(db: sqlite3.Connection) -> None:
    _add_missing_columns(db, "trials", (("audit_val_bpb", "REAL"), ("audit_note", "TEXT"),
                                        ("retest_of", "INTEGER")))
    for statement in _statements(AUDIT_REPEATS_TRANSFER):
        db.execute(statement)


# Strictly ascending, never renumbered or edited once released: a ledger records the last step it has.
MIGRATIONS: tuple[Migration, ...] = (
    Migration(1, "the first ledger: meta, run, trials, metrics, journal, reflections, triggers, plans, "
                 "steering, turns, noise, commands", _create_first_schema),
    Migration(2, "trials.pid (a trial's process group), trials.suspicions (reward-hacking findings), "
                 "trials.sandbox (how a trial was confined); the status 'held'", _add_trial_pid_suspicions_sandbox),
    Migration(3, "steering.acknowledged, ack_how, ack_note: a message stays in the agent's prompt until it is "
                 "acknowledged", _add_steering_acknowledgement),
    Migration(4, "trials.audit_val_bpb, audit_note (the audit split's score of a keep), trials.retest_of (a "
                 "deliberate re-test); the tables repeats (refused repeats) and transfer_runs (the scale-transfer "
                 "check)", _add_audit_repeats_transfer),
)
SCHEMA_VERSION = MIGRATIONS[-1].version


@dataclass(frozen=True)
class _StoredVersion:
    """What a ledger file says its schema is.

    Since schema 2 the version is PRAGMA user_version; meta.schema_version is kept in step because the
    supervisors before it read only that row, and so refuse a ledger newer than they are instead of writing to
    it. A ledger written before user_version existed records 0 there and its version in meta.
    """

    user_version: int  # 0: not recorded
    meta_version: int | None  # None: no row
    has_trials: bool

    @property
    def start(self) -> int:
        """The last step the file surely has (0: a new, empty file): the lower record, if they disagree."""
        recorded = [v for v in (self.user_version, self.meta_version) if v]
        if recorded:
            return min(recorded)
        return 1 if self.has_trials else 0

    @property
    def newest(self) -> int:
        return max(self.user_version, self.meta_version or 0)

    @property
    def is_current(self) -> bool:
        return self.user_version == SCHEMA_VERSION and self.meta_version == SCHEMA_VERSION


def _version_number(value: Any, where: str) -> int:
    try:
        return int(value)
    except (TypeError, ValueError):
        raise sqlite3.DatabaseError(f"its schema version in {where} is {value!r}, not a number") from None


def _stored_version(db: sqlite3.Connection) -> _StoredVersion:
    tables = {row[0] for row in db.execute("SELECT name FROM sqlite_master WHERE type='table'")}
    meta_version = None
    if "meta" in tables:
        row = db.execute("SELECT value FROM meta WHERE key='schema_version'").fetchone()
        meta_version = None if row is None else _version_number(row[0], "meta.schema_version")
    user_version = _version_number(db.execute("PRAGMA user_version").fetchone()[0], "PRAGMA user_version")
    return _StoredVersion(user_version, meta_version, "trials" in tables)


class LedgerError(UserError, RuntimeError):
    """The ledger file is missing, corrupt or from an unknown version; the message says what to do."""


def _encode_trial_fields(fields: dict[str, Any]) -> dict[str, Any]:
    """Trial fields as SQLite columns: lists and dicts as JSON, the flag as 0/1."""
    encoded = {k: (json.dumps(v) if k in JSON_FIELDS else v) for k, v in fields.items()}
    if "flagged" in encoded:
        encoded["flagged"] = int(bool(encoded["flagged"]))
    return encoded


def _trial_from_row(row: sqlite3.Row) -> Trial:
    data = dict(row)
    data["kind"] = TrialKind(data["kind"])
    data["status"] = TrialStatus(data["status"])
    data["extra_values"] = tuple(json.loads(data["extra_values"] or "[]"))
    data["summary"] = json.loads(data["summary"] or "{}")
    data["platform"] = json.loads(data["platform"] or "{}")
    data["suspicions"] = tuple(json.loads(data.get("suspicions") or "[]"))
    for column in ("sandbox", "audit_val_bpb", "audit_note", "retest_of"):
        data.setdefault(column, None)  # a ledger older than the column, opened read-only: unknown
    data["flagged"] = bool(data["flagged"])
    return Trial(**data)


def _reflection_from_row(row: sqlite3.Row) -> Reflection:
    return Reflection(**{**dict(row), "triggers": tuple(json.loads(row["triggers"]))})


def _plan_from_row(row: sqlite3.Row) -> Plan:
    return Plan(**{**dict(row), "status": PlanStatus(row["status"])})


def _turn_from_row(row: sqlite3.Row) -> Turn:
    return Turn(**{**dict(row), "input": json.loads(row["input"]) if row["input"] else None,
                   "usage": json.loads(row["usage"]) if row["usage"] else None, "refused": bool(row["refused"])})


def _noise_from_row(row: sqlite3.Row) -> NoiseRecord:
    data = dict(row)
    data["values"] = tuple(json.loads(data.pop("values_json")))
    return NoiseRecord(**data)


class Ledger:
    """Thread-safe access to one run's SQLite ledger.

    Opened for writing, an older ledger is upgraded in place: the pending MIGRATIONS run in one BEGIN
    IMMEDIATE transaction (all or none; a UI reading the file meanwhile keeps its snapshot, another writer
    waits and then finds the work done), after a copy of the file is kept at `<ledger>.bak-v<old version>`
    with SQLite's backup API, so a step that commits something wrong loses nothing either. Opened read-only
    (status, review, report, export), it never writes: an older ledger is read as it is (a column it lacks
    reads as unknown), and a ledger newer than this code is refused either way.
    """

    def __init__(self, path: Path, *, create: bool = False, readonly: bool = False) -> None:
        self.path = Path(path)
        if not self.path.exists() and not create:
            raise LedgerError(f"no ledger at {self.path}: no run with this tag (start one with `autoresearch run`)")
        if not create and self.path.stat().st_size == 0:
            # SQLite would take an empty file for a new database and write a fresh schema over what was lost.
            raise LedgerError(f"the ledger {self.path} is empty (0 bytes): the run's record is lost or was never "
                              "written. Nothing has been changed; rebuild what you need from results.tsv and "
                              "journal.md beside it, or start a new run with another --tag.")
        if not readonly:
            self.path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.RLock()
        self.schema_version = SCHEMA_VERSION  # the schema of the file once open: older only when read-only
        # mode=ro: a reader (status, review, report, export) never creates or rewrites the file.
        uri = f"file:{urllib.parse.quote(str(self.path.absolute()))}?mode=ro" if readonly else str(self.path)
        try:
            self._db = sqlite3.connect(uri, uri=readonly, check_same_thread=False, timeout=30.0,
                                       isolation_level=None)
        except sqlite3.DatabaseError as exc:
            raise self._unreadable(exc) from exc
        try:
            self._open(readonly)
        except BaseException as exc:
            self._db.close()
            if isinstance(exc, sqlite3.DatabaseError):
                raise self._unreadable(exc) from exc
            raise

    def _unreadable(self, exc: sqlite3.DatabaseError) -> LedgerError:
        return LedgerError(
            f"the ledger {self.path} cannot be read ({exc}). It may be truncated or corrupted. "
            f"Nothing has been changed. Recover with `sqlite3 {self.path} '.recover' > recovered.sql`, "
            "or move it aside and rebuild what you need from journals/<tag>/results.tsv and journal.md.")

    def _open(self, readonly: bool) -> None:
        self._db.row_factory = sqlite3.Row
        if not readonly:
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=FULL")
        result = self._db.execute("PRAGMA quick_check").fetchone()[0]
        if result != "ok":
            raise sqlite3.DatabaseError(f"integrity check failed: {result}")
        if readonly:
            self.schema_version = self._readable_version()
        else:
            self._upgrade()

    def _refuse_if_newer(self, stored: _StoredVersion) -> None:
        if stored.newest > SCHEMA_VERSION:
            raise LedgerError(f"the ledger {self.path} was written by a newer version of autoresearch (schema "
                              f"{stored.newest}; this one reads up to {SCHEMA_VERSION}). Nothing has been "
                              "changed; upgrade autoresearch-supervisor to open it.")

    def _readable_version(self) -> int:
        """The file's schema, read without writing; refused when today's queries cannot read it."""
        stored = _stored_version(self._db)
        self._refuse_if_newer(stored)
        if not stored.start:  # a reader cannot build the tables: read as damaged, which it is
            raise sqlite3.DatabaseError("it holds no ledger tables")
        unreadable = [m for m in MIGRATIONS if m.version > stored.start and not m.readable_before]
        if unreadable:
            raise LedgerError(
                f"the ledger {self.path} is from schema {stored.start} and cannot be read until it is upgraded "
                f"to schema {SCHEMA_VERSION} ({unreadable[0].description}). Nothing has been changed; any "
                f"command that writes to the run upgrades it, e.g. `autoresearch run --resume --tag "
                f"{self.path.parent.name}` (a copy is kept at {self._backup_path(stored.start).name}).")
        return stored.start

    def _upgrade(self) -> None:
        """Build a new ledger or bring an older one to SCHEMA_VERSION; writes nothing when it is current."""
        stored = _stored_version(self._db)
        self._refuse_if_newer(stored)
        if stored.is_current:
            return
        with self.transaction() as db:
            stored = _stored_version(db)  # again under the write lock: another process may have done it
            self._refuse_if_newer(stored)
            pending = [m for m in MIGRATIONS if m.version > stored.start]
            copy_note = ""
            if pending and stored.start:  # a new file has nothing to lose
                self._back_up(stored.start)
                copy_note = f"; a copy of it is at {self._backup_path(stored.start)}"
            for migration in pending:
                try:
                    migration.apply(db)
                except Exception as exc:
                    raise LedgerError(
                        f"upgrading the ledger {self.path} from schema {stored.start} to {SCHEMA_VERSION} failed "
                        f"at step {migration.version} ({migration.description}): {exc}. Nothing has been "
                        f"changed (the upgrade is one transaction){copy_note}.") from exc
            db.execute(f"PRAGMA user_version = {int(SCHEMA_VERSION)}")
            db.execute("INSERT OR REPLACE INTO meta VALUES ('schema_version', ?)", (str(SCHEMA_VERSION),))

    def _backup_path(self, version: int) -> Path:
        return self.path.with_name(f"{self.path.name}.bak-v{version}")

    def _back_up(self, version: int) -> None:
        """Copy the ledger as it is to `<ledger>.bak-v<version>` (called holding the write lock)."""
        target = self._backup_path(version)
        partial = target.with_name(target.name + ".partial")
        # A second, read-only connection: the backup API on the connection holding the write transaction
        # waits for itself forever. WAL lets it read the committed file while that lock is held.
        uri = f"file:{urllib.parse.quote(str(self.path.absolute()))}?mode=ro"
        try:
            partial.unlink(missing_ok=True)
            source, copy = sqlite3.connect(uri, uri=True), sqlite3.connect(partial)
            try:
                source.backup(copy)
            finally:
                copy.close()
                source.close()
            os.replace(partial, target)  # a copy cut short by a crash is never taken for a whole one
        except (OSError, sqlite3.Error) as exc:
            raise LedgerError(f"cannot keep a copy of the ledger at {target} before upgrading it from schema "
                              f"{version} ({exc}). Nothing has been changed; free some disk space "
                              f"(the copy needs {self.path.stat().st_size // 1_000_000 + 1} MB) and try again."
                              ) from exc

    def close(self) -> None:
        with self._lock:
            self._db.close()

    @contextmanager
    def transaction(self) -> Iterator[sqlite3.Connection]:
        """One durable transaction: committed (and fsynced, synchronous=FULL) when the block ends."""
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                yield self._db
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
            else:
                self._db.execute("COMMIT")

    def _query(self, sql: str, params: Sequence[Any] = ()) -> list[sqlite3.Row]:
        with self._lock:
            return self._db.execute(sql, params).fetchall()

    # ---- small facts about the run (key -> JSON) -----------------------------------------------------------
    def set_meta(self, key: str, value: Any) -> None:
        with self.transaction() as db:
            db.execute("INSERT OR REPLACE INTO meta VALUES (?, ?)", (key, json.dumps(value)))

    def get_meta(self, key: str, default: Any = None) -> Any:
        rows = self._query("SELECT value FROM meta WHERE key=?", (key,))
        return json.loads(rows[0][0]) if rows else default

    # ---- the run --------------------------------------------------------------------------------------
    def init_run(self, tag: str, config_json: str) -> None:
        now = time.time()
        with self.transaction() as db:
            db.execute(
                "INSERT OR IGNORE INTO run (id, tag, created, config, state, updated) VALUES (1, ?, ?, ?, ?, ?)",
                (tag, now, config_json, RunState.NEW, now),
            )

    def update_config(self, config_json: str) -> None:
        with self.transaction() as db:
            db.execute("UPDATE run SET config=?, updated=? WHERE id=1", (config_json, time.time()))

    def run_row(self) -> RunRecord:
        rows = self._query("SELECT tag, created, config, state, state_detail, pid, updated FROM run WHERE id=1")
        if not rows:
            raise LedgerError(f"the ledger {self.path} has no run record")
        return RunRecord(**{**dict(rows[0]), "state": RunState(rows[0]["state"])})

    def set_state(self, state: RunState, detail: str = "", pid: int | None = None) -> None:
        with self.transaction() as db:
            db.execute(
                "UPDATE run SET state=?, state_detail=?, pid=COALESCE(?, pid), updated=? WHERE id=1",
                (state, detail, pid, time.time()),
            )

    # ---- trials ---------------------------------------------------------------------------------------
    def start_trial(self, *, commit_sha: str, parent_commit: str | None, parent_trial: int | None,
                    description: str, category: str | None, plan_id: int | None, diff: str,
                    budget_s: float, platform: dict[str, str], seed: int) -> int:
        with self.transaction() as db:
            cur = db.execute(
                "INSERT INTO trials (commit_sha, parent_commit, parent_trial, description, category, plan_id,"
                " status, diff, budget_s, platform, seed, started) VALUES (?,?,?,?,?,?,?,?,?,?,?,?)",
                (commit_sha, parent_commit, parent_trial, description, category, plan_id, TrialStatus.RUNNING,
                 diff, budget_s, json.dumps(platform), seed, time.time()),
            )
            if plan_id is not None:
                db.execute("UPDATE plans SET status=?, trial_id=?, closed=? WHERE id=? AND status=?",
                           (PlanStatus.TRIED, cur.lastrowid, time.time(), plan_id, PlanStatus.OPEN))
            return int(cur.lastrowid)

    def add_metrics(self, trial_id: int, first_seq: int, rows: Sequence[dict[str, Any]]) -> None:
        if not rows:
            return
        with self.transaction() as db:
            db.executemany(
                "INSERT OR REPLACE INTO metrics VALUES (?,?,?,?,?,?,?,?,?)",
                [(trial_id, first_seq + i, r.get("step"), r.get("elapsed"), r.get("loss"), r.get("lr"),
                  r.get("tokens_per_s"), r.get("mfu"), r.get("vram_mb")) for i, r in enumerate(rows)],
            )

    def set_trial_pid(self, trial_id: int, pid: int | None) -> None:
        with self.transaction() as db:
            db.execute("UPDATE trials SET pid=? WHERE id=?", (pid, trial_id))

    def add_extra_value(self, trial_id: int, value: float) -> None:
        with self.transaction() as db:
            row = db.execute("SELECT extra_values FROM trials WHERE id=?", (trial_id,)).fetchone()
            values = json.loads(row[0]) + [value]
            db.execute("UPDATE trials SET extra_values=? WHERE id=?", (json.dumps(values), trial_id))

    def finish_trial(self, trial_id: int, **fields: Any) -> None:
        """Record the outcome of a trial in one transaction (status and every number together)."""
        allowed = set(Trial.__dataclass_fields__) - {"id"}
        unknown = set(fields) - allowed
        if unknown:
            raise ValueError(f"unknown trial fields: {sorted(unknown)}")
        encoded = _encode_trial_fields(fields)
        encoded.setdefault("finished", time.time())
        sets = ", ".join(f"{k}=?" for k in encoded)
        with self.transaction() as db:
            db.execute(f"UPDATE trials SET {sets} WHERE id=?", (*encoded.values(), trial_id))

    def insert_imported_trial(self, **fields: Any) -> int:
        """A finished trial that did not run here (an upstream results.tsv row)."""
        return self.insert_imported_trials([fields])[0]

    def insert_imported_trials(self, rows: Sequence[dict[str, Any]]) -> list[int]:
        """Several imported trials in one transaction (all or none), in order; their ids."""
        ids = []
        with self.transaction() as db:
            for row in rows:
                encoded = _encode_trial_fields({"kind": TrialKind.IMPORTED, **row})
                cols = ", ".join(encoded)
                marks = ", ".join("?" for _ in encoded)
                cur = db.execute(f"INSERT INTO trials ({cols}) VALUES ({marks})", tuple(encoded.values()))
                ids.append(int(cur.lastrowid))
        return ids

    def trial(self, trial_id: int) -> Trial | None:
        rows = self._query("SELECT * FROM trials WHERE id=?", (trial_id,))
        return _trial_from_row(rows[0]) if rows else None

    def trials(self, statuses: Sequence[TrialStatus] | None = None) -> list[Trial]:
        if statuses:
            marks = ",".join("?" for _ in statuses)
            rows = self._query(f"SELECT * FROM trials WHERE status IN ({marks}) ORDER BY id", tuple(statuses))
        else:
            rows = self._query("SELECT * FROM trials ORDER BY id")
        return [_trial_from_row(r) for r in rows]

    def finished_trials(self) -> list[Trial]:
        return self.trials(FINISHED_STATUSES)

    def running_trials(self) -> list[Trial]:
        return self.trials([TrialStatus.RUNNING])

    def best_keep(self) -> Trial | None:
        """The branch's head: the most recent keep (keeps only ever improve on their parent)."""
        rows = self._query("SELECT * FROM trials WHERE status=? ORDER BY id DESC LIMIT 1", (TrialStatus.KEEP,))
        return _trial_from_row(rows[0]) if rows else None

    def metrics(self, trial_id: int, after_seq: int = -1) -> list[dict[str, Any]]:
        """A trial's metric rows in order; `after_seq` reads only the rows a watcher has not seen yet."""
        rows = self._query("SELECT * FROM metrics WHERE trial_id=? AND seq>? ORDER BY seq", (trial_id, after_seq))
        return [dict(r) for r in rows]

    def metric_count(self, trial_id: int) -> int:
        return int(self._query("SELECT COUNT(*) FROM metrics WHERE trial_id=?", (trial_id,))[0][0])

    # ---- journal, reflections, triggers ----------------------------------------------------------------
    def add_journal(self, trial_id: int, *, hypothesis: str, change: str, result: str, interpretation: str,
                    next_step: str) -> int:
        with self.transaction() as db:
            cur = db.execute(
                "INSERT INTO journal (trial_id, created, hypothesis, change, result, interpretation, next_step)"
                " VALUES (?,?,?,?,?,?,?)",
                (trial_id, time.time(), hypothesis, change, result, interpretation, next_step),
            )
            return int(cur.lastrowid)

    def journal_entries(self) -> list[JournalEntry]:
        return [JournalEntry(**r) for r in self._query("SELECT * FROM journal ORDER BY trial_id")]

    def journal_for(self, trial_id: int) -> JournalEntry | None:
        rows = self._query("SELECT * FROM journal WHERE trial_id=?", (trial_id,))
        return JournalEntry(**rows[0]) if rows else None

    def trials_missing_journal(self) -> list[Trial]:
        marks = ",".join("?" for _ in FINISHED_STATUSES)
        rows = self._query(
            "SELECT t.* FROM trials t LEFT JOIN journal j ON j.trial_id = t.id "
            f"WHERE t.status IN ({marks}) AND t.kind=? AND j.id IS NULL ORDER BY t.id",
            (*FINISHED_STATUSES, TrialKind.TRIAL),
        )
        return [_trial_from_row(r) for r in rows]

    def add_trigger(self, kind: str, detail: str) -> None:
        with self.transaction() as db:
            db.execute("INSERT INTO triggers (created, kind, detail) VALUES (?,?,?)", (time.time(), kind, detail))

    def open_triggers(self) -> list[Trigger]:
        return [Trigger(**r) for r in self._query("SELECT * FROM triggers WHERE reflection_id IS NULL ORDER BY id")]

    def add_reflection(self, *, after_trial: int | None, load_bearing: str, dead_ends: str, retest: str,
                       plan: str) -> int:
        with self.transaction() as db:
            triggers = db.execute("SELECT kind, detail FROM triggers WHERE reflection_id IS NULL").fetchall()
            cur = db.execute(
                "INSERT INTO reflections (created, after_trial, triggers, load_bearing, dead_ends, retest, plan)"
                " VALUES (?,?,?,?,?,?,?)",
                (time.time(), after_trial, json.dumps([f"{k}: {d}" for k, d in triggers]), load_bearing,
                 dead_ends, retest, plan),
            )
            db.execute("UPDATE triggers SET reflection_id=? WHERE reflection_id IS NULL", (cur.lastrowid,))
            return int(cur.lastrowid)

    def reflections(self) -> list[Reflection]:
        return [_reflection_from_row(r) for r in self._query("SELECT * FROM reflections ORDER BY id")]

    # ---- plans and steering ------------------------------------------------------------------------------
    def add_plan(self, idea: str, rationale: str = "") -> int:
        with self.transaction() as db:
            cur = db.execute("INSERT INTO plans (created, idea, rationale) VALUES (?,?,?)",
                             (time.time(), idea, rationale))
            return int(cur.lastrowid)

    def drop_plan(self, plan_id: int, reason: str) -> None:
        with self.transaction() as db:
            db.execute("UPDATE plans SET status=?, reason=?, closed=? WHERE id=?",
                       (PlanStatus.DROPPED, reason, time.time(), plan_id))

    def plan(self, plan_id: int) -> Plan | None:
        rows = self._query("SELECT * FROM plans WHERE id=?", (plan_id,))
        return _plan_from_row(rows[0]) if rows else None

    def plans(self) -> list[Plan]:
        return [_plan_from_row(r) for r in self._query("SELECT * FROM plans ORDER BY id")]

    def add_steering(self, message: str) -> int:
        with self.transaction() as db:
            cur = db.execute("INSERT INTO steering (created, message) VALUES (?,?)", (time.time(), message))
            return int(cur.lastrowid)

    def pending_steering(self) -> list[Steering]:
        return [Steering(**r) for r in self._query("SELECT * FROM steering WHERE delivered IS NULL ORDER BY id")]

    def mark_steering_delivered(self, ids: Sequence[int], turn_id: int) -> None:
        with self.transaction() as db:
            db.executemany("UPDATE steering SET delivered=?, delivered_turn=? WHERE id=?",
                           [(time.time(), turn_id, i) for i in ids])

    def steering(self) -> list[Steering]:
        return [Steering(**r) for r in self._query("SELECT * FROM steering ORDER BY id")]

    def unacknowledged_steering(self) -> list[Steering]:
        """The messages the agent's prompt still carries: not yet acknowledged, delivered or not."""
        return [m for m in self.steering() if m.acknowledged is None]

    def acknowledge_steering(self, ids: Sequence[int], how: str, note: str = "") -> None:
        """Mark messages acknowledged (`how`: "journal" or "tool"); an acknowledged one is never re-opened."""
        with self.transaction() as db:
            db.executemany("UPDATE steering SET acknowledged=?, ack_how=?, ack_note=? WHERE id=? AND "
                           "acknowledged IS NULL", [(time.time(), how, note, i) for i in ids])

    # ---- the agent's transcript ---------------------------------------------------------------------------
    def add_turn(self, role: str, text: str = "", *, tool: str | None = None, input: Any = None,
                 refused: bool = False, usage: dict[str, Any] | None = None) -> int:
        with self.transaction() as db:
            cur = db.execute(
                "INSERT INTO turns (created, role, text, tool, input, refused, usage) VALUES (?,?,?,?,?,?,?)",
                (time.time(), role, text, tool, None if input is None else json.dumps(input), int(refused),
                 None if usage is None else json.dumps(usage)),
            )
            return int(cur.lastrowid)

    def turns(self, after_id: int = 0) -> list[Turn]:
        return [_turn_from_row(r) for r in self._query("SELECT * FROM turns WHERE id > ? ORDER BY id", (after_id,))]

    def refusal_count(self) -> int:
        return int(self._query("SELECT COUNT(*) FROM turns WHERE refused=1")[0][0])

    # ---- noise floor ----------------------------------------------------------------------------------------
    def add_noise(self, *, commit_sha: str, budget_s: float, platform: str, values: Sequence[float],
                  sd: float | None, factor: float) -> int:
        with self.transaction() as db:
            cur = db.execute(
                "INSERT INTO noise (created, commit_sha, budget_s, platform, values_json, sd, factor)"
                " VALUES (?,?,?,?,?,?,?)",
                (time.time(), commit_sha, budget_s, platform, json.dumps(list(values)), sd, factor),
            )
            return int(cur.lastrowid)

    def noise_records(self) -> list[NoiseRecord]:
        """Every noise measurement of the run, oldest first."""
        return [_noise_from_row(r) for r in self._query("SELECT * FROM noise ORDER BY id")]

    def latest_noise(self, budget_s: float | None = None) -> NoiseRecord | None:
        """The newest noise measurement, for this budget when given (results compare only within one)."""
        if budget_s is None:
            rows = self._query("SELECT * FROM noise ORDER BY id DESC LIMIT 1")
        else:
            rows = self._query("SELECT * FROM noise WHERE abs(budget_s - ?) < 1e-6 ORDER BY id DESC LIMIT 1",
                               (budget_s,))
        return _noise_from_row(rows[0]) if rows else None

    # ---- the audit split, repeats, the transfer check (schema 4; an older ledger read-only has none) ------------
    def set_audit(self, trial_id: int, audit_val_bpb: float | None, note: str | None = None) -> None:
        with self.transaction() as db:
            db.execute("UPDATE trials SET audit_val_bpb=?, audit_note=? WHERE id=?", (audit_val_bpb, note, trial_id))

    def set_retest_of(self, trial_id: int, earlier_trial: int | None) -> None:
        with self.transaction() as db:
            db.execute("UPDATE trials SET retest_of=? WHERE id=?", (earlier_trial, trial_id))

    def add_repeat(self, earlier_trial: int, match: str, description: str) -> int:
        with self.transaction() as db:
            cur = db.execute("INSERT INTO repeats (created, earlier_trial, match, description) VALUES (?,?,?,?)",
                             (time.time(), earlier_trial, match, description))
            return int(cur.lastrowid)

    def repeats(self) -> list[RepeatRecord]:
        """Submissions refused as repeats of an earlier trial, oldest first."""
        if self.schema_version < 4:
            return []
        return [RepeatRecord(**dict(r)) for r in self._query("SELECT * FROM repeats ORDER BY id")]

    def start_transfer_run(self, *, scale: str, scale_json: dict, trial_id: int, commit_sha: str, seed: int) -> int:
        with self.transaction() as db:
            cur = db.execute(
                "INSERT INTO transfer_runs (created, scale, scale_json, trial_id, commit_sha, seed, status, started)"
                " VALUES (?,?,?,?,?,?,?,?)",
                (time.time(), scale, json.dumps(scale_json, sort_keys=True), trial_id, commit_sha, seed,
                 TransferStatus.RUNNING, time.time()))
            return int(cur.lastrowid)

    def set_transfer_pid(self, run_id: int, pid: int | None) -> None:
        with self.transaction() as db:
            db.execute("UPDATE transfer_runs SET pid=? WHERE id=?", (pid, run_id))

    def finish_transfer_run(self, run_id: int, *, status: TransferStatus, val_bpb: float | None = None,
                            reason: str | None = None, wall_seconds: float | None = None) -> None:
        with self.transaction() as db:
            db.execute("UPDATE transfer_runs SET status=?, val_bpb=?, reason=?, wall_seconds=?, finished=? "
                       "WHERE id=?", (TransferStatus(status), val_bpb, reason, wall_seconds, time.time(), run_id))

    def abort_running_transfer_runs(self, reason: str) -> list[int]:
        """Runs left 'running' by a transfer that died: aborted (their numbers never arrived)."""
        if self.schema_version < 4:
            return []
        with self.transaction() as db:
            ids = [r[0] for r in db.execute("SELECT id FROM transfer_runs WHERE status=?", (TransferStatus.RUNNING,))]
            db.execute("UPDATE transfer_runs SET status=?, reason=?, finished=? WHERE status=?",
                       (TransferStatus.ABORTED, reason, time.time(), TransferStatus.RUNNING))
            return ids

    def transfer_runs(self, scale: str | None = None) -> list[TransferRun]:
        """The transfer check's runs, oldest first; of one scale when given."""
        if self.schema_version < 4:
            return []
        if scale is None:
            rows = self._query("SELECT * FROM transfer_runs ORDER BY id")
        else:
            rows = self._query("SELECT * FROM transfer_runs WHERE scale=? ORDER BY id", (scale,))
        return [TransferRun(**{**dict(r), "scale_json": json.loads(r["scale_json"] or "{}"),
                               "status": TransferStatus(r["status"])}) for r in rows]

    # ---- commands from other processes ------------------------------------------------------------------------
    def send_command(self, command: str, arg: str = "") -> int:
        with self.transaction() as db:
            cur = db.execute("INSERT INTO commands (created, command, arg) VALUES (?,?,?)",
                             (time.time(), command, arg))
            return int(cur.lastrowid)

    def take_commands(self) -> list[Command]:
        """Pending commands, marked consumed in the same transaction so each is handled once."""
        with self.transaction() as db:
            rows = [Command(**r) for r in db.execute("SELECT * FROM commands WHERE consumed IS NULL ORDER BY id")]
            if rows:
                db.execute("UPDATE commands SET consumed=? WHERE consumed IS NULL AND id <= ?",
                           (time.time(), rows[-1].id))
            return rows
