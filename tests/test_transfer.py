"""The scale-transfer check (issue 19): the chain of keeps re-run at a larger scale, each keep against its parent
with the same seeds, labelled scale-stable, scale-bound or unknown.

The stand-in trainer (tests/fake_trainer) knows the ground truth: its best learning rate is 0.08 / DEPTH, so a keep
that raised LR from 0.02 to 0.03 at DEPTH 2 (best 0.04) is worse at DEPTH 4 (best 0.02): scale-bound; a keep that
widened the model helps at any depth: scale-stable. Real runs, real git, the run's sandbox and evaluator.
"""

from __future__ import annotations

import json
import statistics

import pytest

from supervisor.core import events as ev
from supervisor.core.transfer import (
    SCALED_MARK,
    TRANSFER_SEED_BASE,
    ChainLink,
    Scale,
    ScaleError,
    TransferLabel,
    keep_chain,
    label_chain,
    parse_override,
    scale_script,
)
from supervisor.core.types import TransferStatus, Trial, TrialKind, TrialStatus
from supervisor.run.loop import Supervisor
from supervisor.run.status import run_status
from supervisor.run.transfer import plan_transfer, transfer_result
from supervisor.store.ledger import Ledger
from tests.loop_support import CallbackAgent, cli, edit, fake_config, journal, reflection, trial


def make_trial(**fields) -> Trial:
    base = {name: None for name in Trial.__dataclass_fields__} | {
        "kind": TrialKind.TRIAL, "description": "", "extra_values": (), "flagged": False, "decision": "", "diff": "",
        "log_tail": "", "summary": {}, "platform": {}, "suspicions": ()}
    return Trial(**base | fields | {"status": TrialStatus(fields["status"])})


SCRIPT = "import os\nDEPTH = {'a': 2}['a']  # depth\nLR = 0.02\nx: int = 3\nDEPTH = DEPTH + 0\nprint(DEPTH)\n"


# ---- the pure half ------------------------------------------------------------------------------------------
def test_a_scale_adds_one_line_after_the_last_assignment_and_runs_as_python():
    scaled = scale_script(SCRIPT, Scale(2, 3, overrides=(("LR", "0.01"), ("x", "5"))))
    lines = scaled.splitlines()
    assert lines[lines.index("DEPTH = DEPTH + 0") + 1].startswith("DEPTH = max(1, round(DEPTH * 2))  " + SCALED_MARK)
    assert lines[lines.index("LR = 0.02") + 1].startswith("LR = 0.01  ")
    assert lines[lines.index("x: int = 3") + 1].startswith("x = 5  ")
    namespace: dict = {}
    exec(compile(scaled.replace("print(DEPTH)", ""), "scaled", "exec"), namespace)  # noqa: S102 - our own text
    assert (namespace["DEPTH"], namespace["LR"], namespace["x"]) == (4, 0.01, 5)
    assert scale_script(SCRIPT, Scale(1, 2)) == SCRIPT  # only the budget changes: the script is the keep's own


def test_a_script_that_cannot_be_scaled_says_why():
    with pytest.raises(ScaleError, match="no top-level assignment of N_LAYER"):
        scale_script(SCRIPT, Scale(2, 1, depth_name="N_LAYER"))
    with pytest.raises(ScaleError, match="does not parse"):
        scale_script("DEPTH = (", Scale())
    with pytest.raises(ScaleError, match="nothing would transfer"):
        Scale(1, 1)
    with pytest.raises(ScaleError, match="positive"):
        Scale(0, 1)
    for bad in ("LR", "LR=", "2x=1", "LR=os.system('x')"):
        with pytest.raises(ScaleError):
            parse_override(bad)
    assert parse_override(" MODEL_DIM = 256 ") == ("MODEL_DIM", "256")
    assert Scale(2, 3, overrides=(("LR", "0.01"),)).key == "DEPTH x2, budget x3, LR=0.01"


def _keep(trial_id, parent, value):
    return make_trial(id=trial_id, status="keep", parent_trial=parent, val_bpb=value, commit_sha=f"c{trial_id}",
                      description=f"keep {trial_id}")


