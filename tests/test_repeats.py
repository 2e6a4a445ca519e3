"""No repeats (issue 19): a change an earlier trial already measured is refused before it runs, unless the agent
re-tests it on purpose with retest_of; the refusals are counted in status, the report and the journal.

The matching is checked on hand-made diffs; the rule end to end on the stand-in trainer (real git, real
subprocesses, real ledger), with a scripted agent and with the offline agent's contexts.
"""

from __future__ import annotations

import difflib
import json

import pytest

from supervisor.agents.base import ToolOutcome
from supervisor.agents.offline import OfflineAgent
from supervisor.agents.scripted import ScriptedAgent
from supervisor.core import events as ev
from supervisor.core import prompts
from supervisor.core.repeats import EXACT, NEAR, change_regions, changed_lines, find_repeat, near_signature
from supervisor.core.types import Trial, TrialKind, TrialStatus
from supervisor.morning.report import write_report
from supervisor.run.floor import RETEST_SEED_BASE
from supervisor.run.loop import Supervisor
from supervisor.run.status import run_status
from supervisor.run.tools import TOOL_SCHEMAS
from supervisor.store.ledger import Ledger
from tests.agents_support import run_in_thread, wait_until
from tests.loop_support import Recorder, edit, fake_config, journal, trial, write_script
from tests.test_offline_agent import BASE_ROW, context

SCRIPT = """\
import math

LR = 0.02  # learning rate
WIDTH = 32  # model width
DROPOUT = 0.0
ACTIVATION = "gelu"


def schedule(step):
    return min(1.0, step / 100)
"""


def git_diff(old: str, new: str, path: str = "trainer/train.py") -> str:
    """A diff as `git diff` writes it: header, hunks with three lines of context."""
    body = "".join(difflib.unified_diff(old.splitlines(True), new.splitlines(True), f"a/{path}", f"b/{path}"))
    return f"diff --git a/{path} b/{path}\nindex 1111111..2222222 100644\n{body}"


def changed(search: str, replace: str, script: str = SCRIPT) -> str:
    assert script.count(search) == 1
    return git_diff(script, script.replace(search, replace))


def make_trial(trial_id: int, diff: str, *, parent_trial: int | None = 1,
               status: TrialStatus = TrialStatus.DISCARD, val_bpb: float | None = 1.6) -> Trial:
    fields = {name: None for name in Trial.__dataclass_fields__} | {
        "kind": TrialKind.TRIAL, "description": f"trial {trial_id}", "extra_values": (), "flagged": False,
        "decision": "", "log_tail": "", "summary": {}, "platform": {}, "suspicions": ()}
    return Trial(**fields | {"id": trial_id, "diff": diff, "parent_trial": parent_trial, "status": status,
                             "val_bpb": val_bpb})


# ---- a diff's change -----------------------------------------------------------------------------------------
def test_the_change_is_the_added_and_removed_lines_without_headers_or_context():
    diff = changed("LR = 0.02  # learning rate", "LR = 0.04  # learning rate")
    assert changed_lines(diff) == ("-LR = 0.02  # learning rate", "+LR = 0.04  # learning rate")
    assert change_regions("") == [] and changed_lines("") == ()


def test_a_removed_line_that_looks_like_a_header_is_still_a_change():
    script = "x = 1\n-- y\n"
    diff = git_diff(script, script.replace("-- y\n", "++ y\n"))
    assert changed_lines(diff) == ("--- y", "+++ y")


def test_context_lines_and_line_numbers_do_not_matter():
    """The same change in a script that differs elsewhere (another parent): same lines, other context."""
    other = "import os\n" * 3 + SCRIPT.replace("WIDTH = 32", "WIDTH = 64")
    here = changed("LR = 0.02  # learning rate", "LR = 0.01  # learning rate")
    there = changed("LR = 0.02  # learning rate", "LR = 0.01  # learning rate", other)
    assert here != there
    assert changed_lines(here) == changed_lines(there)


