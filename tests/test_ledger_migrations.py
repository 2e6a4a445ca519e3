"""Ledger upgrades: PRAGMA user_version and numbered migrations, tested on ledgers written by older code.

tests/fixtures/ledger_v1.sqlite and ledger_v2.sqlite were written by the supervisor of two earlier commits
(tests/fixtures/make_ledger_fixture.py says which, and how). Each test works on a copy.
"""

from __future__ import annotations

import hashlib
import shutil
import sqlite3
import threading
from pathlib import Path

import pytest

from supervisor.core.errors import UserError
from supervisor.core.types import PlanStatus, TrialKind, TrialStatus
from supervisor.store import ledger as ledger_module
from supervisor.store.ledger import MIGRATIONS, SCHEMA_VERSION, Ledger, LedgerError, Migration

FIXTURES = Path(__file__).parent / "fixtures"
TABLES = ("meta", "run", "trials", "metrics", "journal", "reflections", "triggers", "plans", "steering", "turns",
          "noise", "commands", "repeats", "transfer_runs")
OLD_VERSIONS = (1, 2)


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def old_ledger(tmp_path: Path, version: int) -> Path:
    """A copy of the fixture written by the schema-`version` supervisor, as a run folder's ledger."""
    run_dir = tmp_path / "journals" / "fixture"
    run_dir.mkdir(parents=True, exist_ok=True)
    path = run_dir / "ledger.sqlite"
    shutil.copyfile(FIXTURES / f"ledger_v{version}.sqlite", path)
    return path


def raw_facts(path: Path) -> dict[str, object]:
    """What the file holds, read with plain sqlite3 (read-only): versions, row counts, trial columns."""
    db = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        tables = {r[0] for r in db.execute("SELECT name FROM sqlite_master WHERE type='table'")}
        meta = db.execute("SELECT value FROM meta WHERE key='schema_version'").fetchone()
        return {"user_version": db.execute("PRAGMA user_version").fetchone()[0],
                "meta_version": int(meta[0]) if meta else None, "tables": tables,
                "counts": {t: db.execute(f"SELECT COUNT(*) FROM {t}").fetchone()[0] for t in TABLES if t in tables},
                "trial_columns": [r[1] for r in db.execute("PRAGMA table_info(trials)")]}
    finally:
        db.close()


def table_shapes(path: Path) -> dict[str, list[tuple]]:
    """Every table's columns (name, type, not null, default, key), for comparing two ledgers' schemas."""
    db = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        return {t: [tuple(r)[1:] for r in db.execute(f"PRAGMA table_info({t})")] for t in TABLES}
    finally:
        db.close()


def assert_fixture_content(ledger: Ledger) -> None:
    """The rows make_ledger_fixture.py wrote, read back through today's API."""
    assert ledger.run_row().tag == "fixture"
    trials = ledger.trials()
    assert [t.status for t in trials] == [TrialStatus.KEEP, TrialStatus.DISCARD, TrialStatus.CRASH,
                                          TrialStatus.KEEP]
    assert trials[0].description == "trial 1: try idea 1" and trials[0].val_bpb == 0.99
    assert trials[0].extra_values == (0.991,) and trials[0].platform["gpu"] == "NVIDIA H100 80GB HBM3"
    assert trials[2].crash_reason == "CUDA out of memory" and trials[2].flagged
    assert trials[3].kind == TrialKind.IMPORTED and trials[3].description == "baseline from upstream"
    assert [m["loss"] for m in ledger.metrics(1)] == pytest.approx([3.99, 3.89, 3.79, 3.69, 3.59])
    assert ledger.journal_for(2).hypothesis == "hypothesis 2"
    assert ledger.reflections()[0].triggers == ("plateau: three trials without a keep",)
    assert [p.status for p in ledger.plans()] == [PlanStatus.OPEN, PlanStatus.DROPPED]
    assert ledger.latest_noise(300.0).values == (0.998, 1.001, 1.0)
    assert ledger.turns()[0].usage["cost_usd"] == 0.0123
    assert ledger.steering()[0].delivered_turn == 1