def test_the_chain_and_the_labels_follow_the_gain_at_scale_against_twice_its_standard_error():
    chain = keep_chain([_keep(1, None, 1.6), make_trial(id=2, status="discard", val_bpb=1.7, commit_sha="c2"),
                        _keep(3, 1, 1.5), _keep(4, 3, 1.45), _keep(5, 4, 1.44)])
    assert [(link.keep.id, link.parent and link.parent.id) for link in chain] == [(1, None), (3, 1), (4, 3), (5, 4)]
    assert [link.keep.id for link in keep_chain([_keep(1, None, 1.6), _keep(3, 1, 1.5), _keep(4, 3, 1.4)], 1)] == [4]
    noise = [0.0, 0.002, -0.002]
    values = {1: [2.0 + n for n in noise], 3: [1.9 + n for n in noise],  # 3 beats 1 by 0.1: stable
              4: [1.95 + n for n in noise],  # 4 is worse than 3 by 0.05: bound
              5: [1.948 + n for n in noise]}  # 5 beats 4 by 0.002, within 2 x se: unknown
    result = label_chain(chain, values, 2.0)
    labels = {v.keep.id: v.label for v in result.verdicts}
    assert labels == {3: TransferLabel.STABLE, 4: TransferLabel.BOUND, 5: TransferLabel.UNKNOWN}
    assert result.sd == pytest.approx(0.002)
    five = result.verdicts[-1]
    assert five.se == pytest.approx(0.002 * (2 / 3) ** 0.5) and five.gain == pytest.approx(0.002)
    assert "within 2 x se" in five.reason and "about 8 runs of each would separate" in five.reason
    assert result.verdicts[0].base_gain == pytest.approx(0.1)  # the night's own gain, beside it
    assert result.counts() == {"scale-stable": 1, "scale-bound": 1, "unknown": 1}


def test_too_few_runs_or_seeds_that_never_differ_are_unknown_never_a_verdict():
    chain = [ChainLink(_keep(3, 1, 1.5), _keep(1, None, 1.6))]
    assert label_chain(chain, {1: [2.0], 3: [1.0]}).verdicts[0].label == TransferLabel.UNKNOWN  # no spread at all
    assert "unmeasured" in label_chain(chain, {1: [2.0], 3: [1.0]}).verdicts[0].reason
    same = label_chain(chain, {1: [2.0, 2.0], 3: [1.0, 1.0]}).verdicts[0]
    assert same.label == TransferLabel.UNKNOWN and "ignores its seed" in same.reason
    missing = label_chain(chain, {1: [2.0, 2.1]}).verdicts[0]
    assert missing.label == TransferLabel.UNKNOWN and "no finished run of the keep" in missing.reason
    unscalable = label_chain(chain, {1: [2.0, 2.1], 3: [1.0, 1.1]}, unscalable={3: "no DEPTH"}).verdicts[0]
    assert unscalable.label == TransferLabel.UNKNOWN and "could not be scaled: no DEPTH" in unscalable.reason


# ---- real runs ----------------------------------------------------------------------------------------------
def _night_agent(ctx, n):
    """A baseline with seed noise, then two keeps: LR up (good at depth 2 only), then wider (good at any depth)."""
    if ctx.obligation == "journal":
        return [journal(n)]
    if ctx.obligation == "reflection":
        return [reflection(n)]
    steps = {0: [edit("NOISE_SD = 0.0", "NOISE_SD = 0.002"), trial("baseline with a little seed noise")],
             1: [edit("LR = 0.02", "LR = 0.03"), trial("learning rate up")],
             2: [edit("WIDTH = 32", "WIDTH = 48"), trial("wider model")]}
    return steps.get(ctx.trials_done)


def _check(config, scale: Scale | None = None, seeds: int = 2):
    """The transfer check on a finished night, by the run's own supervisor (as `autoresearch transfer` runs it)."""
    sup = Supervisor(config, CallbackAgent(lambda ctx, n: None), resume=True)
    try:
        return sup.transfer_check(plan_transfer(sup.ledger, scale or Scale(2, 1), seeds))
    finally:
        sup.close()


def _night(tmp_path, **cfg):
    config = fake_config(tmp_path, policy="greedy", warm_start=False, max_trials=3, **cfg)
    sup = Supervisor(config, CallbackAgent(_night_agent))
    events = []
    sup.bus.subscribe(events.append)
    end = sup.run()
    return config, end, events


