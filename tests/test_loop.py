"""The supervised loop on the stand-in trainer: real git, real subprocesses, real ledger; seconds per test."""

from __future__ import annotations

import json
import os
import threading
import time

import git
import pytest

from supervisor.agents.base import AgentTurn
from supervisor.agents.offline import OfflineAgent
from supervisor.agents.scripted import ScriptedAgent
from supervisor.core import events as ev
from supervisor.run.loop import Supervisor, SupervisorError
from supervisor.run.status import run_status
from supervisor.store.lock import RunLocked
from tests.loop_support import (
    CallbackAgent,
    Recorder,
    edit,
    fake_config,
    journal,
    reflection,
    trial,
    write_script,
)


def scripted(tmp_path, steps, **cfg):
    config = fake_config(tmp_path, **cfg)
    agent = ScriptedAgent(write_script(tmp_path / "script.jsonl", steps))
    sup = Supervisor(config, agent)
    rec = Recorder()
    sup.bus.subscribe(rec)
    return sup, config, rec


def transcript(config):
    return [json.loads(line) for line in (config.run_dir / "transcript.jsonl").read_text().splitlines()]


def test_offline_run_end_to_end(tmp_path):
    config = fake_config(tmp_path, max_trials=5, reflect_every=3)
    sup = Supervisor(config, OfflineAgent())
    assert sup.run() == "finished"
    repo = git.Repo(config.workspace)
    assert repo.active_branch.name == "autoresearch/t"
    rows = (config.run_dir / "results.tsv").read_text().splitlines()
    assert rows[0] == "commit\tval_bpb\tmemory_gb\tstatus\tdescription"
    assert len(rows) == 6
    statuses = [r.split("\t")[3] for r in rows[1:]]
    assert statuses[0] == "keep" and set(statuses) <= {"keep", "discard"}
    # LR 0.02 -> 0.04 is a real gain on the stand-in; the branch head must be the last keep.
    from supervisor.store.ledger import Ledger

    ledger = Ledger(config.run_dir / "ledger.sqlite")
    best = ledger.best_keep()
    assert repo.head.commit.hexsha == best.commit_sha
    assert "LR = 0.04" in (config.workspace / "trainer/train.py").read_text()
    # Every finished trial has exactly one journal entry; a reflection was forced at trial 3.
    assert len(ledger.journal_entries()) == 5
    assert ledger.reflections() and ledger.reflections()[0].after_trial == 3
    journal_md = (config.run_dir / "journal.md").read_text()
    assert "Reflection 1" in journal_md and "coordinate search" in journal_md
    # Discards are reset, but their diff stays in the ledger.
    discards = ledger.trials(["discard"])
    assert discards and all(d.diff.startswith("diff --git") for d in discards)
    assert all(d.commit_sha not in [c.hexsha for c in repo.iter_commits()] for d in discards)


def test_journal_is_forced(tmp_path):
    steps = [
        edit("LR = 0.02", "LR = 0.04"),
        trial("raise the learning rate"),
        edit("WIDTH = 32", "WIDTH = 64"),          # refused: journal first
        trial("skip the journal"),                  # refused too
        {"tool": "write_journal", "input": {"hypothesis": "n/a", "change": "tbd", "interpretation": "ok",
                                            "next_step": "..."}},  # boilerplate: refused
        journal(1),
    ]
    sup, config, _ = scripted(tmp_path, steps)
    sup.run()
    lines = transcript(config)
    tool_lines = [x for x in lines if x["role"] == "tool"]
    refused = [x for x in tool_lines if x["refused"]]
    assert [x["tool"] for x in refused] == ["edit_file", "run_trial", "write_journal"]
    assert "write_journal" in refused[0]["text"] and "trial 1" in refused[0]["text"]
    assert "placeholder" in refused[2]["text"] or "too short" in refused[2]["text"]
    status = run_status(sup.ledger) if not sup._closed else None
    from supervisor.store.ledger import Ledger

    ledger = Ledger(config.run_dir / "ledger.sqlite")
    status = run_status(ledger)
    assert status["counts"]["refusals"] == 3
    assert status["trials"][0]["journal"] is True
    assert len(status["trials"]) == 1  # the refused run_trial never ran