def with_migrations(monkeypatch: pytest.MonkeyPatch, *extra: Migration) -> None:
    """Pretend this code knows more steps than it does (the module reads both names at each open)."""
    migrations = (*MIGRATIONS, *extra)
    monkeypatch.setattr(ledger_module, "MIGRATIONS", migrations)
    monkeypatch.setattr(ledger_module, "SCHEMA_VERSION", migrations[-1].version)


def test_migrations_are_numbered_one_by_one_and_described_in_a_line():
    versions = [m.version for m in MIGRATIONS]
    assert versions == list(range(1, len(MIGRATIONS) + 1))  # strictly ascending, none skipped
    assert SCHEMA_VERSION == versions[-1]
    assert all(m.description and "\n" not in m.description for m in MIGRATIONS)


def test_a_new_ledger_has_the_same_schema_as_an_upgraded_one(tmp_path):
    new = tmp_path / "new" / "ledger.sqlite"
    Ledger(new, create=True).close()
    assert raw_facts(new)["user_version"] == SCHEMA_VERSION and raw_facts(new)["meta_version"] == SCHEMA_VERSION
    for version in OLD_VERSIONS:
        path = old_ledger(tmp_path / f"v{version}", version)
        Ledger(path).close()
        assert table_shapes(path) == table_shapes(new), f"schema {version} upgraded differs from a new ledger"


@pytest.mark.parametrize("version", OLD_VERSIONS)
def test_an_old_ledger_opens_for_writing_upgraded_with_every_row(tmp_path, version):
    path = old_ledger(tmp_path, version)
    before = raw_facts(path)
    assert before["user_version"] == 0 and before["meta_version"] == version

    ledger = Ledger(path)
    try:
        assert_fixture_content(ledger)
        trial = ledger.trial(1)
        assert trial.sandbox is None and trial.suspicions == ()  # an old trial's confinement: unknown
        ledger.set_trial_pid(1, 4242)  # the columns an old ledger lacked can be written now
        ledger.finish_trial(2, sandbox="bwrap", suspicions=("reads the validation data",))
    finally:
        ledger.close()

    after = raw_facts(path)
    assert after["user_version"] == SCHEMA_VERSION and after["meta_version"] == SCHEMA_VERSION
    assert after["counts"] == {**before["counts"], "repeats": 0, "transfer_runs": 0}  # two new, empty tables
    assert {"pid", "suspicions", "sandbox"} <= set(after["trial_columns"])
    backup = path.with_name(f"ledger.sqlite.bak-v{version}")
    if version < SCHEMA_VERSION:  # a real step ran: the file as it was is kept beside it
        assert raw_facts(backup) == before
    else:  # only the version was recorded in user_version: nothing to keep a copy of
        assert not backup.exists()

    upgraded = sha256(path)
    Ledger(path).close()  # the second open finds nothing to do and writes nothing
    assert sha256(path) == upgraded


@pytest.mark.parametrize("version", OLD_VERSIONS)
def test_a_read_only_open_of_an_old_ledger_reads_it_and_leaves_its_bytes(tmp_path, version):
    path = old_ledger(tmp_path, version)
    digest = sha256(path)
    ledger = Ledger(path, readonly=True)
    try:
        assert ledger.schema_version == version
        assert_fixture_content(ledger)
        assert [t.sandbox for t in ledger.trials()] == [None] * 4
        assert ledger.trial(1).pid is None
    finally:
        ledger.close()
    assert sha256(path) == digest
    assert not list(path.parent.glob("*.bak-v*"))