def test_a_real_check_labels_the_lr_keep_scale_bound_and_the_width_keep_scale_stable(tmp_path):
    config, end, _ = _night(tmp_path)
    ledger = Ledger(config.run_dir / "ledger.sqlite")
    assert [t.status for t in ledger.trials()] == ["keep", "keep", "keep"]
    plan = plan_transfer(ledger, Scale(2, 1.5), seeds=2)
    assert [c.id for c in plan.codes] == [1, 2, 3] and len(plan.missing) == 6
    assert [(i, c.id) for i, c in plan.missing][:3] == [(0, 1), (0, 2), (0, 3)]  # round-robin over the seeds
    ledger.close()

    sup = Supervisor(config, CallbackAgent(lambda ctx, n: None), resume=True)
    try:
        result = sup.transfer_check(plan)
        branch_head = sup.executor.workspace.head()
        diff_after = sup.executor.working_diff()
    finally:
        sup.close()
    labels = {v.keep.id: v.label for v in result.verdicts}
    assert labels == {2: TransferLabel.BOUND, 3: TransferLabel.STABLE}
    ledger = Ledger(config.run_dir / "ledger.sqlite", readonly=True)
    try:
        runs = ledger.transfer_runs(plan.scale.key)
        assert [r.status for r in runs] == [TransferStatus.OK] * 6
        assert sorted({r.seed for r in runs}) == [TRANSFER_SEED_BASE, TRANSFER_SEED_BASE + 1]
        # The same seeds for every code: paired, like the night's trials.
        by_code = {t: sorted(r.seed for r in runs if r.trial_id == t) for t in (1, 2, 3)}
        assert by_code[1] == by_code[2] == by_code[3]
        # The check is not part of the night: no trial, no noise measurement, and the branch is back at the best.
        assert len(ledger.trials()) == 3 and ledger.noise_records() == []
        assert branch_head == ledger.best_keep().commit_sha and diff_after == ""
        # The scaled runs really ran deeper: the LR keep's mean at scale is worse than its parent's.
        means = {t: statistics.fmean(r.val_bpb for r in runs if r.trial_id == t) for t in (1, 2, 3)}
        assert means[2] > means[1] and means[3] < means[2]
        status = run_status(ledger)
        assert status["transfer"][0]["scale"] == "DEPTH x2, budget x1.5"
        assert {k["keep"]: k["label"] for k in status["transfer"][0]["keeps"]} == {2: "scale-bound", 3: "scale-stable"}
        by_id = {t["id"]: t for t in status["trials"]}
        assert by_id[2]["transfer"] == {"DEPTH x2, budget x1.5": "scale-bound"} and by_id[1]["transfer"] == {}
        log = (config.run_dir / "transfer").rglob("log.txt")
        assert len(list(log)) == 6
    finally:
        ledger.close()


def test_a_stopped_check_keeps_what_finished_and_the_same_command_runs_only_the_rest(tmp_path):
    config, _, _ = _night(tmp_path)
    sup = Supervisor(config, CallbackAgent(lambda ctx, n: None), resume=True)
    finished = []

    def stop_after_two(event):
        if event.kind == ev.NOTICE and "val_bpb" in event.data.get("message", "") and "transfer" in \
                event.data.get("message", ""):
            finished.append(event)
            if len(finished) == 2:
                sup.stop()

    sup.bus.subscribe(stop_after_two)
    try:
        plan = plan_transfer(sup.ledger, Scale(2, 1), seeds=2)
        sup.transfer_check(plan)
    finally:
        sup.close()
    ledger = Ledger(config.run_dir / "ledger.sqlite")
    assert [r.status for r in ledger.transfer_runs()] == [TransferStatus.OK] * 2
    again = plan_transfer(ledger, Scale(2, 1), seeds=2)
    assert len(again.missing) == 4 and again.done == 2
    # A run a killed supervisor left "running" is aborted by the next start and run again.
    ghost = ledger.start_transfer_run(scale="DEPTH x2", scale_json={}, trial_id=3, commit_sha="x",
                                      seed=TRANSFER_SEED_BASE)
    ledger.close()
    sup = Supervisor(config, CallbackAgent(lambda ctx, n: None), resume=True)
    try:
        result = sup.transfer_check(plan_transfer(sup.ledger, Scale(2, 1), seeds=2))
    finally:
        sup.close()
    ledger = Ledger(config.run_dir / "ledger.sqlite", readonly=True)
    try:
        statuses = {r.id: r.status for r in ledger.transfer_runs()}
        assert statuses[ghost] == TransferStatus.ABORTED
        assert sum(s == TransferStatus.OK for s in statuses.values()) == 6
        assert {v.keep.id: v.label for v in result.verdicts} == {2: TransferLabel.BOUND, 3: TransferLabel.STABLE}
        assert transfer_result(ledger, "DEPTH x2", 2.0).verdicts == result.verdicts
    finally:
        ledger.close()


def test_the_cli_plans_runs_and_refuses_a_bad_scale_in_one_line(tmp_path):
    config, _, _ = _night(tmp_path, cache_dir=tmp_path / "cache")
    (tmp_path / "cache").mkdir(exist_ok=True)
    (tmp_path / "cache" / "manifest.json").write_text("{}")
    common = ["--tag", config.tag, "--journals", str(config.journals_root), "--cache", str(tmp_path / "cache")]
    dry = cli("transfer", *common, "--dry-run", "--seeds", "2", "--budget-factor", "1")
    assert dry.returncode == 0, dry.stderr
    assert "keeps judged: 2 (2, 3)" in dry.stderr and "runs: 6 to go" in dry.stderr
    bad = cli("transfer", *common, "--set", "LR=os.system('rm')")
    assert bad.returncode == 2 and bad.stderr.count("\n") == 1 and "not a Python literal" in bad.stderr
    done = cli("transfer", *common, "--seeds", "2", "--budget-factor", "1", "--json")
    assert done.returncode == 0, done.stderr
    data = json.loads(done.stdout)
    assert {k["keep"]: k["label"] for k in data["keeps"]} == {2: "scale-bound", 3: "scale-stable"}
    again = cli("transfer", *common, "--seeds", "2", "--budget-factor", "1", "--dry-run")
    assert "runs: 0 to go, 6 already done" in again.stderr