def test_reflection_is_forced_and_plan_queue(tmp_path):
    steps = [trial("baseline"), journal(1),
             {"tool": "plan_add", "input": {"idea": "try sliding-window attention on half the layers"}},
             edit("LR = 0.02", "LR = 0.04"), trial("lr up"), journal(2),
             trial("no change, re-run"),  # refused: reflection due after 2 trials
             {"tool": "write_reflection", "input": {"load_bearing": "x", "dead_ends": "x", "retest": "x",
                                                    "plan": "x"}},  # boilerplate: refused
             reflection(1),
             {"tool": "plan_drop", "input": {"plan_id": 1, "reason": ""}},  # a reason is required
             {"tool": "plan_drop", "input": {"plan_id": 1, "reason": "windows hurt at this short sequence length"}},
             trial("after reflection"), journal(3)]
    sup, config, _ = scripted(tmp_path, steps, reflect_every=2)
    sup.run()
    tools = [x for x in transcript(config) if x["role"] == "tool"]
    refused = [(x["tool"], x["text"]) for x in tools if x["refused"]]
    assert refused[0][0] == "run_trial" and "reflection is due" in refused[0][1]
    assert refused[1][0] == "write_reflection"
    assert refused[2][0] == "plan_drop" or any(x["tool"] == "plan_drop" and not x["refused"] for x in tools)
    from supervisor.store.ledger import Ledger

    ledger = Ledger(config.run_dir / "ledger.sqlite")
    assert len(ledger.reflections()) == 1
    assert list(ledger.reflections()[0].triggers) == ["checkpoint: 2 trials done (a reflection every 2)"]
    plans = ledger.plans()
    assert plans[0].status == "dropped" and "windows hurt" in plans[0].reason
    assert len(ledger.finished_trials()) == 3
    assert "dropped: windows hurt" in (config.run_dir / "journal.md").read_text()


def test_an_optional_plan_link_never_stops_a_trial(tmp_path):
    """An unknown or dropped plan id is ignored (the trial runs, the agent is told); a tried plan is linked again
    as a re-test."""
    steps = [{"tool": "plan_add", "input": {"idea": "try a wider MLP at the same depth"}},
             {"tool": "plan_add", "input": {"idea": "try sliding-window attention on half the layers"}},
             {"tool": "plan_drop", "input": {"plan_id": 2, "reason": "windows hurt at this short sequence length"}},
             trial("baseline", plan_id=41), journal(1),
             edit("LR = 0.02", "LR = 0.04"), trial("wider mlp", plan_id=1), journal(2),
             trial("wider mlp again", plan_id=1), journal(3),
             trial("windows after all", plan_id=2), journal(4)]
    sup, config, _ = scripted(tmp_path, steps, reflect_every=50)
    sup.run()
    results = [x["text"] for x in transcript(config) if x["role"] == "tool" and x["tool"] == "run_trial"]
    assert len(results) == 4 and not any(x["refused"] for x in transcript(config) if x["role"] == "tool")
    assert results[0].startswith("note: plan #41 is not in the plan queue; the trial ran without a plan link")
    assert "val_bpb" in results[0]
    assert not results[1].startswith("note:")
    assert results[2].startswith("note: plan #1 was already tried in trial 2; this trial is linked to it as a "
                                 "re-test")
    assert results[3].startswith("note: plan #2 was dropped (windows hurt at this short sequence length)")
    from supervisor.store.ledger import Ledger

    ledger = Ledger(config.run_dir / "ledger.sqlite")
    trials = ledger.finished_trials()
    assert [t.plan_id for t in trials] == [None, 1, 1, None]
    plans = ledger.plans()
    assert plans[0].status == "tried" and plans[0].trial_id == 2  # the first try stays the plan's trial
    assert plans[1].status == "dropped"


def test_an_edit_left_by_a_failed_run_trial_is_named_and_can_be_reverted(tmp_path):
    from supervisor.run.context import turn_context

    steps = [trial("baseline"), journal(1), edit("LR = 0.02", "LR = 0.04"),
             {"tool": "run_trial", "input": {"description": "   "}},  # an error: the edit stays, uncommitted
             {"tool": "revert_edits", "input": {}}, {"tool": "revert_edits", "input": {}}]
    sup, config, _ = scripted(tmp_path, steps)
    seen: list[int] = []

    def after_failed_run(event) -> None:  # on the loop's thread, between the two calls
        if event.kind == ev.TOOL_RESULT and event.data["tool"] == "run_trial" and not event.data["ok"]:
            seen.append(turn_context(sup.config, sup.ledger, sup.executor, []).uncommitted_lines)

    sup.bus.subscribe(after_failed_run)
    sup.run()
    assert seen == [2]
    train = config.workspace / "trainer/train.py"
    assert "\nLR = 0.02" in train.read_text() and "\nLR = 0.04" not in train.read_text()
    results = [x["text"] for x in transcript(config) if x["role"] == "tool" and x["tool"] == "revert_edits"]
    assert results[0].startswith("reverted: trainer/train.py is back at the last keep") and "+LR = 0.04" in results[0]
    assert results[1].startswith("nothing to revert")


