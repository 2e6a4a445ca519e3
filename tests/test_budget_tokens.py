"""A budget in tokens (`run --budget-tokens N`): every trial trains on N tokens, however long that takes.

What is enforced, from the trainer to the supervisor: the harness reads the budget (prepare.token_budget()),
the trainer stops at it and never passes it (its last step takes only the passes that fit), the runner reads
the tokens each metrics line claims and a trial that claims more than the budget, or says nothing, has no
result; the guards hold a script that grows a budget by arithmetic; the budget is recorded with every trial,
in `status --json` and in the run's start line; a bad `--budget-tokens` is a one-line error.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys

import pytest

from supervisor.agents.offline import OfflineAgent
from supervisor.cli.launcher import loop_command
from supervisor.cli.main import build_parser
from supervisor.core.config import ConfigError, RunConfig
from supervisor.run.loop import Supervisor
from supervisor.run.trial_setup import budget_text
from supervisor.store.ledger import Ledger
from supervisor.trial.guards import scan_source
from supervisor.trial.runner import run_trial, trial_environment
from tests.loop_support import FAKE_SOURCE, PROJECT, cli, edit, fake_config, journal, trial, write_script
from tests.test_runner import make_spec

BASELINE = (PROJECT / "trainer" / "train.py").read_text(encoding="utf-8")
FAKE_STEPS_LINE = "steps = STEPS if budget_tokens is None else int(budget_tokens) // TOKENS_PER_STEP\n"


# ---- the harness -------------------------------------------------------------------------------------------
def test_the_harness_reads_the_token_budget_from_the_environment(monkeypatch):
    from trainer import prepare

    monkeypatch.delenv("AUTORESEARCH_BUDGET_TOKENS", raising=False)
    assert prepare.token_budget() is None  # unset: the budget is in seconds
    monkeypatch.setenv("AUTORESEARCH_BUDGET_TOKENS", " 2000000 ")
    assert prepare.token_budget() == 2_000_000
    for bad in ("1.5", "-3", "2e6", "lots", "\u00b2"):
        monkeypatch.setenv("AUTORESEARCH_BUDGET_TOKENS", bad)
        with pytest.raises(ValueError, match="AUTORESEARCH_BUDGET_TOKENS must be a whole number of tokens"):
            prepare.token_budget()


# ---- the trial's environment -------------------------------------------------------------------------------
def test_the_trial_gets_the_runs_token_budget_and_only_that(tmp_path):
    spec = make_spec(tmp_path, "pass\n", budget_tokens=2_000_000)
    env = trial_environment(spec, base={"AUTORESEARCH_BUDGET_TOKENS": "999", "PATH": "/usr/bin"})
    assert env["AUTORESEARCH_BUDGET_TOKENS"] == "2000000"
    # A seconds budget: whatever the supervisor's own environment says, the trial gets no token budget.
    env = trial_environment(make_spec(tmp_path, "pass\n"), base={"AUTORESEARCH_BUDGET_TOKENS": "999"})
    assert "AUTORESEARCH_BUDGET_TOKENS" not in env


# ---- the runner holds the claimed tokens against the budget ------------------------------------------------
def _metrics_body(tokens_per_line: list[int | None], then: str = "hand_over(1.25)\n") -> str:
    """A trial that writes one metrics line per entry (without `tokens` for None), then does `then`."""
    return f"""