def test_transfer_at_end_runs_the_check_when_the_night_finishes(tmp_path):
    config, end, events = _night(tmp_path, transfer_at_end=True)
    assert end == "finished"
    ledger = Ledger(config.run_dir / "ledger.sqlite", readonly=True)
    try:
        runs = ledger.transfer_runs()
        assert {r.scale for r in runs} == {Scale().key} and len(runs) == 3 * 3  # three codes, three seeds
        notices = [e.data["message"] for e in events if e.kind == ev.NOTICE]
        assert any("the scale-transfer check runs now" in m for m in notices)
        assert any("scale-bound" in m for m in notices)
    finally:
        ledger.close()


def test_the_report_has_a_transfer_section_and_chart_and_says_how_to_check_when_unchecked(tmp_path):
    from supervisor.morning.report import write_report

    def report(out):
        ledger = Ledger(config.run_dir / "ledger.sqlite", readonly=True)
        try:
            return write_report(ledger, out, png=False)
        finally:
            ledger.close()

    config, _, _ = _night(tmp_path)
    unchecked = report(tmp_path / "before")
    text = unchecked.markdown.read_text()
    assert "## Scale transfer" in text and f"autoresearch transfer --tag {config.tag}" in text
    assert "transfer" not in unchecked.chart_names
    _check(config)
    checked = report(tmp_path / "after")
    text = checked.markdown.read_text()
    assert "**DEPTH x2** (1 scale-stable, 1 scale-bound, 0 unknown" in text
    assert "| 2 | learning rate up |" in text and "| scale-bound |" in text
    assert "| 3 | wider model |" in text and "| scale-stable |" in text
    assert "transfer" in checked.chart_names and (tmp_path / "after" / "charts" / "transfer.svg").is_file()


@pytest.mark.asyncio
async def test_the_morning_review_shows_each_keeps_label_in_a_scale_column(tmp_path):
    from supervisor.tui.screens import ReviewScreen
    from tests.test_tui_app import make_app, until

    config, _, _ = _night(tmp_path)
    _check(config)
    app = make_app(config.run_dir, review=True)
    async with app.run_test(size=(140, 40)) as pilot:
        await until(pilot, lambda: app.view.tag == config.tag, what="the run loaded")
        await until(pilot, lambda: isinstance(app.screen, ReviewScreen) and app.screen.table().row_count == 3,
                    what="the trials listed")
        table = app.screen.table()
        assert "scale" in table.shown_columns
        column = table.shown_columns.index("scale")
        cells = {row: str(table.get_row(row)[column]) for row in ("1", "2", "3")}
        assert cells == {"1": "", "2": "bound", "3": "stable"}
        await pilot.press("q")


def test_a_model_that_ignores_its_depth_constant_is_labelled_unknown_not_run_as_if_deeper(tmp_path):
    """Keep 2 hard-codes its size (the stand-in's parameter count no longer follows DEPTH, as `GPT(n_layer=6)`
    would): its run at DEPTH x2 reports the night's parameter count, so it is not taken for a deeper run."""
    def agent(ctx, n):
        if ctx.obligation == "journal":
            return [journal(n)]
        steps = {0: [edit("NOISE_SD = 0.0", "NOISE_SD = 0.002"), trial("baseline")],
                 1: [edit("LR = 0.02", "LR = 0.03"),
                     edit('print(f"num_params_M: {0.05 * DEPTH:g}")', 'print("num_params_M: 0.1")'),
                     trial("learning rate up, model size fixed")]}
        return steps.get(ctx.trials_done)

    config = fake_config(tmp_path, policy="greedy", warm_start=False, max_trials=2)
    Supervisor(config, CallbackAgent(agent)).run()
    sup = Supervisor(config, CallbackAgent(lambda ctx, n: None), resume=True)
    try:
        plan = plan_transfer(sup.ledger, Scale(2, 1), seeds=2)
        result = sup.transfer_check(plan)
        runs = sup.ledger.transfer_runs()
    finally:
        sup.close()
    assert [v.label for v in result.verdicts] == [TransferLabel.UNKNOWN]
    assert "the model does not follow DEPTH" in result.verdicts[0].reason
    # Found on its first run; its other seed is not spent.
    assert sorted((r.trial_id, r.status) for r in runs) == [(1, "ok"), (1, "ok"), (2, "crash")]
