"""SIGKILL of the supervisor at every named point of a trial cycle (and at random instants), then --resume.

After each kill and resume, the invariants of the Guarantees section hold: every finished trial has exactly
one ledger row, one results.tsv row and one journal entry; the branch head is the last keep; no trial
process survives its supervisor; the transcript matches the ledger.
"""

from __future__ import annotations

import multiprocessing
import os
import random
import signal
import time
from pathlib import Path

import git
import pytest

from supervisor.agents.offline import OfflineAgent
from supervisor.core import failpoints
from supervisor.run.loop import Supervisor
from supervisor.store.ledger import Ledger
from supervisor.trial.platform_info import platform_info
from tests.loop_support import fake_config, process_alive

MAX_TRIALS = 6
HITS = range(1, 7)
CTX = multiprocessing.get_context("fork")  # no interpreter start-up per kill: 50+ kills stay fast


def fast_source(tmp_path: Path, sleep: float = 0.01, steps: int = 5) -> Path:
    import shutil

    from tests.loop_support import FAKE_SOURCE

    src = tmp_path / "source"
    shutil.copytree(FAKE_SOURCE, src)
    train = src / "trainer/train.py"
    text = train.read_text().replace("SLEEP = 0.05", f"SLEEP = {sleep}").replace("STEPS = 10", f"STEPS = {steps}")
    # NOISE makes discards and keeps both happen, so both git paths are exercised.
    train.write_text(text.replace("NOISE_SD = 0.0", "NOISE_SD = 0.02"))
    return src


def config_for(tmp_path: Path, source: Path):
    return fake_config(tmp_path, max_trials=MAX_TRIALS, reflect_every=2, source_dir=source)


def _child(tmp_path: Path, source: Path, resume: bool, spec: str) -> None:
    failpoints.arm(spec)
    sup = Supervisor(config_for(tmp_path, source), OfflineAgent(), resume=resume)
    sup.run()
    os._exit(0)


def run_in_child(tmp_path: Path, source: Path, resume: bool, spec: str = "", kill_after: float | None = None) -> int:
    proc = CTX.Process(target=_child, args=(tmp_path, source, resume, spec))
    proc.start()
    if kill_after is not None:
        proc.join(kill_after)
        if proc.is_alive():
            os.kill(proc.pid, signal.SIGKILL)
    proc.join(120)
    assert not proc.is_alive(), "the supervisor hung"
    return proc.exitcode


def check_invariants(tmp_path: Path, source: Path) -> None:
    config = config_for(tmp_path, source)
    ledger = Ledger(config.run_dir / "ledger.sqlite")
    try:
        trials = ledger.trials()
        finished = ledger.finished_trials()
        assert len(finished) == MAX_TRIALS
        assert not ledger.running_trials()
        rows = (config.run_dir / "results.tsv").read_text().splitlines()[1:]
        assert [r.split("\t")[0] for r in rows] == [t.short_commit for t in finished]
        entries = ledger.journal_entries()
        assert sorted(e.trial_id for e in entries) == [t.id for t in finished]
        journal_md = (config.run_dir / "journal.md").read_text()
        for t in finished:
            assert journal_md.count(f"## Trial {t.id} ·") == 1
        repo = git.Repo(config.workspace)
        assert repo.head.commit.hexsha == ledger.best_keep().commit_sha
        assert not repo.is_dirty(untracked_files=False)
        for t in trials:
            if t.pid:
                alive = process_alive(t.pid, group=True)
                assert not alive, f"trial {t.id} (pid {t.pid}) outlived its supervisor"
        transcript = (config.run_dir / "transcript.jsonl").read_text().splitlines()
        assert len(transcript) == len(ledger.turns())
        assert ledger.run_row().state == "finished"
    finally:
        ledger.close()


@pytest.fixture(scope="module", autouse=True)
def warm_platform_info():
    platform_info()  # computed once here; every forked supervisor inherits it


def test_kill_at_every_failpoint_then_resume(tmp_path_factory):
    kills = 0
    tried = []
    for point in failpoints.POINTS:
        for hit in HITS:
            tmp = tmp_path_factory.mktemp(f"{point}-{hit}")
            source = fast_source(tmp)
            code = run_in_child(tmp, source, resume=False, spec=f"{point}@{hit}")
            if code == -signal.SIGKILL:
                kills += 1
                tried.append(f"{point}@{hit}")
                assert run_in_child(tmp, source, resume=True) == 0
            else:
                assert code == 0  # the point was not reached this often: the run simply finished
            check_invariants(tmp, source)
    print(f"\nkill points reached: {kills} ({', '.join(tried)})")
    assert kills >= 50


def test_kill_at_random_instants_then_resume(tmp_path_factory):
    rng = random.Random(20261121)
    for i in range(8):
        tmp = tmp_path_factory.mktemp(f"random-{i}")
        source = fast_source(tmp, sleep=0.05, steps=10)
        start = time.monotonic()
        code = run_in_child(tmp, source, resume=False, kill_after=rng.uniform(0.5, 4.0))
        assert code in (0, -signal.SIGKILL), code
        # A second kill during the resume itself, sometimes.
        if code == -signal.SIGKILL and i % 3 == 0:
            run_in_child(tmp, source, resume=True, kill_after=rng.uniform(0.3, 2.0))
        assert run_in_child(tmp, source, resume=True) == 0
        check_invariants(tmp, source)
        assert time.monotonic() - start < 120