def test_edit_errors_come_back_to_the_agent(tmp_path):
    steps = [
        edit("LR = 0.5", "LR = 0.04"),                         # missing
        edit("=", "=="),                                       # ambiguous
        edit("# stand-in harness", "# hacked", path="trainer/prepare.py"),  # the harness
        edit("x", "y", path="../../etc/passwd"),               # outside the workspace
        {"tool": "edit_file", "input": {"path": "trainer/train.py", "search": "LR = 0.02"}},  # missing arg
        {"tool": "launch_rockets", "input": {}},               # unknown tool
        {"tool": "run_trail", "input": {"description": "typo"}},
    ]
    sup, config, _ = scripted(tmp_path, steps)
    sup.run()
    results = [x["text"] for x in transcript(config) if x["role"] == "tool"]
    assert "not found" in results[0].lower() and "LR = 0.02" in results[0]  # shows the nearest line
    assert "times" in results[1] or "ambiguous" in results[1].lower()
    assert "only trainer/train.py may be edited" in results[2] and "harness" in results[2]
    tools = [x for x in transcript(config) if x["role"] == "tool"]
    assert not tools[2]["refused"]  # an edit to the harness is the model's error to fix, not a refusal
    assert "outside" in results[3].lower() or "workspace" in results[3].lower()
    assert "missing required field(s): replace" in results[4]
    assert "unknown tool 'launch_rockets'" in results[5]
    assert "Did you mean 'run_trial'" in results[6]
    assert (config.workspace / "trainer/train.py").read_text().count("LR = 0.02") == 1


def test_crash_is_recorded_and_reverted(tmp_path):
    steps = [trial("baseline"), journal(1), edit('MODE = "ok"', 'MODE = "crash"'), trial("break it"), journal(2)]
    sup, config, rec = scripted(tmp_path, steps)
    sup.run()
    from supervisor.store.ledger import Ledger

    ledger = Ledger(config.run_dir / "ledger.sqlite")
    crash = ledger.trial(2)
    assert crash.status == "crash" and "illegal memory access" in crash.log_tail
    assert "RuntimeError" in (crash.crash_reason or "") or "exit" in (crash.crash_reason or "")
    assert 'MODE = "ok"' in (config.workspace / "trainer/train.py").read_text()
    assert git.Repo(config.workspace).head.commit.hexsha == ledger.trial(1).commit_sha
    row = (config.run_dir / "results.tsv").read_text().splitlines()[2].split("\t")
    assert row[1] == "0.000000" and row[3] == "crash"
    finished = rec.kinds(ev.TRIAL_FINISHED)
    assert [e.data["status"] for e in finished] == ["keep", "crash"]


def test_hang_is_killed_at_the_deadline(tmp_path):
    steps = [edit('MODE = "ok"', 'MODE = "hang"'), trial("hangs"), journal(1)]
    sup, config, _ = scripted(tmp_path, steps, budget_s=1.0, grace_s=2.0)
    start = time.monotonic()
    sup.run()
    assert time.monotonic() - start < 30
    from supervisor.store.ledger import Ledger

    t = Ledger(config.run_dir / "ledger.sqlite").trial(1)
    assert t.status == "crash" and "deadline" in (t.crash_reason or "")


def test_trial_environment_has_no_secrets(tmp_path, monkeypatch):
    monkeypatch.setenv("ANTHROPIC_API_KEY", "sk-ant-secret-for-test")
    monkeypatch.setenv("OPENAI_API_KEY", "sk-openai-secret-for-test")
    monkeypatch.setenv("HF_TOKEN", "hf-secret")
    sup, config, _ = scripted(tmp_path, [trial("baseline"), journal(1)])
    sup.run()
    env = json.loads((config.run_dir / "exchange/metrics.jsonl.env.json").read_text())  # the trial wrote it there
    assert not any(v in ("sk-ant-secret-for-test", "sk-openai-secret-for-test", "hf-secret") for v in env.values())
    assert "ANTHROPIC_API_KEY" not in env and "OPENAI_API_KEY" not in env and "HF_TOKEN" not in env
    assert env["AUTORESEARCH_TIME_BUDGET"].startswith("5") and env["AUTORESEARCH_SEED"] == "42"
    # Nor does any key reach the journal files.
    for name in ("journal.md", "results.tsv", "transcript.jsonl"):
        assert "-secret" not in (config.run_dir / name).read_text()