# ---- the near test's normalisation ----------------------------------------------------------------------------
@pytest.mark.parametrize("written", ["LR = 1e-2", "LR=0.01", "LR = 0.0100", "LR = 1E-02", "LR  =  .01",
                                     "LR = 0.01  # a lower learning rate", "LR = 0.01"])
def test_numbers_spacing_and_comments_are_formatting(written):
    first = changed("LR = 0.02  # learning rate", "LR = 0.01  # learning rate")
    again = changed("LR = 0.02  # learning rate", written)
    assert near_signature(again) == near_signature(first)


@pytest.mark.parametrize(("one", "other"), [
    ("WIDTH = 1_000", "WIDTH = 1000"), ("WIDTH = 1000.0", "WIDTH = 1e3"), ("WIDTH = 0x3e8", "WIDTH = 1000"),
    ('ACTIVATION = "relu"', "ACTIVATION = 'relu'"), ('ACTIVATION = "relu"', 'ACTIVATION = u"relu"'),
    ("WIDTH = max(32, 48,)", "WIDTH = max(32, 48)"), ("WIDTH = max(48,)", "WIDTH = max(48)"),
    ("WIDTH = [48, 64,][0]", "WIDTH = [48, 64][0]"), ("WIDTH = (48, 64,)[0]", "WIDTH = (48, 64)[0]"),
])
def test_what_a_model_rewrites_without_meaning_to_is_the_same_change(one, other):
    search = 'ACTIVATION = "gelu"' if "ACTIVATION" in one else "WIDTH = 32  # model width"
    assert near_signature(changed(search, one)) == near_signature(changed(search, other))


@pytest.mark.parametrize(("one", "other"), [
    ("LR = 0.001", "LR = 0.002"), ("LR = 1e-3", "LR = 1e-4"), ("LR = 0.001", "LR = -0.001"),
    ("LR = 0.1", "LR = 0.10000000000000000000000000000001"),  # past float and default-decimal precision
    ('ACTIVATION = "relu"', 'ACTIVATION = "Relu"'),
    ("WIDTH = (48,)", "WIDTH = (48)"),  # a one-element tuple is not a number
    ("WIDTH = sizes[48,]", "WIDTH = sizes[48]"),  # indexing with a tuple is not indexing with an int
    ("WIDTH = 2 * 24", "WIDTH = 48"),  # an expression is what the agent wrote, not folded
    ("WIDTH = (a + b) * 2", "WIDTH = a + b * 2"),  # parentheses are precedence
])
def test_different_experiments_stay_different(one, other):
    search = 'ACTIVATION = "gelu"' if "ACTIVATION" in one else "WIDTH = 32  # model width"
    assert near_signature(changed(search, one)) != near_signature(changed(search, other))


def test_indentation_is_code_but_a_reflowed_statement_is_not():
    flat = changed("    return min(1.0, step / 100)", "    return min(1.0, step / 200)")
    reflowed = changed("    return min(1.0, step / 100)", "    return min(\n        1.0,\n        step / 200,\n    )")
    dedented = changed("    return min(1.0, step / 100)", "    return min(1.0, step / 200)\nreturn_value = 1")
    assert near_signature(reflowed) == near_signature(flat)
    assert near_signature(dedented) != near_signature(flat)
    assert changed_lines(reflowed) != changed_lines(flat)  # not exact, only near


def test_a_comment_only_change_has_no_near_signature():
    reworded = changed("LR = 0.02  # learning rate", "LR = 0.02  # the learning rate")
    respaced = changed("DROPOUT = 0.0", "DROPOUT=0.0")
    assert near_signature(reworded) == () and near_signature(respaced) == ()
    # A real change next to a reworded comment elsewhere is the real change alone.
    both = git_diff(SCRIPT, SCRIPT.replace("LR = 0.02  # learning rate", "LR = 0.01  # learning rate")
                    .replace("DROPOUT = 0.0", "DROPOUT = 0.0  # unchanged"))
    assert near_signature(both) == near_signature(changed("LR = 0.02  # learning rate", "LR = 0.01"))


