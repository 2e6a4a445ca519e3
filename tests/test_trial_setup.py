"""What a trial of a run sees and who measures it (supervisor/run/trial_setup.py), checked in real sandboxes."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from supervisor.core.config import RunConfig
from supervisor.run.trial_setup import TrialSetup
from supervisor.trial.guards import eval_fingerprint
from supervisor.trial.sandbox import SandboxChoice, SandboxUnavailableError, choose, probe

PROJECT = Path(__file__).resolve().parent.parent
needs_bwrap = pytest.mark.skipif(not probe().active, reason=f"no sandbox here: {probe().why_not}")


def _setup(tmp_path: Path, cache: Path, sandbox: str = "auto") -> TrialSetup:
    config = RunConfig(tag="t", journals_root=tmp_path / "journals", cache_dir=cache, budget_s=5.0, sandbox=sandbox)
    workspace = tmp_path / "workspace"
    (workspace / "trainer").mkdir(parents=True)
    (workspace / ".git").mkdir()
    (workspace / ".git" / "config").write_text("[core]\n")
    for name in ("train.py", "prepare.py", "corpus.py"):
        (workspace / "trainer" / name).write_text((PROJECT / "trainer" / name).read_text())
    config.run_dir.mkdir(parents=True)
    (config.run_dir / "ledger.sqlite").write_text("the ledger")
    setup = TrialSetup(config, workspace, eval_fingerprint(cache))
    setup.write_pristine_harness({f"trainer/{n}": (PROJECT / "trainer" / n).read_text()
                                  for n in ("prepare.py", "corpus.py")})
    return setup


LOOK_AROUND = r"""
import json, os, sys
def can_write(path):
    try:
        with open(path, "w") as fh:
            fh.write("x")
        return True
    except OSError:
        return False
print(json.dumps({
    "cache": sorted(os.listdir("/cache")),
    "trainer": sorted(os.listdir("/trial/trainer")),
    "root": sorted(os.listdir("/")),
    "write_out": can_write("/out/probe"),
    "write_trainer": can_write("/trial/trainer/prepare.py"),
    "write_cache": can_write("/cache/val.bin"),
    "write_root": can_write("/evil"),
    "paths": {p: os.path.exists(p) for p in sys.argv[1:]},
    "pids": sorted(int(p) for p in os.listdir("/proc") if p.isdigit()),
}))
"""


@needs_bwrap
def test_a_trial_sees_the_trainer_a_training_view_and_its_exchange_only(tmp_path, prepared_cache):
    setup = _setup(tmp_path, prepared_cache)
    plan = setup.trial_plan()
    assert plan is not None and plan.env_paths == {"AUTORESEARCH_CACHE": "/cache"}
    secret_places = [str(setup.config.run_dir / "ledger.sqlite"), str(setup.workspace_root / ".git"),
                     str(prepared_cache / "val.bin"), str(Path.home() / ".cache"), str(Path.home() / ".ssh"),
                     str(setup.paths.harness), str(tmp_path)]
    done = subprocess.run(plan.wrap([sys.executable, "-c", LOOK_AROUND, *secret_places]), capture_output=True,
                          text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    seen = json.loads(done.stdout)
    assert "val.bin" not in seen["cache"] and "train.bin" in seen["cache"] and "manifest.json" in seen["cache"]
    assert seen["trainer"] == ["corpus.py", "prepare.py", "train.py"]
    assert seen["write_out"] and not seen["write_trainer"] and not seen["write_cache"] and not seen["write_root"]
    # Nothing of the run folder, the workspace's .git, the validation data or the home folder is there (only
    # the Python installation, where it lives under the home folder).
    assert not any(seen["paths"].values()), seen["paths"]
    assert seen["pids"][:2] == [1, 2] and len(seen["pids"]) <= 3  # its own PID namespace
    assert (setup.paths.exchange / "probe").read_text() == "x"


@needs_bwrap
def test_the_evaluator_sees_the_pristine_harness_and_its_job_folder_only(tmp_path, prepared_cache):
    setup = _setup(tmp_path, prepared_cache)
    job = tmp_path / "job"
    job.mkdir()
    spec = setup.evaluator(job)
    assert spec is not None and spec.sandbox is not None
    inside = sorted(m.inside for m in spec.sandbox.mounts if m.inside in ("/harness", "/job", "/cache"))
    assert inside == ["/harness", "/job"]  # no cache: the validation data comes over its stdin
    assert spec.command[-2:] == ["/harness/trainer/prepare.py", "--serve-evaluation"]
    assert spec.expected == eval_fingerprint(prepared_cache) and spec.cache_dir == prepared_cache


def test_an_unsandboxed_run_is_labelled_and_still_evaluated_apart(tmp_path, prepared_cache):
    setup = _setup(tmp_path, prepared_cache, sandbox="off")
    assert setup.trial_plan() is None
    assert setup.choice.label == "none: turned off with --sandbox off"
    fields = setup.spec_fields(tmp_path / "job")
    assert fields["sandbox"] is None and fields["sandbox_label"].startswith("none: ")
    evaluator = fields["evaluator"]
    assert evaluator is not None and evaluator.sandbox is None
    assert evaluator.command[-2] == str(setup.paths.harness / "trainer" / "prepare.py")


def test_sandbox_bwrap_refuses_to_start_where_there_is_none(monkeypatch):
    monkeypatch.setenv("AUTORESEARCH_BWRAP", "/nonexistent/bwrap")
    with pytest.raises(SandboxUnavailableError, match="--sandbox bwrap"):
        choose("bwrap")
    auto = choose("auto")
    assert not auto.active and auto.label.startswith("none: bubblewrap could not start")


def test_a_label_says_why_there_is_no_sandbox():
    assert SandboxChoice("/usr/bin/bwrap").label == "bwrap"
    assert SandboxChoice(None, "no user namespaces").label == "none: no user namespaces"
