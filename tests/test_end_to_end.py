"""The real thing on the CPU: `autoresearch demo` with the real trainer, then status, noise and resume."""

from __future__ import annotations

import json

import git

from supervisor.store.ledger import Ledger
from supervisor.trial.sandbox import probe
from tests.loop_support import cli


def test_demo_runs_three_real_trials_end_to_end(tmp_path, prepared_cache):
    journals = tmp_path / "journals"
    common = ["--journals", str(journals), "--cache", str(prepared_cache)]
    # A generous warm-up allowance: a loaded 2-core machine may take a while to start torch twice (trial and
    # evaluator) and export; the allowance is the budget rule's, not what this test is about.
    demo = cli("demo", "--headless", "--tag", "e2e", "--budget", "3", "--max-trials", "3", "--device", "cpu",
               "--grace", "240", *common, timeout=1200)
    assert demo.returncode == 0, demo.stderr[-3000:]
    run_dir = journals / "e2e"
    ledger = Ledger(run_dir / "ledger.sqlite")
    trials = ledger.finished_trials()
    assert len(trials) == 3
    baseline = trials[0]
    assert baseline.status == "keep" and baseline.description.startswith("baseline")
    assert 1.0 < baseline.val_bpb < 9.0  # a real, finite bits-per-byte, from the supervisor's own evaluator
    assert baseline.summary.get("evaluator.evaluator") == "exported program"
    assert float(baseline.summary["evaluator.causality_deviation"]) == 0.0
    assert baseline.sandbox == ("bwrap" if probe().active else f"none: {probe().why_not}")
    assert baseline.num_steps and baseline.num_steps > 1 and baseline.training_seconds >= 2.5
    assert baseline.summary.get("device") == "cpu"
    assert ledger.metric_count(baseline.id) >= baseline.num_steps - 1  # the live curve was stored
    assert trials[1].description.startswith("offline: ") and trials[1].diff.startswith("diff --git")
    assert len(ledger.journal_entries()) == 3
    head = git.Repo(run_dir / "workspace").head.commit.hexsha
    assert head == ledger.best_keep().commit_sha
    rows = (run_dir / "results.tsv").read_text().splitlines()
    assert len(rows) == 4 and rows[1].split("\t")[3] == "keep"
    ledger.close()

    status = json.loads(cli("status", "--tag", "e2e", "--json", *common).stdout)
    assert status["state"] == "finished" and status["counts"]["trials"] == 3
    assert status["trials"][0]["platform"]["torch"].startswith("2.")
    # The demo measured the noise floor (2 seeds of the starting code) before its first trial.
    noise = status["noise"]
    assert len(noise["values"]) == 2 and noise["sd"] is not None and noise["floor"] == 2 * noise["sd"]
    assert all(abs(v - baseline.val_bpb) < 0.5 for v in noise["values"])