def test_hostile_literals_stay_short_and_never_raise():
    huge = changed("LR = 0.02  # learning rate", "LR = 1e999999999")
    assert near_signature(huge) != near_signature(changed("LR = 0.02  # learning rate", "LR = 1e999999998"))
    for odd in ("LR = 0x" + "f" * 6000, 'LR = "\\d"', "LR = f'{x}'", 'LR = """unterminated', "LR = 1j", "LR = ((("):
        assert near_signature(changed("LR = 0.02  # learning rate", odd))


# ---- finding the earlier trial --------------------------------------------------------------------------------
LOWER = changed("LR = 0.02  # learning rate", "LR = 0.01  # learning rate")


def test_an_exact_repeat_on_the_same_parent():
    match = find_repeat(LOWER, 1, [make_trial(2, LOWER)])
    assert match is not None and match.trial.id == 2 and match.match == EXACT and match.same_parent


def test_a_near_repeat_and_one_on_another_base():
    near = changed("LR = 0.02  # learning rate", "LR = 1e-2")
    match = find_repeat(near, 1, [make_trial(2, LOWER)])
    assert match is not None and match.match == NEAR and match.same_parent
    match = find_repeat(LOWER, 5, [make_trial(2, LOWER, parent_trial=1)])
    assert match is not None and match.match == EXACT and not match.same_parent


def test_not_a_repeat():
    earlier = [make_trial(2, LOWER)]
    assert find_repeat(changed("LR = 0.02  # learning rate", "LR = 0.011"), 1, earlier) is None
    assert find_repeat(changed("WIDTH = 32  # model width", "WIDTH = 64  # model width"), 1, earlier) is None
    # A change that adds to the earlier one is another experiment.
    more = git_diff(SCRIPT, SCRIPT.replace("LR = 0.02", "LR = 0.01").replace("WIDTH = 32", "WIDTH = 64"))
    assert find_repeat(more, 1, earlier) is None


def test_an_empty_change_is_never_a_repeat():
    """A baseline, or the keep's code run again: a sample pooled into the noise floor."""
    assert find_repeat("", 1, [make_trial(1, "", status=TrialStatus.KEEP), make_trial(2, "")]) is None


def test_only_judged_trials_count():
    earlier = [make_trial(2, LOWER, status=TrialStatus.ABORTED), make_trial(3, LOWER, status=TrialStatus.RUNNING)]
    assert find_repeat(LOWER, 1, earlier) is None
    for status in (TrialStatus.KEEP, TrialStatus.CRASH, TrialStatus.HELD):
        assert find_repeat(LOWER, 1, [make_trial(2, LOWER, status=status)]) is not None


def test_exact_comes_first_then_the_same_parent_then_the_most_recent():
    near = changed("LR = 0.02  # learning rate", "LR = 1e-2  # learning rate")
    exact_other_base = changed("LR = 0.02  # learning rate", "LR = 0.01  # learning rate", "import os\n" + SCRIPT)
    two, three, five, six = (make_trial(2, LOWER, parent_trial=1), make_trial(3, near, parent_trial=4),
                             make_trial(5, exact_other_base, parent_trial=4), make_trial(6, near, parent_trial=4))
    earlier = [two, three, five, six]
    assert find_repeat(LOWER, 4, earlier).trial.id == 5  # exact, on the same parent
    assert find_repeat(LOWER, 1, earlier).trial.id == 2  # the same parent before a more recent one
    assert find_repeat(LOWER, 7, earlier).trial.id == 5  # another base for both: the most recent
    match = find_repeat(LOWER, 4, [two, three, six])
    assert match.trial.id == 2 and match.match == EXACT and not match.same_parent  # exact before near
    variant = changed("LR = 0.02  # learning rate", "LR = 0.010")
    assert find_repeat(variant, 4, earlier).trial.id == 6  # near: the same parent, the most recent
    match = find_repeat(variant, 1, earlier)
    assert match.trial.id == 2 and match.match == NEAR and match.same_parent


