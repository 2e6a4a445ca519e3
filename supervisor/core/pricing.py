"""What a model's tokens cost: a price table for the common models, and running totals.

Prices are US dollars per million tokens, as published by Anthropic and OpenAI (see PRICES_AS_OF). A model
that is not in the table counts tokens only (its cost is None) unless the person gives its price with
`--price IN,OUT[,CACHE_READ,CACHE_WRITE]`. Token counts are normalised across providers:

- `input_tokens`: prompt tokens billed at the full input price (not read from or written to a cache);
- `cache_read_tokens`: prompt tokens served from the provider's prompt cache (cheap);
- `cache_write_tokens`: prompt tokens written to the cache (Anthropic bills them a little above input);
- `output_tokens`: generated tokens.

OpenAI reports `prompt_tokens` including the cached ones; the adapter subtracts them, so the four numbers
never overlap and a turn's prompt size is the sum of the first three.
"""

from __future__ import annotations

import math
import re
from dataclasses import asdict, dataclass
from typing import Any

PRICES_AS_OF = "2026-11"


@dataclass(frozen=True)
class Price:
    """US dollars per million tokens."""

    input: float
    output: float
    cache_read: float
    cache_write: float

    def cost(self, usage: dict[str, Any]) -> float:
        return (self.input * _count(usage, "input_tokens") + self.output * _count(usage, "output_tokens")
                + self.cache_read * _count(usage, "cache_read_tokens")
                + self.cache_write * _count(usage, "cache_write_tokens")) / 1e6


def _openai(inp: float, out: float, cached: float) -> Price:
    # OpenAI's automatic caching: no surcharge for writing, a discount for reading.
    return Price(inp, out, cached, inp)


# Anthropic: input, output, cache read, 5-minute cache write (the TTL the adapter uses).
_OPUS_45 = Price(5.0, 25.0, 0.50, 6.25)
_SONNET_4 = Price(3.0, 15.0, 0.30, 3.75)
PRICES: dict[str, Price] = {
    "claude-fable-5-1": Price(10.0, 50.0, 0.25, 12.50),
    "claude-mythos-5-1": Price(10.0, 50.0, 0.25, 12.50),
    "claude-fable-5": Price(10.0, 50.0, 1.00, 12.50),
    "claude-mythos-5": Price(10.0, 50.0, 1.00, 12.50),
    "claude-opus-5-5": Price(4.0, 20.0, 0.20, 5.00),
    "claude-opus-5": _OPUS_45,
    "claude-opus-4-8": _OPUS_45,
    "claude-opus-4-7": _OPUS_45,
    "claude-opus-4-6": _OPUS_45,
    "claude-opus-4-5": _OPUS_45,
    "claude-opus-4-1": Price(15.0, 75.0, 1.50, 18.75),
    "claude-opus-4": Price(15.0, 75.0, 1.50, 18.75),
    "claude-sonnet-5-5": Price(2.0, 10.0, 0.10, 2.50),
    "claude-sonnet-5": Price(2.0, 10.0, 0.20, 2.50),
    "claude-sonnet-4-6": _SONNET_4,
    "claude-sonnet-4-5": _SONNET_4,
    "claude-sonnet-4": _SONNET_4,
    # Haiku 5.5 costs five times more for prompts over 100k tokens; a turn here is far below that.
    "claude-haiku-5-5": Price(0.10, 0.50, 0.01, 0.125),
    "claude-haiku-4-5": Price(1.0, 5.0, 0.10, 1.25),
    "claude-3-5-haiku": Price(0.80, 4.0, 0.08, 1.00),
    "claude-3-haiku": Price(0.25, 1.25, 0.03, 0.30),
    # OpenAI: input, output, cached input.
    "gpt-5.5": _openai(5.0, 30.0, 0.50),
    "gpt-5.4": _openai(2.50, 15.0, 0.25),
    "gpt-5.4-mini": _openai(0.75, 4.50, 0.075),
    "gpt-5.2": _openai(1.75, 14.0, 0.175),
    "gpt-5.1": _openai(1.25, 10.0, 0.125),
    "gpt-5": _openai(1.25, 10.0, 0.125),
    "gpt-5-mini": _openai(0.25, 2.0, 0.025),
    "gpt-5-nano": _openai(0.05, 0.40, 0.005),
    "gpt-4.1": _openai(2.0, 8.0, 0.50),
    "gpt-4.1-mini": _openai(0.40, 1.60, 0.10),
    "gpt-4.1-nano": _openai(0.10, 0.40, 0.025),
    "gpt-4o": _openai(2.50, 10.0, 1.25),
    "gpt-4o-mini": _openai(0.15, 0.60, 0.075),
    "o3": _openai(2.0, 8.0, 0.50),
    "o4-mini": _openai(1.10, 4.40, 0.275),
}