def test_changed_harness_stops_the_trial(tmp_path):
    def agent(ctx, n):
        if n == 1:
            # Something (a person, a stray tool) changes the harness behind the loop's back.
            with open(config.workspace / "trainer/prepare.py", "a") as fh:
                fh.write("\nEVIL = True\n")
            return [trial("after tampering")]
        return None

    config = fake_config(tmp_path)
    sup = Supervisor(config, CallbackAgent(agent))
    sup.run()
    results = [x for x in transcript(config) if x["role"] == "tool"]
    assert results[0]["refused"] and "harness" in results[0]["text"] and "restored" in results[0]["text"]
    assert "EVIL" not in (config.workspace / "trainer/prepare.py").read_text()


@pytest.mark.parametrize("sandbox", ["auto", "off"])
def test_harness_changed_during_the_trial_is_a_crash(tmp_path, sandbox):
    steps = [edit('MODE = "ok"', 'MODE = "tamper"'), trial("rewrites the harness"), journal(1)]
    sup, config, _ = scripted(tmp_path, steps, sandbox=sandbox)
    sup.run()
    from supervisor.store.ledger import Ledger

    t = Ledger(config.run_dir / "ledger.sqlite").trial(1)
    if sup.executor.setup.choice.active:  # the sandbox does not even let it write
        assert t.status == "crash" and "Read-only file system" in t.decision
    else:  # unsandboxed: the change is seen after the trial, the harness restored, the number void
        assert t.status == "crash" and "harness changed" in t.decision
    assert "rewrote the harness" not in (config.workspace / "trainer/prepare.py").read_text()


def test_second_supervisor_is_refused(tmp_path):
    config = fake_config(tmp_path)
    first = Supervisor(config, OfflineAgent())
    try:
        with pytest.raises(RunLocked, match="already being supervised"):
            Supervisor(fake_config(tmp_path), OfflineAgent(), resume=True)
    finally:
        first.close()
    with pytest.raises(SupervisorError, match="--resume"):
        Supervisor(fake_config(tmp_path), OfflineAgent())


def test_controls_from_another_process_via_the_ledger(tmp_path):
    """pause, steer, resume and stop sent through the commands table (as `autoresearch control` does)."""
    from supervisor.store.ledger import Ledger

    config = fake_config(tmp_path, max_trials=50)
    sup = Supervisor(config, OfflineAgent())
    rec = Recorder()
    sup.bus.subscribe(rec)
    thread = threading.Thread(target=sup.run)
    thread.start()
    other = Ledger(config.run_dir / "ledger.sqlite")  # a second connection, as another process has
    try:
        deadline = time.monotonic() + 30
        while not rec.kinds(ev.JOURNAL) and time.monotonic() < deadline:
            time.sleep(0.05)
        other.send_command("pause")
        while other.run_row().state != "paused" and time.monotonic() < deadline:
            time.sleep(0.05)
        assert other.run_row().state == "paused"
        trials_when_paused = len(other.finished_trials())
        other.send_command("steer", "stop tuning learning rates, try the width")
        time.sleep(1.5)
        assert len(other.finished_trials()) == trials_when_paused  # nothing ran while paused
        other.send_command("resume")
        while not other.steering()[0].delivered and time.monotonic() < deadline:
            time.sleep(0.05)
        other.send_command("stop")
        thread.join(timeout=30)
        assert not thread.is_alive()
        assert other.run_row().state == "stopped"
        assert other.steering()[0].delivered_turn is not None
        assert "stop tuning learning rates" in (config.run_dir / "journal.md").read_text()
    finally:
        sup.stop()
        thread.join(timeout=30)
        other.close()


def test_stop_the_current_trial(tmp_path):
    steps = [edit('MODE = "ok"', 'MODE = "hang"'), trial("long"), trial("baseline again"), journal(1)]
    sup, config, rec = scripted(tmp_path, steps, budget_s=60, grace_s=60)
    threading.Thread(target=lambda: (_wait_for(rec, ev.METRIC), sup.stop_trial()), daemon=True).start()
    sup.run()
    from supervisor.store.ledger import Ledger

    ledger = Ledger(config.run_dir / "ledger.sqlite")
    first = ledger.trial(1)
    assert first.status == "aborted" and first.crash_reason == "stopped by the person"
    assert ledger.trial(2).status == "keep"  # the loop went on, from a reverted script
    assert 'MODE = "ok"' in ledger.trial(2).diff or ledger.trial(2).diff == ""
    assert "long" not in (config.run_dir / "results.tsv").read_text()


