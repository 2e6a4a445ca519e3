"""Helpers for the LLM agent tests: agents pointed at the loopback server, scripted cycles, key checks."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from supervisor.agents import anthropic_agent, openai_agent
from supervisor.agents.llm import LLMAgent
from supervisor.run.loop import Supervisor
from tests.llm_server import LLMServer, Reply, ToolUse
from tests.loop_support import journal, reflection

# Long and random-looking on purpose, so a partial echo of it would be caught as well.
SECRET = "sk-ant-api03-LOOPBACK7q2Xv9Kd3mZp8Wn4Rt6Yb1Hc5Jf0Lg"
KEY_VARIABLES = {"anthropic": "ANTHROPIC_API_KEY", "openai": "OPENAI_API_KEY"}
MODELS = {"anthropic": "claude-sonnet-5-5", "openai": "gpt-5.4"}
PROVIDERS = ("anthropic", "openai")


def base_url(provider: str, server: LLMServer) -> str:
    return server.url if provider == "anthropic" else server.openai_url


def llm_agent(provider: str, server: LLMServer, **options: Any) -> LLMAgent:
    """The real agent, through the real SDK, talking to the loopback server (keys from the environment)."""
    options.setdefault("timeout_s", 5.0)
    options.setdefault("max_retries", 2)
    price = options.pop("price", None)
    model = options.pop("model", MODELS[provider])
    module = anthropic_agent if provider == "anthropic" else openai_agent
    return module.create_agent(model, base_url(provider, server), price, **options)


def use(provider: str, name: str, arguments: dict[str, Any] | str, call_id: str | None = None) -> ToolUse:
    return ToolUse(name, arguments, id=call_id)


def cycle_script() -> list[Reply]:
    """A whole trial cycle as a model would do it: read, edit and run, journal, reflection."""
    return [
        Reply("I'll read the training script first.", [ToolUse("read_file", {"path": "trainer/train.py"})]),
        Reply("The learning rate looks low for this width; doubling it.", [
            ToolUse("edit_file", {"path": "trainer/train.py", "search": "LR = 0.02", "replace": "LR = 0.04"}),
            ToolUse("run_trial", {"description": "double the learning rate to 0.04", "category": "learning_rate"}),
        ]),
        Reply("Recording the result.", [ToolUse("write_journal", journal(1)["input"])]),
        Reply("Stepping back.", [ToolUse("write_reflection", reflection(1)["input"])]),
    ]


def read_reply(n: int = 0) -> Reply:
    return Reply(f"Reading the harness ({n}).", [ToolUse("read_file", {"path": "trainer/prepare.py"})])


def files_containing(root: Path, needle: str) -> list[Path]:
    """Every file under root whose bytes contain needle (the ledger, logs, git objects included)."""
    data = needle.encode()
    return [p for p in sorted(Path(root).rglob("*")) if p.is_file() and data in p.read_bytes()]


def run_in_thread(sup: Supervisor) -> tuple[threading.Thread, dict[str, Any]]:
    result: dict[str, Any] = {}

    def target() -> None:
        try:
            result["end"] = sup.run()
        except BaseException as exc:
            result["error"] = exc

    thread = threading.Thread(target=target, name="supervisor", daemon=True)
    thread.start()
    return thread, result


def wait_until(predicate: Callable[[], bool], timeout: float = 20.0, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.02)
    raise AssertionError(f"timed out waiting for {what}")


# ---- a long run, built straight into the ledger (for measuring the prompt at trial 100) -------------------------
IDEAS = [
    ("learning_rate", "raise the matrix (Muon) learning rate from {a} to {b}"),
    ("learning_rate", "lower the embedding AdamW learning rate from {a} to {b}"),
    ("schedule", "lengthen the warmdown fraction from {a} to {b} of the budget"),
    ("architecture", "trade depth for width: {a} layers instead of {b} at equal parameters"),
    ("attention", "sliding-window attention of {a} tokens on every other layer instead of {b}"),
    ("optimizer", "Muon momentum {a} instead of {b}, with Nesterov"),
    ("batch_size", "total batch of {a}K tokens instead of {b}K"),
    ("regularisation", "weight decay {a} on matrices instead of {b}"),
    ("efficiency", "fuse the QKV projection and drop one transpose ({a} -> {b} kernels)"),
    ("initialisation", "zero-init the output projections ({a} instead of {b} std)"),
]


def synthetic_run(root: Path, trials: int, seed: int = 0) -> Supervisor:
    """A run of `trials` finished trials with journal entries, reflections every 10, plans and the turns a
    model would have made, written straight into a real ledger over a real workspace of our trainer.

    Numbers and texts are drawn to look like a real night (about 15% keeps, 5% crashes, journal fields of
    a few sentences); nothing is trained. The caller closes the returned supervisor.
    """
    import random

    from supervisor.agents.offline import OfflineAgent
    from supervisor.core.config import PROJECT_ROOT, RunConfig

    rng = random.Random(seed)
    config = RunConfig(tag="measure", journals_root=root / "journals", cache_dir=root / "cache", budget_s=300.0,
                       source_dir=PROJECT_ROOT, max_trials=None)
    sup = Supervisor(config, OfflineAgent())
    ledger, head = sup.ledger, sup.workspace.head()
    best_id, best_val = None, 1.2000
    sentence = ("the change moves val_bpb by less than the measured noise floor, so one run says little, "
                "but throughput moved the other way and that is the part worth following up")
    for i in range(1, trials + 1):
        category, pattern = IDEAS[rng.randrange(len(IDEAS))]
        description = pattern.format(a=rng.choice([2, 4, 8, 0.03, 0.05]), b=rng.choice([1, 3, 6, 0.02, 0.04]))
        diff = (f"--- a/trainer/train.py\n+++ b/trainer/train.py\n@@ -{100 + i},3 +{100 + i},3 @@\n"
                f"-OLD_{i} = 1\n+OLD_{i} = 2\n")
        tid = ledger.start_trial(commit_sha=head, parent_commit=head, parent_trial=best_id, description=description,
                                 category=category, plan_id=None, diff=diff, budget_s=300.0,
                                 platform={"gpu": "NVIDIA H100 80GB HBM3", "torch": "2.13.0"}, seed=42)
        roll = rng.random()
        numbers = {"num_steps": rng.randint(900, 1100), "tokens_per_s": rng.uniform(4.0e5, 5.0e5),
                   "mfu_percent": rng.uniform(38, 46), "peak_vram_mb": rng.uniform(30000, 42000),
                   "training_seconds": 300.0}
        if i == 1:
            status, val, delta, decision = "keep", best_val, None, "no parent to compare against: kept as the baseline"
        elif roll < 0.05:
            status, val, delta, decision = "crash", None, None, "crashed: out of memory"
            numbers = {"crash_reason": "CUDA out of memory (exit 1)", "log_tail": "torch.OutOfMemoryError: ..." * 20}
        elif roll < 0.20:
            val = best_val - rng.uniform(0.0005, 0.01)
            status, delta, decision = "keep", val - best_val, "gain above the noise floor: kept"
        else:
            val = best_val + rng.uniform(-0.0008, 0.02)
            status, delta, decision = "discard", val - best_val, "no gain over the parent: discarded"
        ledger.finish_trial(tid, status=status, val_bpb=val, parent_val_bpb=None if i == 1 else best_val,
                            delta=delta, flagged=status == "keep" and delta is not None and delta > -0.002,
                            decision=decision, **numbers)
        ledger.add_turn("agent", f"Trying: {description}.", usage={"input_tokens": 9000, "output_tokens": 400})
        ledger.add_turn("tool", f"edited trainer/train.py (lines {100 + i}-{100 + i}):\n{diff}", tool="edit_file",
                        input={"path": "trainer/train.py", "search": f"OLD_{i} = 1", "replace": f"OLD_{i} = 2"})
        ledger.add_turn("tool", f"trial {tid} finished: {status.upper()}\ndecision: {decision}\nval_bpb "
                        f"{val or 0:.6f}; steps 1000; tokens/s 450,000; MFU 42%\n" + sentence,
                        tool="run_trial", input={"description": description, "category": category})
        if status == "keep" and val is not None:
            best_id, best_val = tid, val
        fields = {
            "hypothesis": f"Trial {i}: {description} should help because {sentence}.",
            "change": f"One change in trainer/train.py: {description}; nothing else moved.",
            "result": f"{status}. val_bpb {val or 0:.6f}; steps, tokens/s and MFU recorded; decision: {decision}",
            "interpretation": f"Read against the noise floor, {sentence}. The throughput delta explains most of it.",
            "next_step": f"Follow up on {category} with a larger step, then return to the plan queue ({i}).",
        }
        ledger.add_journal(tid, **fields)
        ledger.add_turn("agent", f"Journal entry for trial {tid}.", usage={"input_tokens": 9500, "output_tokens": 300})
        ledger.add_turn("tool", f"journal entry for trial {tid} recorded.", tool="write_journal",
                        input={k: fields[k] for k in ("hypothesis", "change", "interpretation", "next_step")})
        if i % 10 == 0:
            ledger.add_trigger("checkpoint", f"{i} trials done (a reflection every 10)")
            text = {k: f"After {i} trials: {sentence}; {sentence}." for k in
                    ("load_bearing", "dead_ends", "retest", "plan")}
            ledger.add_reflection(after_trial=tid, **text)
            ledger.add_turn("agent", "Reflection.", usage={"input_tokens": 9800, "output_tokens": 900})
            ledger.add_turn("tool", "reflection recorded.", tool="write_reflection", input=text)
        if i % 8 == 0:
            plan = ledger.add_plan(f"idea {i}: try a value-embedding skip from layer 0 ({category})",
                                   "it helped in the speedrun at this scale")
            if i % 24 == 0:
                ledger.drop_plan(plan, "the attention change made it moot: memory is now the bottleneck")
    sup.files.render_all()
    return sup


def typical_prompt(sup: Supervisor):
    """The prompt of a proposal turn right after a journal entry: the most common kind of turn."""
    from supervisor.agents.base import ToolCall, ToolOutcome
    from supervisor.agents.llm import PriorTurn, build_prompt

    ctx = sup.build_context()
    last = ctx.recent_journal[-1] if ctx.recent_journal else None
    if last is None:
        return build_prompt(ctx)
    fields = ("hypothesis", "change", "interpretation", "next_step")
    call = ToolCall("write_journal", {k: getattr(last, k) for k in fields}, id="call_journal")
    outcome = ToolOutcome("write_journal", True, f"journal entry for trial {last.trial_id} recorded.",
                          call_id="call_journal")
    ctx.last_outcomes = [outcome]
    return build_prompt(ctx, PriorTurn(f"Journal entry for trial {last.trial_id}.", [call], [outcome]))


def naive_chat_chars(sup: Supervisor, prompt) -> int:
    """What an ever-growing chat would carry instead: the stable prefix, the script once, every turn since."""
    sections = prompt.sections()
    total = sum(len(sections[k]) for k in ("system", "tools", "program", "code"))
    for turn in sup.ledger.turns():
        total += len(turn.text or "") + len(json.dumps(turn.input) if turn.input else "")
    return total