def test_the_refusal_names_the_trial_its_result_and_its_journal():
    match = find_repeat(LOWER, 3, [make_trial(2, LOWER, parent_trial=1, val_bpb=1.612345)])
    text = prompts.repeat_refused(match, None, "trainer/train.py")
    assert text.startswith("refused: this is trial 2 again (discarded at val_bpb 1.612345, journal: no entry). "
                           "Your change is exactly trial 2's; trial 2 made it on trial 1's code")
    assert "retest_of: 2" in text and "revert_edits" in text
    crash = make_trial(4, LOWER, parent_trial=None, status=TrialStatus.CRASH, val_bpb=None)
    crash = Trial(**{**crash.__dict__, "crash_reason": "CUDA out of memory"})
    text = prompts.repeat_refused(find_repeat(LOWER, 1, [crash]), None, "trainer/train.py")
    assert "(crashed: CUDA out of memory, journal: no entry)" in text and "the starting script" in text


def test_the_tool_says_how_to_re_test():
    schema = next(t for t in TOOL_SCHEMAS if t["name"] == "run_trial")
    assert "retest_of" in schema["input_schema"]["properties"] and "retest_of" in schema["description"]
    assert "retest_of" not in schema["input_schema"]["required"]


# ---- the rule in a run, on the stand-in trainer ---------------------------------------------------------------
LR_LINE = "LR = 0.02  # learning rate"


def test_a_repeat_is_refused_counted_and_can_be_re_tested_on_purpose(tmp_path):
    steps = [
        trial("baseline"), journal(1),                                                       # trial 1: keep
        edit(LR_LINE, "LR = 0.01  # learning rate"), trial("lower the learning rate"), journal(2),  # 2: discard
        edit(LR_LINE, "LR = 0.01  # learning rate"), trial("lower the learning rate again"),  # refused: exact
        trial("lower the learning rate, on purpose", retest_of=2), journal(3),              # 3: re-test of 2
        edit(LR_LINE, "LR = 1e-2  # the learning rate, lower"), trial("lr 1e-2"),           # refused: near, 3
        {"tool": "revert_edits", "input": {}},
        edit("WIDTH = 32", "WIDTH = 31"), trial("narrower"), journal(4),                     # 4: discard
        edit(LR_LINE, "LR = 0.04  # learning rate"), trial("raise the learning rate"), journal(5),  # 5: keep
        edit("WIDTH = 32", "WIDTH = 31"), trial("narrower, now that the lr moved"),          # refused: 4, other base
        trial("narrower, now that the lr moved", retest_of=999), journal(6),                # 6: linked to 4
        edit("WIDTH = 32", "WIDTH = 48"), trial("wider", retest_of=999), journal(7),          # 7: no link
    ]
    config = fake_config(tmp_path, reflect_every=50, plateau_trials=50)
    sup = Supervisor(config, ScriptedAgent(write_script(tmp_path / "script.jsonl", steps)))
    rec = Recorder()
    sup.bus.subscribe(rec)
    sup.run()
    ledger = Ledger(config.run_dir / "ledger.sqlite")
    trials = ledger.trials()
    assert [t.status for t in trials][:6] == ["keep", "discard", "discard", "discard", "keep", "discard"]
    assert [t.retest_of for t in trials] == [None, None, 2, None, None, 4, None]
    assert trials[2].diff == trials[1].diff  # the re-test ran the very change

    lines = [json.loads(x) for x in (config.run_dir / "transcript.jsonl").read_text().splitlines()]
    runs = [x for x in lines if x["role"] == "tool" and x["tool"] == "run_trial"]
    refused = [x["text"] for x in runs if x["refused"]]
    assert len(runs) == 10 and len(refused) == 3
    second = trials[1]
    assert refused[0].startswith(f"refused: this is trial 2 again (discarded at val_bpb {second.val_bpb:.6f}, "
                                 f"journal: {ledger.journal_for(2).interpretation}). Your change is exactly "
                                 "trial 2's, on the same code.")
    assert refused[1].startswith("refused: this is trial 3 again (discarded at val_bpb")
    assert "written differently" in refused[1]
    assert refused[2].startswith("refused: this is trial 4 again") and "made it on trial 1's code" in refused[2]
    accepted = [x["text"] for x in runs if not x["refused"]]
    assert accepted[2].startswith("note: recorded as a deliberate re-test of trial 2")
    assert accepted[5].startswith("note: retest_of 999: trial 999 does not exist; this change repeats trial 4")
    assert accepted[6].startswith("note: retest_of 999: trial 999 does not exist; the trial ran without a re-test "
                                  "link") and "trial 7 finished" in accepted[6]

    assert [(r.earlier_trial, r.match) for r in ledger.repeats()] == [(2, EXACT), (3, NEAR), (4, EXACT)]
    assert [r.description for r in ledger.repeats()][0] == "lower the learning rate again"
    notices = [e.data["message"] for e in rec.kinds(ev.NOTICE) if "repeat refused" in e.data.get("message", "")]
    assert len(notices) == 3 and "is trial 4 again (exact, another base)" in notices[2]

    status = run_status(ledger)
    assert status["repeats_avoided"] == 3 and status["counts"]["trials"] == 7
    assert [t["retest_of"] for t in status["trials"]] == [None, None, 2, None, None, 4, None]
    assert [(r["earlier_trial"], r["match"], r["earlier_status"]) for r in status["repeats"]] == [
        (2, "exact", "discard"), (3, "near", "discard"), (4, "exact", "discard")]
    report = write_report(ledger, tmp_path / "report", png=False).markdown.read_text()
    assert "- **Repeats avoided:** 3 (2 exact, 1 near)" in report and "## Repeats avoided" in report
    assert "| 4 | exact | discard, val_bpb" in report and "Trial 3 re-tested trial 2" in report
    journal_md = (config.run_dir / "journal.md").read_text()
    assert "3 repeats refused, not run (they repeated trial 2, 3, 4)." in journal_md
    assert "[re-test of trial 2]" in (config.run_dir / "results.tsv").read_text()