import json, os
seen = os.environ.get("AUTORESEARCH_BUDGET_TOKENS")
with open(os.environ["AUTORESEARCH_METRICS"], "a") as out:
    for step, tokens in enumerate({tokens_per_line!r}):
        record = {{"step": step, "loss": 3.0, "budget_seen": seen}}
        if tokens is not None:
            record["tokens"] = tokens
        out.write(json.dumps(record) + "\\n")
        out.flush()
{then}"""


def test_a_trial_within_its_token_budget_is_measured(tmp_path):
    spec = make_spec(tmp_path, _metrics_body([1000, 2000, 3000]), budget_tokens=3000)
    outcome = run_trial(spec)
    assert outcome.status == "ok" and outcome.val_bpb == 1.25, outcome.reason
    assert outcome.budget_tokens == 3000 and outcome.tokens_claimed == 3000
    assert {m["budget_seen"] for m in outcome.metrics} == {"3000"}


def test_a_trial_that_trains_past_its_token_budget_is_ended_without_a_result(tmp_path):
    # It claims one step past the budget, then would go on for ten minutes: the runner ends it at once,
    # long before the wall-clock cap (which would give another reason).
    body = _metrics_body([1000, 2000, 3000, 4000], then="import time\ntime.sleep(600)\nhand_over(0.5)\n")
    spec = make_spec(tmp_path, body, budget_tokens=3000, budget_s=120.0, grace_s=60.0)
    outcome = run_trial(spec)
    assert outcome.status == "crash" and outcome.val_bpb is None and not outcome.timed_out
    assert outcome.reason.startswith("over the token budget: its metrics say it trained on 4,000 tokens"), \
        outcome.reason
    assert "3,000 tokens per trial" in outcome.reason


def test_a_trial_that_crosses_its_budget_on_its_last_step_has_no_result_either(tmp_path):
    # No slack of "one more step": the step's size is the trial's to choose.
    spec = make_spec(tmp_path, _metrics_body([1000, 2000, 50_000]), budget_tokens=3000)
    outcome = run_trial(spec)
    assert outcome.status == "crash" and outcome.val_bpb is None
    assert "over the token budget" in outcome.reason and "50,000 tokens" in outcome.reason


def test_a_trial_that_never_says_how_many_tokens_it_trained_on_has_no_result(tmp_path):
    spec = make_spec(tmp_path, _metrics_body([None, None]), budget_tokens=3000)
    outcome = run_trial(spec)
    assert outcome.status == "crash" and outcome.val_bpb is None
    assert outcome.reason.startswith("no token count: under a token budget (3,000 tokens per trial)"), \
        outcome.reason


def test_the_wall_clock_cap_still_applies_under_a_token_budget(tmp_path):
    body = _metrics_body([1000], then="import time\ntime.sleep(600)\n")
    spec = make_spec(tmp_path, body, budget_tokens=3000, budget_s=1.0, grace_s=1.0)
    outcome = run_trial(spec)
    assert outcome.status == "crash" and outcome.timed_out
    assert outcome.reason.startswith("killed at the wall-clock cap (--budget 1s + grace 1s)"), outcome.reason


# ---- the real trainer --------------------------------------------------------------------------------------
def test_the_real_trainer_stops_at_its_token_budget_and_never_passes_it(trainer_env, trainer_copy, tmp_path):
    """Small profile: one pass is 16 x 256 = 4096 tokens. With three passes a step, a budget of seven passes
    and a bit gives steps of 12288, 24576, then a last step of the one pass that still fits: 28672."""
    script = trainer_copy / "train.py"
    source = script.read_text()
    source, n = re.subn(r'^TOTAL_BATCH_TOKENS = \{"full": 524288, "small": 4096\}\[PROFILE\]$',
                        'TOTAL_BATCH_TOKENS = {"full": 524288, "small": 12288}[PROFILE]', source, flags=re.M)
    assert n == 1
    script.write_text(source)
    metrics, model = tmp_path / "metrics.jsonl", tmp_path / "model.pt2"
    budget = 7 * 4096 + 1000
    env = dict(trainer_env, AUTORESEARCH_TIME_BUDGET="1", AUTORESEARCH_BUDGET_TOKENS=str(budget),
               AUTORESEARCH_METRICS=str(metrics), AUTORESEARCH_MODEL_OUT=str(model))
    proc = subprocess.run([sys.executable, str(script)], env=env, cwd=tmp_path, capture_output=True,
                          text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows = [json.loads(line) for line in metrics.read_text().splitlines()]
    # A one-second time budget does not stop it: the tokens do, however long they take.
    assert [r["tokens"] for r in rows] == [12288, 24576, 28672]
    assert rows[-1]["lr"] < rows[0]["lr"]  # the warmdown follows the tokens
    lines = proc.stdout.splitlines()
    summary = dict(line.split(":", 1) for line in lines[lines.index("---") + 1:] if ":" in line)
    summary = {k.strip(): v.strip() for k, v in summary.items()}
    assert summary["total_tokens"] == "28672" and summary["budget_tokens"] == str(budget)
    assert summary["num_steps"] == "3" and model.is_file()
    assert f"budget {budget:,} tokens" in proc.stderr


def test_a_token_budget_under_one_pass_is_a_clear_failure(trainer_env, tmp_path):
    env = dict(trainer_env, AUTORESEARCH_BUDGET_TOKENS="100", AUTORESEARCH_MODEL_OUT=str(tmp_path / "m.pt2"))
    proc = subprocess.run([sys.executable, str(PROJECT / "trainer" / "train.py")], env=env, cwd=tmp_path,
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 1 and "Traceback" not in proc.stderr
    expected = "the token budget of 100 is less than one pass of DEVICE_BATCH_SIZE * seq_len = 4,096 tokens"
    assert f"FAIL: {expected}" in proc.stdout


# ---- the guards --------------------------------------------------------------------------------------------
def _with_line(line: str) -> str:
    anchor = "    torch.manual_seed(seed)\n"
    assert BASELINE.count(anchor) == 1
    return BASELINE.replace(anchor, f"    {line}\n{anchor}")


@pytest.mark.parametrize("line", [
    "budget_tokens = budget_tokens * 3",
    "budget_tokens *= 2",
    "budget_tokens = prepare.token_budget() + 10**6",
    "budget_tokens = 4 * prepare.token_budget()",
    "budget = time_budget() * 3",
])
def test_a_script_that_grows_its_budget_is_held(line):
    findings = scan_source(_with_line(line), BASELINE)
    assert [f.split(":", 1)[0] for f in findings] == ["budget"], findings
    assert line in findings[0]


@pytest.mark.parametrize("line", [
    "budget_tokens = budget_tokens // 2",
    "half = 0.5 * budget_tokens",
    "print(f'{total_tokens / budget_tokens:.0%} of the budget', file=sys.stderr)",
])
def test_using_the_budget_without_growing_it_is_no_finding(line):
    assert scan_source(_with_line(line), BASELINE) == []


# ---- the settings and the command line ---------------------------------------------------------------------
@pytest.mark.parametrize("value, message", [
    ("0", "must be at least 1, got 0"),
    ("-5", "must be at least 1, got -5"),
    ("1.5", "'1.5' is not a whole number"),
    ("lots", "'lots' is not a whole number"),
])
def test_a_bad_budget_tokens_is_a_one_line_error(value, message, capsys):
    with pytest.raises(SystemExit) as exit_info:
        build_parser().parse_args(["run", "--tag", "x", "--budget-tokens", value])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "argument --budget-tokens" in err and message in err, err


def test_the_settings_refuse_a_token_budget_they_cannot_honour(tmp_path):
    for bad in (0, -1, True, 2.5):
        with pytest.raises(ConfigError, match="--budget-tokens must be a whole number of tokens"):
            RunConfig(tag="t", journals_root=tmp_path, budget_tokens=bad)
    with pytest.raises(ConfigError, match="--budget-tokens needs this project's trainer"):
        RunConfig(tag="t", journals_root=tmp_path, budget_tokens=1000, upstream_repo=tmp_path)
    config = RunConfig(tag="t", journals_root=tmp_path, budget_tokens=2_000_000)
    assert RunConfig.from_json(config.to_json()).budget_tokens == 2_000_000
    assert budget_text(config).startswith("2,000,000 tokens per trial (speed no longer counts)")
    assert budget_text(RunConfig(tag="t", journals_root=tmp_path)) == "300 s of training per trial"
    # The UI's loop process is started with the same budget.
    command = loop_command(config, resume=False)
    assert command[command.index("--budget-tokens") + 1] == "2000000"


# ---- a whole run on the stand-in trainer -------------------------------------------------------------------
def test_a_run_under_a_token_budget_trains_on_the_tokens_and_voids_a_trial_that_trains_past_them(tmp_path):
    source = tmp_path / "source"
    shutil.copytree(FAKE_SOURCE, source)
    cache = tmp_path / "cache"
    cache.mkdir()
    (cache / "manifest.json").write_text(json.dumps({"profile": "small"}))
    common = ["--journals", str(tmp_path / "journals"), "--cache", str(cache)]
    script = write_script(tmp_path / "script.jsonl", [
        trial("baseline under the token budget"), journal(1),
        edit(FAKE_STEPS_LINE, FAKE_STEPS_LINE.replace("// TOKENS_PER_STEP", "// TOKENS_PER_STEP * 3")),
        trial("three times the tokens"), journal(2),
    ])
    result = cli("run", "--headless", "--tag", "tok", "--trainer-dir", str(source),
                 "--agent", f"script:{script}", "--budget-tokens", "5000", "--budget", "60", "--grace", "30",
                 "--max-trials", "2", "--noise-repeats", "0", *common)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "budget: 5,000 tokens per trial (speed no longer counts)" in result.stderr

    run_dir = tmp_path / "journals" / "tok"
    ledger = Ledger(run_dir / "ledger.sqlite", readonly=True)
    try:
        honest, greedy = ledger.trial(1), ledger.trial(2)
        metrics_file = run_dir / "trials" / "0001" / "metrics.jsonl"
        metrics = [json.loads(line) for line in metrics_file.read_text().splitlines()]
    finally:
        ledger.close()
    assert honest.status == "keep" and honest.val_bpb is not None
    assert honest.num_steps == 5 and honest.summary["total_tokens"] == "5000"
    assert honest.summary["supervisor.budget_tokens"] == "5000"
    assert metrics[-1]["tokens"] == 5000
    assert greedy.status == "crash" and greedy.val_bpb is None
    assert "over the token budget" in (greedy.crash_reason or ""), greedy.crash_reason
    env = json.loads((run_dir / "exchange" / "metrics.jsonl.env.json").read_text())
    assert env["AUTORESEARCH_BUDGET_TOKENS"] == "5000"

    status = json.loads(cli("status", "--tag", "tok", "--json", *common).stdout)
    assert status["budget_tokens"] == 5000
    assert status["budget"].startswith("5,000 tokens per trial (speed no longer counts)")


def test_a_changed_token_budget_on_resume_calls_for_a_reflection(tmp_path):
    Supervisor(fake_config(tmp_path, max_trials=1, budget_tokens=5000), OfflineAgent()).run()
    resumed = Supervisor(fake_config(tmp_path, max_trials=2, budget_tokens=8000), OfflineAgent(), resume=True)
    try:
        kind, message = resumed.obligation()
    finally:
        resumed.close()
    assert kind == "reflection" and "the token budget changed from 5000 to 8000" in message
