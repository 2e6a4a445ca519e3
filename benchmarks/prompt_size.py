"""How big one agent turn is at trial 1 and at trial 100, against an ever-growing chat.

    python benchmarks/prompt_size.py                   # estimated tokens (4 characters per token)
    python benchmarks/prompt_size.py --trials 1 10 100 --exact    # exact counts from Anthropic's
                                                                  # count_tokens (needs ANTHROPIC_API_KEY)

Each run is built straight into a real ledger over a real workspace of this project's trainer
(tests/agents_support.synthetic_run: about 15% keeps, 5% crashes, a journal entry per trial, a reflection
every 10, plans), then the prompt of a typical turn (proposing the next experiment right after a journal
entry) is built exactly as `--agent anthropic|openai` builds it. The run is given what a real one has
besides: a prepared cache's manifest (the full profile), a noise measurement of two seeds with their steps,
and trainer summaries (tokens per step) on every trial. The baseline, measured on the same run,
is what an ever-growing chat would carry instead: the same stable prefix and script, plus every agent
message, tool call and tool result since the start.

The dollar column prices one turn with Claude Sonnet 5.5 (pricing.PRICES), assuming the cached prefix
(system, tools, program.md) and the script are read from Anthropic's prompt cache, as they are on every
turn but the first after a change.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from supervisor.agents.llm import estimate_tokens  # noqa: E402
from supervisor.core.pricing import PRICES  # noqa: E402
from tests.agents_support import naive_chat_chars, synthetic_run, typical_prompt  # noqa: E402

MODEL = "claude-sonnet-5-5"
FULL_MANIFEST = {"version": 1, "profile": "full", "max_seq_len": 2048, "vocab_size": 8192,
                 "eval_tokens": 20 * 2**19, "num_train_tokens": 3_900_000_000}
TOKENS_PER_STEP = 524_288


def add_situation(sup) -> None:
    """What a real run has and synthetic_run leaves out: the cache manifest, a noise measurement (two seeds,
    their steps in noise/progress.json) and each trial's summary, from which tokens per step is read."""
    cache = sup.config.cache_dir
    cache.mkdir(parents=True, exist_ok=True)
    (cache / "manifest.json").write_text(json.dumps(FULL_MANIFEST))
    ledger = sup.ledger
    for trial in ledger.finished_trials():
        if trial.num_steps:
            total_m = trial.num_steps * TOKENS_PER_STEP / 1e6
            ledger.finish_trial(trial.id, summary={"num_steps": str(trial.num_steps),
                                                   "total_tokens_M": f"{total_m:.3f}"})
    best = ledger.best_keep()
    commit = best.commit_sha if best is not None else sup.workspace.head()
    values = [1.2001, 1.2043]
    ledger.add_noise(commit_sha=commit, budget_s=sup.config.budget_s, values=values, sd=0.00297, factor=2.0,
                     platform="NVIDIA H100 80GB HBM3, torch 2.13.0")
    progress = {"commit": commit, "repeats": 2, "budget_s": sup.config.budget_s,
                "seeds": [{"index": i + 1, "seed": 2000 + i, "status": "ok", "val_bpb": v, "num_steps": steps}
                          for i, (v, steps) in enumerate(zip(values, (1012, 968), strict=True))]}
    sup.paths.noise_progress.parent.mkdir(parents=True, exist_ok=True)
    sup.paths.noise_progress.write_text(json.dumps(progress))


def exact_tokens(prompt) -> dict[str, int] | None:
    """Exact input tokens from Anthropic's count_tokens endpoint, for the whole request and the cached part."""
    if not os.environ.get("ANTHROPIC_API_KEY"):
        return None
    from supervisor.agents.anthropic_agent import AnthropicAdapter

    adapter = AnthropicAdapter(MODEL)
    request = adapter.request(prompt)
    whole = adapter.client.messages.count_tokens(model=MODEL, system=request["system"], tools=request["tools"],
                                                 messages=request["messages"]).input_tokens
    prefix = adapter.client.messages.count_tokens(model=MODEL, system=request["system"], tools=request["tools"],
                                                  messages=[{"role": "user", "content": "x"}]).input_tokens
    adapter.close()
    return {"total": whole, "prefix": prefix}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, nargs="+", default=[1, 100])
    parser.add_argument("--exact", action="store_true", help="count with the Anthropic API (needs a key)")
    args = parser.parse_args(argv)
    price = PRICES[MODEL]
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for n in args.trials:
            sup = synthetic_run(Path(tmp) / f"run{n}", n)
            try:
                add_situation(sup)
                prompt = typical_prompt(sup)
                chat = naive_chat_chars(sup, prompt)
            finally:
                sup.close()
            s = {k: estimate_tokens(v) for k, v in prompt.sections().items()}
            # No machine block before issue 16: an older tree measured with this script has none.
            prefix = s["system"] + s["tools"] + s["program"] + s.get("machine", 0)
            fresh = s["previous"] + s["state"]
            total = prefix + s["code"] + fresh
            exact = exact_tokens(prompt) if args.exact else None
            cost = price.cost({"cache_read_tokens": prefix + s["code"], "input_tokens": fresh,
                               "output_tokens": 400})
            rows.append((n, prefix, s["code"], s["previous"], s["state"], total, exact, (chat + 3) // 4,
                         cost))
    print(f"tokens per turn ({'exact: Anthropic count_tokens' if args.exact else 'estimated: 4 characters per token'})")
    print()
    print("| trials done | cached prefix (system, tools, program.md, machine) | train.py | previous reply "
          "| run state "
          "| turn total | ever-growing chat (baseline) | $ per turn, Sonnet 5.5, cache hit, 400 out |")
    print("|---|---|---|---|---|---|---|---|")
    for n, prefix, code, previous, state, total, exact, chat, cost in rows:
        total_text = f"{total:,}" if exact is None else f"{exact['total']:,} (est. {total:,})"
        prefix_text = f"{prefix:,}" if exact is None else f"{exact['prefix']:,} (est. {prefix:,})"
        print(f"| {n} | {prefix_text} | {code:,} | {previous:,} | {state:,} | {total_text} | {chat:,} | "
              f"{cost:.4f} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