def test_a_repeat_sent_again_unchanged_pauses_the_run_rather_than_looping(tmp_path):
    """The refusal is no progress; sent five times unread, the runaway guard pauses the run with the reason."""
    steps = [trial("baseline"), journal(1), edit(LR_LINE, "LR = 0.01"), trial("lower lr"), journal(2),
             edit(LR_LINE, "LR = 0.01")] + [trial("lower lr again")] * 6
    config = fake_config(tmp_path, reflect_every=50, plateau_trials=50)
    sup = Supervisor(config, ScriptedAgent(write_script(tmp_path / "script.jsonl", steps)))
    thread, result = run_in_thread(sup)
    try:
        wait_until(lambda: sup.state == "paused" or "end" in result or "error" in result, timeout=120,
                   what="the runaway pause")
        assert sup.state == "paused", result
        ledger = Ledger(config.run_dir / "ledger.sqlite")
        why = [t.text for t in ledger.turns() if t.role == "system" and t.text.startswith("runaway guard: ")]
        assert len(why) == 1 and "same failing run_trial call 5 times" in why[0]
        assert "this is trial 2 again" in why[0]
        assert len(ledger.trials()) == 2 and len(ledger.repeats()) == 5
        ledger.close()
    finally:
        sup.stop()
        thread.join(30)


# ---- the offline agent -------------------------------------------------------------------------------------
def test_the_offline_agent_takes_a_refused_repeat_back_and_moves_on():
    agent = OfflineAgent()
    first = agent.turn(context(results=[BASE_ROW], best=BASE_ROW))
    assert first.calls[-1].input == {"description": "offline: LR 0.02 -> 0.04", "category": "learning_rate"}
    refusal = ToolOutcome("run_trial", ok=False, refused=True,
                          content=prompts.REPEAT_REFUSED.format(trial_id=7, earlier="x", journal="y", how="z",
                                                                editable="trainer/train.py"))
    edited = "LR = 0.04  # learning rate\nWIDTH = 32  # model width\n"
    undo = agent.turn(context(results=[BASE_ROW], best=BASE_ROW, last_outcomes=[refusal], train_py=edited,
                              uncommitted_lines=2))
    assert [c.name for c in undo.calls] == ["revert_edits"]
    done = ToolOutcome("revert_edits", ok=True, content="reverted")
    after = agent.turn(context(results=[BASE_ROW], best=BASE_ROW, last_outcomes=[done]))
    assert after.calls[-1].input["description"] == "offline: LR 0.02 -> 0.01"