@pytest.mark.parametrize("readonly", [False, True], ids=["write", "read-only"])
@pytest.mark.parametrize("where", ["user_version", "meta"])
def test_a_ledger_from_a_newer_version_is_refused_in_one_line_and_left_alone(tmp_path, readonly, where):
    path = old_ledger(tmp_path, 2)
    db = sqlite3.connect(path)
    if where == "user_version":
        db.execute(f"PRAGMA user_version = {SCHEMA_VERSION + 1}")
    else:  # how the supervisors before user_version recorded it
        db.execute("UPDATE meta SET value=? WHERE key='schema_version'", (str(SCHEMA_VERSION + 1),))
    db.commit()
    db.close()
    digest = sha256(path)
    with pytest.raises(LedgerError) as error:
        Ledger(path, readonly=readonly)
    message = str(error.value)
    assert isinstance(error.value, UserError) and "\n" not in message
    assert f"newer version of autoresearch (schema {SCHEMA_VERSION + 1}" in message
    assert "upgrade autoresearch-supervisor" in message
    assert sha256(path) == digest


@pytest.mark.parametrize("failure", [sqlite3.OperationalError("disk I/O error"), RuntimeError("a bug")],
                         ids=["sqlite", "python"])
def test_a_migration_failing_midway_leaves_the_ledger_as_it_was(tmp_path, monkeypatch, failure):
    def half_done(db: sqlite3.Connection) -> None:
        db.execute("CREATE TABLE half_done (x)")
        db.execute("UPDATE trials SET description = 'overwritten'")
        raise failure

    with_migrations(monkeypatch, Migration(SCHEMA_VERSION + 1, "a step that fails halfway", half_done))
    path = old_ledger(tmp_path, 1)
    before = raw_facts(path)
    with pytest.raises(LedgerError) as error:
        Ledger(path)
    message = str(error.value)
    assert "\n" not in message and f"step {SCHEMA_VERSION + 1} (a step that fails halfway)" in message
    assert "Nothing has been changed" in message and "ledger.sqlite.bak-v1" in message
    assert raw_facts(path) == before  # step 2, which succeeded, was rolled back with the failing one
    assert raw_facts(path.with_name("ledger.sqlite.bak-v1")) == before

    monkeypatch.undo()  # the real steps alone still upgrade it
    ledger = Ledger(path)
    try:
        assert ledger.trial(1).description == "trial 1: try idea 1"
    finally:
        ledger.close()


