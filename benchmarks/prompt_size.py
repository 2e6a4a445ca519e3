"""How big one agent turn is at trial 1 and at trial 100, against an ever-growing chat.

    python benchmarks/prompt_size.py                   # estimated tokens (4 characters per token)
    python benchmarks/prompt_size.py --trials 1 10 100 --exact    # exact counts from Anthropic's
                                                                  # count_tokens (needs ANTHROPIC_API_KEY)

Each run is built straight into a real ledger over a real workspace of this project's trainer
(tests/agents_support.synthetic_run: about 15% keeps, 5% crashes, a journal entry per trial, a reflection
every 10, plans), then the prompt of a typical turn (proposing the next experiment right after a journal
entry) is built exactly as `--agent anthropic|openai` builds it. The baseline, measured on the same run,
is what an ever-growing chat would carry instead: the same stable prefix and script, plus every agent
message, tool call and tool result since the start.

The dollar column prices one turn with Claude Sonnet 5.5 (pricing.PRICES), assuming the cached prefix
(system, tools, program.md) and the script are read from Anthropic's prompt cache, as they are on every
turn but the first after a change.
"""

from __future__ import annotations

import argparse
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
                prompt = typical_prompt(sup)
                chat = naive_chat_chars(sup, prompt)
            finally:
                sup.close()
            s = {k: estimate_tokens(v) for k, v in prompt.sections().items()}
            prefix = s["system"] + s["tools"] + s["program"]
            fresh = s["previous"] + s["state"]
            total = prefix + s["code"] + fresh
            exact = exact_tokens(prompt) if args.exact else None
            cost = price.cost({"cache_read_tokens": prefix + s["code"], "input_tokens": fresh,
                               "output_tokens": 400})
            rows.append((n, prefix, s["code"], s["previous"], s["state"], total, exact, (chat + 3) // 4,
                         cost))
    print(f"tokens per turn ({'exact: Anthropic count_tokens' if args.exact else 'estimated: 4 characters per token'})")
    print()
    print("| trials done | cached prefix (system, tools, program.md) | train.py | previous reply | run state "
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