def test_the_offline_agent_re_tests_a_move_around_a_new_best_on_purpose():
    """WIDTH 32 -> 64 was measured around the baseline; around a new best it is a deliberate re-test."""
    width = {"id": 2, "status": "discard", "description": "offline: WIDTH 32 -> 64", "parent_trial": 1,
             "val_bpb": 1.6, "delta": 0.1, "flagged": False, "crash_reason": None}
    best = {**BASE_ROW, "id": 3, "description": "offline: LR 0.02 -> 0.04", "parent_trial": 1, "delta": -0.1}
    tried = [{**width, "id": i, "parent_trial": 3, "description": d}
             for i, d in ((4, "offline: LR 0.04 -> 0.08"), (5, "offline: LR 0.04 -> 0.02"))]
    script = "LR = 0.04  # learning rate\nWIDTH = 32  # model width\n"
    turn = OfflineAgent().turn(context(results=[BASE_ROW, width, best, *tried], best=best, train_py=script))
    assert turn.calls[-1].input == {"description": "offline: WIDTH 32 -> 64", "category": "architecture",
                                    "retest_of": 2}


def test_re_testing_a_change_on_the_same_keep_pools_its_runs_so_rerolling_the_noise_is_no_free_retry(tmp_path):
    """The lucky re-roll: a change that lost is re-tested until a seed is kind. Each re-test of the same change on
    the same keep runs with a new seed and is judged on the mean of every run of that change."""
    worse = "LR = 0.019  # learning rate"  # a little worse than 0.02: only the seed noise can make it look better
    steps = [
        edit("NOISE_SD = 0.0", "NOISE_SD = 0.02"), trial("baseline, noisy"), journal(1),        # 1: keep
        edit(LR_LINE, worse), trial("a touch lower lr"), journal(2),                            # 2: discard (paired)
        edit(LR_LINE, worse), trial("again, on purpose", retest_of=2), journal(3),               # 3: re-test of 2
        edit(LR_LINE, worse), trial("and again", retest_of=2), journal(4),                      # 4: re-test of 2
        edit("WIDTH = 32", "WIDTH = 31"), trial("narrower"), journal(5),                         # 5: discard
    ]
    config = fake_config(tmp_path, reflect_every=50, plateau_trials=50, policy="greedy")
    sup = Supervisor(config, ScriptedAgent(write_script(tmp_path / "script.jsonl", steps)))
    sup.run()
    ledger = Ledger(config.run_dir / "ledger.sqlite")
    try:
        t = {x.id: x for x in ledger.trials()}
        assert t[2].seed == 42 and t[2].status == "discard"
        assert t[3].retest_of == 2 and t[3].seed == RETEST_SEED_BASE + 1000 * 2 + 1
        assert t[3].all_values == [t[3].val_bpb, t[2].val_bpb]  # its own run, then trial 2's
        # Named after the first trial of the change, it is linked there; the newest run of the change holds them all.
        assert t[4].retest_of == 2 and t[4].seed == RETEST_SEED_BASE + 1000 * 2 + 2 and len(t[4].all_values) == 3
        assert sorted(t[4].all_values[1:]) == sorted(t[3].all_values)  # every earlier run of the change, once each
        assert t[4].summary["supervisor.pooled_from"] == "2,3" and t[4].summary["supervisor.pooled_runs"] == "2"
        assert "a re-test of the change trials 2 and 3 made to this keep, with a new seed" in t[4].decision
        assert "mean of 3 runs" in t[4].decision
        # The mean decides: kept only if the mean of all three beats the parent, whatever the last seed drew.
        mean = sum(t[4].all_values) / 3
        assert (t[4].status == "keep") == (mean < t[1].val_bpb)
        # A re-test is not an unchanged re-run of the keep: nothing of it is pooled into the keep's samples.
        assert t[1].extra_values == () and t[5].parent_val_bpb == t[1].val_bpb
    finally:
        ledger.close()
