"""What a model's tokens cost: a price table for the common models, and running totals.

Prices are US dollars per million tokens. Where a model's price comes from, first match wins:

1. the person's `--price IN,OUT[,CACHE_READ,CACHE_WRITE]`;
2. the table below, as published by Anthropic and OpenAI (checked as of PRICES_AS_OF);
3. the data bundled with the maintained `genai-prices` package (pydantic's), for a model missing here, looked
   up for the server the agent talks to (a local server is never priced as a cloud one);
4. none: the run counts tokens only (its cost is None).

Every priced turn records which of these priced it (`Price.source`), and the run's cost is reported with it.
Token counts are normalised across providers:

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
from dataclasses import asdict, dataclass, field
from decimal import Decimal
from typing import Any

PRICES_AS_OF = "2026-11"
TABLE_SOURCE = f"built-in table ({PRICES_AS_OF})"
OVERRIDE_SOURCE = "--price"
NO_PRICE_SOURCE = "none: tokens only"


@dataclass(frozen=True)
class Price:
    """US dollars per million tokens, and who says so (reported beside the run's cost)."""

    input: float
    output: float
    cache_read: float
    cache_write: float
    source: str = TABLE_SOURCE

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


def price_for(model: str | None, override: list[float] | None = None, *,
              base_url: str | None = None) -> Price | None:
    """The price of a model: the person's override, the table, then genai-prices; None when none knows it.

    `base_url` is the server the agent talks to: genai-prices then prices the model as that server's provider
    sells it, and knows no price for a server it does not know (a local one). Without it, the provider is the
    one whose models the name matches.
    """
    if override:
        return price_from_values(override)
    if not model:
        return None
    return PRICES.get(canonical_model(model)) or maintained_price(model, base_url)


@dataclass(frozen=True)
class MaintainedPrice(Price):
    """A price from genai-prices' bundled data.

    The per-million figures are the model's base rates (what the start line shows); `cost` asks genai-prices
    for each turn, so a rate that depends on the prompt's length (a higher tier past 200k tokens) is charged
    as published.
    """

    model_ref: str = ""
    provider_id: str = ""

    def cost(self, usage: dict[str, Any]) -> float:
        try:
            return float(_genai_prices_cost(self.model_ref, self.provider_id, usage).total_price)
        except (LookupError, ValueError, ArithmeticError):  # a lookup must never end a turn: base rates it is
            return super().cost(usage)


def genai_prices_version() -> str | None:
    """The installed genai-prices' version, or None when it cannot be imported (prices fall back to tokens)."""
    try:
        import genai_prices
    except Exception:  # missing, or a broken dependency of it: either way there is no second source
        return None
    return str(genai_prices.__version__)


def _genai_prices_cost(model_ref: str, provider_id: str | None, usage: dict[str, Any],
                       base_url: str | None = None) -> Any:
    """genai-prices' PriceCalculation for one turn's normalised usage.

    Only `calc_price` is called, which reads the price data bundled in the installed package. The package's
    `UpdatePrices` (its only code that reaches the network, opt-in) is never started here: prices change when
    the package is upgraded, and a run never fetches anything.
    """
    from genai_prices import Usage, calc_price

    read, write = _count(usage, "cache_read_tokens"), _count(usage, "cache_write_tokens")
    # genai-prices counts input_tokens as the whole prompt, cached parts included; ours exclude them.
    genai_usage = Usage(input_tokens=_count(usage, "input_tokens") + read + write, cache_read_tokens=read,
                        cache_write_tokens=write, output_tokens=_count(usage, "output_tokens"))
    if provider_id:
        return calc_price(genai_usage, model_ref, provider_id=provider_id)
    return calc_price(genai_usage, model_ref, provider_api_url=base_url)


def maintained_price(model: str, base_url: str | None = None) -> MaintainedPrice | None:
    """genai-prices' price of a model at a server (see price_for); None when it does not know both."""
    version = genai_prices_version()
    if version is None:
        return None
    model_ref = model.strip()
    thousand = 1000  # a small prompt: the base rate, below any long-prompt tier

    def per_million(**counts: int) -> tuple[Decimal, str]:
        found = _genai_prices_cost(model_ref, None, counts, base_url)
        return found.total_price * (1_000_000 // thousand), found.provider.id

    try:
        inp, provider_id = per_million(input_tokens=thousand)
        out, _ = per_million(output_tokens=thousand)
        read, _ = per_million(cache_read_tokens=thousand)
        write, _ = per_million(cache_write_tokens=thousand)
    except Exception:  # LookupError: no such model or server; anything else: no usable price either
        return None
    return MaintainedPrice(float(inp), float(out), float(read), float(write), source=f"genai-prices {version}",
                           model_ref=model_ref, provider_id=provider_id)


def price_source(price: Price | None) -> str:
    """Who priced the turns: `--price`, the table (and its date), `genai-prices <version>`, or none."""
    return price.source if price is not None else NO_PRICE_SOURCE


def describe_price(model: str, price: Price | None) -> str:
    """One line for the start of a run: the model's price and its source, or why only tokens are counted."""
    if price is not None:
        return (f"agent model {model}: ${price.input:g} in, ${price.output:g} out, ${price.cache_read:g} cache "
                f"read, ${price.cache_write:g} cache write per million tokens ({price.source})")
    version = genai_prices_version()
    elsewhere = (f"nor in genai-prices {version}" if version else
                 "and genai-prices is not installed to look further (pip install genai-prices)")
    return (f"agent model {model}: no price known (not in the {TABLE_SOURCE}, {elsewhere}): tokens are "
            "counted, dollars are not; give a price with --price IN,OUT (dollars per million tokens)")


def price_from_values(values: list[float]) -> Price:
    """`--price IN,OUT[,CACHE_READ,CACHE_WRITE]`: without cache prices, cached tokens cost full input price."""
    if not 2 <= len(values) <= 4 or any(not isinstance(v, int | float) or not math.isfinite(v) or v < 0 for v in values):
        raise PriceError("a price is 2 to 4 non-negative numbers, dollars per million tokens: "
                         "IN,OUT[,CACHE_READ,CACHE_WRITE], e.g. --price 3,15")
    inp, out = float(values[0]), float(values[1])
    read = float(values[2]) if len(values) > 2 else inp
    write = float(values[3]) if len(values) > 3 else inp
    return Price(inp, out, read, write, source=OVERRIDE_SOURCE)


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
    """Token and dollar totals over many turns. `unpriced_turns` counts turns whose cost is unknown;
    `price_sources` lists who priced them, in order of first use (turns recorded before sources were kept
    name none)."""

    turns: int = 0
    input_tokens: int = 0
    output_tokens: int = 0
    cache_read_tokens: int = 0
    cache_write_tokens: int = 0
    cost_usd: float = 0.0
    unpriced_turns: int = 0
    price_sources: list[str] = field(default_factory=list)

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
        source = usage.get("price_source")
        if isinstance(source, str) and source not in self.price_sources:
            self.price_sources.append(source)

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
        data["price_source"] = ", ".join(self.price_sources) or None
        return data