def _wait_for(rec, kind, timeout=30):
    deadline = time.monotonic() + timeout
    while not rec.kinds(kind) and time.monotonic() < deadline:
        time.sleep(0.02)


def test_noise_floor_and_flag_policy(tmp_path):
    # NOISE_SD 0.01 on the stand-in; WIDTH 32 -> 36 gains about 0.0003, far under a floor of ~0.02.
    measured = []

    def agent(ctx, n):
        if ctx.obligation == "journal":
            return [journal(n)]
        if ctx.obligation == "reflection":
            return [reflection(n)]
        if ctx.trials_done == 0:
            return [edit("NOISE_SD = 0.0", "NOISE_SD = 0.01"), trial("baseline with noise")]
        if ctx.trials_done == 1:
            if not measured:
                measured.append(sup.measure_noise(4))
                return AgentTurn(text="measured the noise")  # the trigger asks for a reflection first
            return [edit("WIDTH = 32", "WIDTH = 36"), trial("width up a little")]
        return None

    config = fake_config(tmp_path)
    sup = Supervisor(config, CallbackAgent(agent))
    sup.run()
    from supervisor.store.ledger import Ledger

    ledger = Ledger(config.run_dir / "ledger.sqlite")
    noise = ledger.latest_noise()
    assert len(noise.values) == 4 and noise.sd > 0.002
    status = run_status(ledger)
    assert status["noise_floor"] == pytest.approx(2 * noise.sd)
    second = ledger.trial(2)
    if second.status == "keep":  # noise may make it worse; when kept it must be flagged
        assert second.flagged and status["flagged"][0]["id"] == 2
    assert any(t.startswith("noise:") for r in ledger.reflections() for t in r.triggers)


def test_confirm_policy_reruns_with_new_seeds(tmp_path):
    def agent(ctx, n):
        if ctx.obligation == "journal":
            return [journal(n)]
        if ctx.obligation == "reflection":
            return [reflection(n)]
        if ctx.trials_done == 0:
            return [trial("baseline")]
        if ctx.trials_done == 1:
            return [edit("WIDTH = 32", "WIDTH = 33"), trial("a sub-floor change")]
        return None

    config = fake_config(tmp_path, policy="confirm", confirm_seeds=2)
    sup = Supervisor(config, CallbackAgent(agent))
    sup.ledger.add_noise(commit_sha="0" * 40, budget_s=5.0, platform="test", values=[1.5, 1.51], sd=0.007,
                         factor=2.0)
    sup.run()
    from supervisor.store.ledger import Ledger

    t = Ledger(config.run_dir / "ledger.sqlite").trial(2)
    assert len(t.extra_values) == 2          # two confirmation runs with new seeds
    assert t.status == "keep"                # no noise on the stand-in: the small gain holds up
    assert t.flagged                         # ...but it is still under the floor
    assert (config.run_dir / "trials/0002-seed1/log.txt").exists()


def test_strict_policy_discards_sub_floor_gain(tmp_path):
    def agent(ctx, n):
        if ctx.obligation == "journal":
            return [journal(n)]
        if ctx.trials_done == 0:
            return [trial("baseline")]
        if ctx.trials_done == 1:
            return [edit("WIDTH = 32", "WIDTH = 33"), trial("a sub-floor change")]
        return None

    config = fake_config(tmp_path, policy="strict")
    sup = Supervisor(config, CallbackAgent(agent))
    sup.ledger.add_noise(commit_sha="0" * 40, budget_s=5.0, platform="test", values=[1.5, 1.51], sd=0.007,
                         factor=2.0)
    sup.run()
    from supervisor.store.ledger import Ledger

    ledger = Ledger(config.run_dir / "ledger.sqlite")
    assert ledger.trial(2).status == "discard" and "floor" in ledger.trial(2).decision
    assert "WIDTH = 32" in (config.workspace / "trainer/train.py").read_text()