ALIASES = {"claude-opus-4-0": "claude-opus-4", "claude-sonnet-4-0": "claude-sonnet-4"}
_DATE_SUFFIX = re.compile(r"-(\d{8}|\d{4}-\d{2}-\d{2}|latest)$")


class PriceError(ValueError):
    """A --price value that cannot be read."""


def canonical_model(model: str) -> str:
    """The table's name for a model: no provider prefix (`anthropic/`), no date or `-latest` suffix."""
    name = model.strip().lower().rsplit("/", 1)[-1]
    name = _DATE_SUFFIX.sub("", name)
    return ALIASES.get(name, name)


def price_for(model: str | None, override: list[float] | None = None) -> Price | None:
    """The price of a model: the person's override first, then the table; None when unknown."""
    if override:
        return price_from_values(override)
    if not model:
        return None
    return PRICES.get(canonical_model(model))


def price_from_values(values: list[float]) -> Price:
    """`--price IN,OUT[,CACHE_READ,CACHE_WRITE]`: without cache prices, cached tokens cost full input price."""
    if not 2 <= len(values) <= 4 or any(not isinstance(v, int | float) or not math.isfinite(v) or v < 0 for v in values):
        raise PriceError("a price is 2 to 4 non-negative numbers, dollars per million tokens: "
                         "IN,OUT[,CACHE_READ,CACHE_WRITE], e.g. --price 3,15")
    inp, out = float(values[0]), float(values[1])
    read = float(values[2]) if len(values) > 2 else inp
    write = float(values[3]) if len(values) > 3 else inp
    return Price(inp, out, read, write)


def parse_price(text: str) -> list[float]:
    """The command-line form `3,15` or `3,15,0.3,3.75` as a list of floats (stored in the run's config)."""
    try:
        # "[3.0, 15.0]" too: the stored list, as the UI's launcher passes it back on a command line
        values = [float(part) for part in text.replace(" ", "").strip("[]").split(",") if part]
    except ValueError:
        raise PriceError(f"cannot read --price {text!r}: use dollars per million tokens, IN,OUT"
                         "[,CACHE_READ,CACHE_WRITE], e.g. --price 3,15") from None
    price_from_values(values)
    return values


def known_models() -> list[str]:
    return sorted(PRICES)


def _count(usage: dict[str, Any], key: str) -> int:
    value = usage.get(key) or 0
    return int(value) if isinstance(value, int | float) else 0


def prompt_tokens(usage: dict[str, Any]) -> int:
    """Everything the prompt cost in tokens, cached or not."""
    return sum(_count(usage, k) for k in ("input_tokens", "cache_read_tokens", "cache_write_tokens"))


@dataclass
class UsageTotals:
    """Token and dollar totals over many turns. `unpriced_turns` counts turns whose cost is unknown."""

    turns: int = 0
    input_tokens: int = 0
    output_tokens: int = 0
    cache_read_tokens: int = 0
    cache_write_tokens: int = 0
    cost_usd: float = 0.0
    unpriced_turns: int = 0

    def add(self, usage: dict[str, Any] | None) -> None:
        if not usage:
            return
        self.turns += 1
        self.input_tokens += _count(usage, "input_tokens")
        self.output_tokens += _count(usage, "output_tokens")
        self.cache_read_tokens += _count(usage, "cache_read_tokens")
        self.cache_write_tokens += _count(usage, "cache_write_tokens")
        cost = usage.get("cost_usd")
        if isinstance(cost, int | float):
            self.cost_usd += float(cost)
        else:
            self.unpriced_turns += 1

    @property
    def tokens_in(self) -> int:
        return self.input_tokens + self.cache_read_tokens + self.cache_write_tokens

    def as_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["tokens_in"] = self.tokens_in
        data["tokens_out"] = self.output_tokens
        # A total with unpriced turns in it would understate the spend: say so instead.
        data["cost_usd"] = round(self.cost_usd, 6) if self.unpriced_turns == 0 else None
        data["priced_cost_usd"] = round(self.cost_usd, 6)
        return data
