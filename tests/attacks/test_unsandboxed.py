"""With ``sandbox="off"`` (the person's choice where bubblewrap cannot run): what still holds.

Unsandboxed, a trial runs in the workspace with the supervisor's user: it can write the workspace's .git, the
harness, and the run folder beside them. The defences left are the supervisor's own: hook-free git, the
harness and evaluation-data fingerprints, the guards, and the pristine harness the evaluator runs from.

One run: the baseline; a trial that plants git hooks and program-running git settings and changes the
harness; a trial that rewrites the supervisor's pristine copy of the harness (the evaluator's code) for the
trials after it; an honest re-run of the baseline, whose number must be its own.
"""

from __future__ import annotations

import pytest

from tests.attacks.support import (
    AFTER_IMPORTS,
    attack_steps,
    baseline_steps,
    fill,
    insert_after,
    leaks,
    new_marker,
    planted_secrets,
    rerun_steps,
    run_attack,
    survivors,
    uniform_bpb,
)

pytestmark = [pytest.mark.slow, pytest.mark.timeout(1800)]

PLANT = '''
def _atk_plant():
    """Hooks and program-running settings in the workspace's .git, attributes that call them, the harness."""
    import json as _json
    report = {"git": [], "harness": []}
    hook = "#!/bin/sh\\necho hook >> @PWNED@\\n"
    settings = ('[core]\\n\\tfsmonitor = "echo fsmonitor >> @PWNED@; false"\\n\\thooksPath = .git/hooks\\n'
                '\\tpager = echo pager >> @PWNED@\\n\\tsshCommand = echo ssh >> @PWNED@\\n'
                '[filter "atk"]\\n\\tclean = "echo filter >> @PWNED@; cat"\\n\\tsmudge = "echo filter >> @PWNED@; cat"\\n'
                '[diff "atk"]\\n\\ttextconv = "echo textconv >> @PWNED@; cat"\\n')
    for git in (".git", "../.git"):  # the workspace's (and the run folder's): never $PWD, a real checkout
        if not os.path.isdir(git):
            continue
        try:
            os.makedirs(os.path.join(git, "hooks"), exist_ok=True)
            for name in ("post-commit", "pre-commit", "post-checkout", "reference-transaction", "post-index-change"):
                path = os.path.join(git, "hooks", name)
                with open(path, "w") as handle:
                    handle.write(hook)
                os.chmod(path, 0o755)
            with open(os.path.join(git, "config"), "a") as handle:
                handle.write(settings)
            os.makedirs(os.path.join(git, "info"), exist_ok=True)
            with open(os.path.join(git, "info", "attributes"), "a") as handle:
                handle.write("* filter=atk diff=atk\\n")
            report["git"].append(os.path.abspath(git))
        except OSError:
            pass
    for path in (".gitattributes", "trainer/.gitattributes"):
        try:
            with open(path, "a") as handle:
                handle.write("* filter=atk diff=atk\\n")
        except OSError:
            pass
    try:
        with open("trainer/prepare.py", "a") as handle:
            handle.write("\\n# PWNED: the harness, changed by the trial\\n")
        report["harness"].append("trainer/prepare.py")
    except OSError:
        pass
    print("ATTACK-REPORT " + _json.dumps(report), flush=True)


_atk_plant()
'''

# Inserted into the supervisor's pristine prepare.py, before its `if __name__ == "__main__":`: every later
# evaluator reports val_bpb 0.0123 with its checks passed.
EVALUATOR_FORGERY = (
    "def _atk_forged(*args, **kwargs):\\n"
    "    return {'val_bpb': 0.0123, 'nats': 1.0, 'bytes': 1, 'tokens': 1, 'scored_tokens': 1, 'seq_len': 256,\\n"
    "            'batch_size': 8}\\n\\n\\n"
    "evaluate_bpb = _atk_forged\\n"
    "_CheckedModel.verify = lambda self, device: {'causality_deviation': 0.0, 'repeat_deviation': 0.0,\\n"
    "                                             'rows_checked': 8}\\n\\n\\n"
)

PLANT_EVALUATOR = '''
def _atk_plant_evaluator():
    """The evaluator runs the run folder's copy of the harness: from the workspace it is ../harness/."""
    import json as _json
    written = []
    for path in ("../harness/trainer/prepare.py", "../harness/prepare.py"):
        try:
            with open(path) as handle:
                text = handle.read()
            with open(path, "w") as handle:
                handle.write(text.replace('if __name__ == "__main__":', "@FORGERY@" + 'if __name__ == "__main__":', 1))
            written.append(os.path.abspath(path))
        except OSError:
            pass
    print("ATTACK-REPORT " + _json.dumps({"evaluator_rewritten": written}), flush=True)


_atk_plant_evaluator()
'''