def test_a_new_step_runs_once_even_when_two_connections_open_the_ledger_at_once(tmp_path, monkeypatch):
    applied = []

    def add_notes(db: sqlite3.Connection) -> None:
        applied.append(threading.current_thread().name)
        db.execute("CREATE TABLE IF NOT EXISTS notes (id INTEGER PRIMARY KEY, text TEXT NOT NULL)")

    with_migrations(monkeypatch, Migration(SCHEMA_VERSION + 1, "notes", add_notes))
    path = old_ledger(tmp_path, 2)
    start = threading.Barrier(2)
    errors = []

    def open_for_writing() -> None:
        start.wait()
        try:
            Ledger(path).close()
        except Exception as exc:  # reported below: a thread's exception would otherwise vanish
            errors.append(exc)

    threads = [threading.Thread(target=open_for_writing, name=f"opener-{i}") for i in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    assert errors == [] and len(applied) == 1
    facts = raw_facts(path)
    assert facts["user_version"] == SCHEMA_VERSION + 1 and "notes" in facts["tables"]
    assert raw_facts(path.with_name("ledger.sqlite.bak-v2"))["user_version"] == 0

    Ledger(path).close()
    assert len(applied) == 1


def test_a_reader_open_during_an_upgrade_keeps_reading(tmp_path):
    path = old_ledger(tmp_path, 1)
    reader = Ledger(path, readonly=True)
    try:
        assert reader.trial(1).sandbox is None
        Ledger(path).close()  # the run upgrades the file under the open UI
        assert_fixture_content(reader)
        assert reader.trial(1).suspicions == ()
    finally:
        reader.close()


def test_a_read_only_open_refuses_a_ledger_it_cannot_read_without_upgrading_and_says_how(tmp_path, monkeypatch):
    def rename_a_column(db: sqlite3.Connection) -> None:
        db.execute("ALTER TABLE trials RENAME COLUMN description TO what")

    with_migrations(monkeypatch, Migration(SCHEMA_VERSION + 1, "trials.description renamed", rename_a_column,
                                           readable_before=False))
    path = old_ledger(tmp_path, 2)
    digest = sha256(path)
    with pytest.raises(LedgerError) as error:
        Ledger(path, readonly=True)
    message = str(error.value)
    assert "\n" not in message and "`autoresearch run --resume --tag fixture`" in message
    assert "trials.description renamed" in message
    assert sha256(path) == digest


def test_versions_that_disagree_are_upgraded_from_the_lower(tmp_path):
    # A hand edit (or a tool) set meta back to 1 without touching user_version: step 2 runs again, harmlessly.
    path = tmp_path / "ledger.sqlite"
    Ledger(path, create=True).close()
    db = sqlite3.connect(path)
    db.execute("ALTER TABLE trials DROP COLUMN sandbox")
    db.execute("UPDATE meta SET value='1' WHERE key='schema_version'")
    db.commit()
    db.close()
    Ledger(path).close()
    facts = raw_facts(path)
    assert "sandbox" in facts["trial_columns"] and facts["meta_version"] == SCHEMA_VERSION


def test_a_copy_that_cannot_be_made_stops_the_upgrade_before_it_starts(tmp_path):
    path = old_ledger(tmp_path, 1)
    path.with_name("ledger.sqlite.bak-v1").mkdir()  # the copy's name is taken by a folder
    before = raw_facts(path)
    with pytest.raises(LedgerError) as error:
        Ledger(path)
    assert "\n" not in str(error.value) and "cannot keep a copy of the ledger" in str(error.value)
    assert raw_facts(path) == before


def test_a_read_only_open_of_a_file_without_ledger_tables_says_it_cannot_be_read(tmp_path):
    path = tmp_path / "ledger.sqlite"
    db = sqlite3.connect(path)
    db.execute("PRAGMA user_version = 0")
    db.execute("VACUUM")  # a valid SQLite file of one empty page: what a writer killed at birth can leave
    db.close()
    digest = sha256(path)
    with pytest.raises(LedgerError, match="cannot be read \\(it holds no ledger tables\\)"):
        Ledger(path, readonly=True)
    assert sha256(path) == digest


def test_a_schema_3_ledger_reads_without_the_audit_and_upgrades_to_keep_it(tmp_path):
    """ledger_v3.sqlite (commit e235808, PRAGMA user_version 3): read-only it has no audit scores, repeats or
    transfer runs and is left as it is; opened for writing it gains them, with a copy of the file kept."""
    run_dir = tmp_path / "journals" / "fixture"
    run_dir.mkdir(parents=True)
    path = run_dir / "ledger.sqlite"
    shutil.copyfile(FIXTURES / "ledger_v3.sqlite", path)
    digest = sha256(path)
    reader = Ledger(path, readonly=True)
    try:
        assert reader.schema_version == 3
        assert_fixture_content(reader)
        assert [t.audit_val_bpb for t in reader.trials()] == [None] * 4
        assert reader.repeats() == [] and reader.transfer_runs() == []
    finally:
        reader.close()
    assert sha256(path) == digest

    writer = Ledger(path)
    try:
        assert writer.schema_version == SCHEMA_VERSION
        writer.set_audit(1, 1.2345)
        writer.add_repeat(1, "exact", "the same idea again")
        run = writer.start_transfer_run(scale="depth x2", scale_json={"depth_factor": 2}, trial_id=1,
                                        commit_sha="abc", seed=7)
        assert writer.abort_running_transfer_runs("the transfer check died") == [run]
        assert writer.trial(1).audit_val_bpb == 1.2345
        assert [r.match for r in writer.repeats()] == ["exact"]
        assert writer.transfer_runs("depth x2")[0].status == "aborted"
    finally:
        writer.close()
    assert path.with_name("ledger.sqlite.bak-v3").exists()