def test_turn_context_is_built_from_durable_state(tmp_path):
    seen = []

    def agent(ctx, n):
        seen.append(ctx)
        if n == 1:
            return [trial("baseline")]
        if n == 2:
            return [journal(1)]
        return None

    config = fake_config(tmp_path)
    sup = Supervisor(config, CallbackAgent(agent))
    sup.run()
    assert seen[0].obligation is None and seen[0].results == []
    assert "LR = 0.02" in seen[0].train_py and seen[0].tools
    assert seen[1].obligation == "journal" and seen[1].pending_trial["id"] == 1
    assert seen[1].last_outcomes[0].tool == "run_trial" and "KEEP" in seen[1].last_outcomes[0].content
    assert "baseline" in seen[2].results[0]["description"] and seen[2].recent_journal


def test_resume_after_a_clean_stop_goes_on(tmp_path):
    config = fake_config(tmp_path, max_trials=2)
    Supervisor(config, OfflineAgent()).run()
    config2 = fake_config(tmp_path, max_trials=4)
    sup = Supervisor(config2, OfflineAgent(), resume=True)
    assert sup.run() == "finished"
    from supervisor.store.ledger import Ledger

    ledger = Ledger(config.run_dir / "ledger.sqlite")
    assert len(ledger.finished_trials()) == 4
    assert len((config.run_dir / "results.tsv").read_text().splitlines()) == 5
    descriptions = [t.description for t in ledger.finished_trials()]
    assert len(set(descriptions)) == 4  # the offline search did not repeat itself after the resume


def test_budget_change_on_resume_triggers_reflection(tmp_path):
    Supervisor(fake_config(tmp_path, max_trials=1), OfflineAgent()).run()
    sup = Supervisor(fake_config(tmp_path, max_trials=2, budget_s=7.0), OfflineAgent(), resume=True)
    kind, message = sup.obligation()
    assert kind == "reflection" and "budget changed from 5s to 7s" in message
    sup.close()


def test_status_json_fields(tmp_path):
    config = fake_config(tmp_path, max_trials=2)
    Supervisor(config, OfflineAgent()).run()
    from supervisor.store.ledger import Ledger

    status = run_status(Ledger(config.run_dir / "ledger.sqlite"), config.run_dir / "run.lock")
    for key in ("tag", "state", "workspace", "journal_dir", "budget_s", "noise_floor", "policy", "trials",
                "reflections", "plans", "counts"):
        assert key in status
    t = status["trials"][1]
    for key in ("id", "commit", "parent_commit", "description", "status", "val_bpb", "delta", "flagged",
                "journal", "training_seconds", "num_steps", "mfu_percent", "peak_vram_mb"):
        assert key in t
    assert t["parent_commit"] == status["trials"][0]["commit"]
    assert status["state"] == "finished" and status["counts"]["refusals"] == 0
    assert os.path.isdir(status["workspace"])


def test_crash_streak_and_plateau_trigger_reflections(tmp_path):
    seen = []

    def agent(ctx, n):
        seen.append((ctx.obligation, ctx.obligation_message))
        if ctx.obligation == "journal":
            return [journal(n)]
        if ctx.obligation == "reflection":
            return [reflection(n)]
        if ctx.trials_done == 0:
            return [edit('MODE = "ok"', 'MODE = "crash"'), trial("crash 1")]
        if ctx.trials_done in (1, 2):
            return [trial(f"crash {ctx.trials_done + 1}")]  # the crash is reverted: re-break it
        if ctx.trials_done < 6:
            return [trial(f"same code again {ctx.trials_done}")]  # ties with the baseline: discards
        return None

    def breaking_agent(ctx, n):
        if ctx.obligation is None and 1 <= ctx.trials_done <= 2:  # the same crash again: a deliberate re-test
            return [edit('MODE = "ok"', 'MODE = "crash"'), trial(f"crash {ctx.trials_done + 1}",
                                                                  retest_of=ctx.trials_done)]
        return agent(ctx, n)

    config = fake_config(tmp_path, reflect_every=100, plateau_trials=2)
    Supervisor(config, CallbackAgent(breaking_agent)).run()
    from supervisor.store.ledger import Ledger

    ledger = Ledger(config.run_dir / "ledger.sqlite")
    triggers = [t for r in ledger.reflections() for t in r.triggers]
    assert any(t.startswith("crashes: 3 crashes in a row") for t in triggers)
    assert any(t.startswith("plateau: 2 trials in a row without a keep") for t in triggers)
    assert [t.status for t in ledger.finished_trials()][:3] == ["crash", "crash", "crash"]