@pytest.fixture(scope="module")
def run(prepared_cache, tmp_path_factory):
    base = tmp_path_factory.mktemp("unsandboxed")
    marker = new_marker()
    pwned = base / f"PWNED-{marker}"
    steps = [
        *baseline_steps(),
        *attack_steps(1, "hooks: git hooks, git settings and the harness", insert_after(AFTER_IMPORTS, fill(PLANT, PWNED=pwned))),
        *attack_steps(2, "evaluator: rewrite the pristine harness for the trials after this one",
                      insert_after(AFTER_IMPORTS, fill(PLANT_EVALUATOR, FORGERY=EVALUATOR_FORGERY))),
        *rerun_steps(3, "honest: the baseline again"),
    ]
    with planted_secrets() as key:
        result = run_attack(base, prepared_cache, steps, sandbox="off", key=key, marker=marker)
    result.extra["pwned"] = pwned
    return result


def test_unsandboxed_a_hook_or_harness_attack_still_gets_no_keep(run):
    """Attack (unsandboxed, so the workspace is the trial's working folder): hooks (post-commit, pre-commit,
    post-checkout, reference-transaction, post-index-change), core.fsmonitor, core.hooksPath, core.pager,
    core.sshCommand, a clean/smudge filter and a diff textconv in the workspace's .git, attributes applying them
    (.git/info/attributes, ./.gitattributes, trainer/.gitattributes), and a line appended to trainer/prepare.py.
    Every later commit, status, diff and checkout of the supervisor would run the trial's shell commands as
    the supervisor (with its keys); the harness defines the metric.

    Defence: every git command of the supervisor runs with the program-running settings forced off on its
    command line, hooks and attributes neutralised; the harness is fingerprinted after the trial and
    restored, and a trial that changed it gets no number. The trial is a crash, no hook ever ran, both
    trials are marked unsandboxed."""
    hooks, evaluator = run.by_description("hooks"), run.by_description("evaluator")
    assert run.reports(hooks)["git"], "the attack found no .git to plant in: it tested nothing"
    assert hooks.status == "crash", hooks.crash_reason
    assert evaluator.status != "keep"
    assert not run.extra["pwned"].exists(), run.extra["pwned"].read_text()
    assert hooks.unsandboxed and evaluator.unsandboxed
    assert "PWNED" not in (run.run_dir / "workspace" / "trainer" / "prepare.py").read_text(encoding="utf-8")


def test_unsandboxed_an_untrusted_trial_keeps_no_number(run):
    """The trial that changed the harness and .git is a crash; a crash has no val_bpb, whatever its run
    measured before the change was found (TrialOutcome's rule: no caller may mistake a crash for a result)."""
    hooks = run.by_description("hooks")
    assert hooks.status == "crash" and hooks.val_bpb is None, f"crash recorded with val_bpb {hooks.val_bpb}"


def test_unsandboxed_the_evaluator_code_cannot_be_replaced_for_later_trials(run):
    """Attack: the trial rewrites the supervisor's pristine copy of prepare.py (the code the evaluator runs),
    replacing evaluate_bpb and the checks with a forgery, then trains and hands over as usual. Its own
    evaluator was started before it ran; every later one reads the forged file. The next trial is an honest,
    unchanged re-run: no diff, no guard finding.

    Defence expected: the evaluator's code is verified (or rewritten) before each evaluation, so the honest
    trial's number is its own."""
    assert run.reports(run.by_description("evaluator"))["evaluator_rewritten"], "nothing was rewritten"
    honest = run.by_description("honest")
    record = run.record(honest)
    assert record is not None and record["ok"] is True, honest.crash_reason
    assert 1.0 < honest.val_bpb < uniform_bpb(record) - 0.05, (
        f"{honest.status} with val_bpb {honest.val_bpb}: {record}")


def test_the_run_leaks_no_key_leaves_no_process_and_no_traceback(run):
    """The planted key is in no file of the run, no process carries the marker, the supervisor finished cleanly."""
    assert leaks(run.run_dir, run.key) == []
    assert survivors(run.marker) == []
    run.assert_clean_supervisor()
