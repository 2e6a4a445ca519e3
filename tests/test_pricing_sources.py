"""Where a model's price comes from: --price, the built-in table, genai-prices' bundled data, or none.

The genai-prices figures are read from the installed package's own data (its PriceCalculation.model_price) and
the expected cost is computed here by hand from them, so the test checks how our four normalised token counts
map onto genai-prices' usage, not a copy of its arithmetic.
"""

from __future__ import annotations

import socket
import sys
from decimal import Decimal
from types import SimpleNamespace

import genai_prices
import pytest

from supervisor.agents.llm import LLMAgent
from supervisor.core import pricing
from supervisor.core.pricing import (
    NO_PRICE_SOURCE,
    PRICES,
    TABLE_SOURCE,
    MaintainedPrice,
    UsageTotals,
    describe_price,
    genai_prices_version,
    price_for,
    price_source,
)
from supervisor.tui.state import cost_text

ANTHROPIC_API = "https://api.anthropic.com"
GOOGLE_OPENAI_API = "https://generativelanguage.googleapis.com/v1beta/openai/"
MISTRAL_API = "https://api.mistral.ai/v1"
LOCAL_SERVER = "http://127.0.0.1:11434/v1"
# Real models genai-prices knows and the built-in table does not (checked below, so a table update shows).
SONNET_37 = "claude-3-7-sonnet-20250219"
GEMINI_FLASH = "gemini-2.5-flash"
USAGE = {"input_tokens": 1000, "cache_read_tokens": 2000, "cache_write_tokens": 3000, "output_tokens": 400}
GENAI_SOURCE = f"genai-prices {genai_prices.__version__}"


def published(model: str, base_url: str) -> object:
    """genai-prices' own per-million prices for a model at a server (its ModelPrice: input_mtok, ...)."""
    return genai_prices.calc_price(genai_prices.Usage(input_tokens=1), model, provider_api_url=base_url).model_price


def by_hand(rates: dict[str, Decimal | None], usage: dict[str, int]) -> float:
    """Dollars for our normalised usage: each count at its rate; a cache without a rate is billed as input."""
    inp = rates["input_mtok"]
    total = (usage["input_tokens"] * inp + usage["cache_read_tokens"] * (rates["cache_read_mtok"] or inp)
             + usage["cache_write_tokens"] * (rates["cache_write_mtok"] or inp)
             + usage["output_tokens"] * rates["output_mtok"])
    return float(total / Decimal(1_000_000))


def rates_of(model_price: object) -> dict[str, Decimal | None]:
    return {k: getattr(model_price, k, None) for k in ("input_mtok", "cache_read_mtok", "cache_write_mtok",
                                                        "output_mtok")}


@pytest.fixture
def no_network(monkeypatch):
    """Any attempt to resolve or connect fails the test: prices come from the installed package only."""
    def refuse(*args, **kwargs):
        raise AssertionError(f"a price lookup reached for the network: {args!r}")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "getaddrinfo", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)


def test_the_order_is_the_persons_price_then_the_table_then_genai_prices_then_none(no_network):
    assert "claude-sonnet-5-5" in PRICES and SONNET_37 not in PRICES and GEMINI_FLASH not in PRICES
    assert price_for("claude-sonnet-5-5", [1, 2], base_url=ANTHROPIC_API).source == "--price"
    table = price_for("claude-sonnet-5-5", base_url=ANTHROPIC_API)
    assert table == PRICES["claude-sonnet-5-5"] and table.source == TABLE_SOURCE == "built-in table (2026-11)"
    maintained = price_for(SONNET_37, base_url=ANTHROPIC_API)
    assert isinstance(maintained, MaintainedPrice) and maintained.source == GENAI_SOURCE
    assert maintained.provider_id == "anthropic"
    assert price_for("claude-opus-4-9", base_url=ANTHROPIC_API) is None  # unknown to both: never a guess
    assert price_source(None) == NO_PRICE_SOURCE == "none: tokens only"


@pytest.mark.parametrize(("model", "base_url"), [(SONNET_37, ANTHROPIC_API), (GEMINI_FLASH, GOOGLE_OPENAI_API),
                                                 ("mistral-large-latest", MISTRAL_API)])
def test_a_turn_costs_what_genai_prices_published_rates_give_by_hand(no_network, model, base_url):
    price = price_for(model, base_url=base_url)
    rates = rates_of(published(model, base_url))
    assert price.cost(USAGE) == pytest.approx(by_hand(rates, USAGE), rel=1e-12)
    assert (price.input, price.output) == (float(rates["input_mtok"]), float(rates["output_mtok"]))


def test_claude_37_sonnet_is_priced_at_its_published_rates_with_every_cache_count():
    # genai-prices 0.2.x publishes $3 in, $15 out, $0.30 cache read, $3.75 cache write per million tokens.
    rates = rates_of(published(SONNET_37, ANTHROPIC_API))
    assert rates == {"input_mtok": 3, "cache_read_mtok": Decimal("0.3"), "cache_write_mtok": Decimal("3.75"),
                     "output_mtok": 15}
    # 1000 x 3 + 2000 x 0.30 + 3000 x 3.75 + 400 x 15 = 20850 millionths of a dollar
    assert price_for(SONNET_37, base_url=ANTHROPIC_API).cost(USAGE) == pytest.approx(0.02085, rel=1e-12)


def test_a_long_prompt_is_charged_at_genai_prices_higher_tier(no_network):
    price = price_for("gemini-2.5-pro", base_url=GOOGLE_OPENAI_API)
    long_prompt = {"input_tokens": 300_000, "cache_read_tokens": 0, "cache_write_tokens": 0, "output_tokens": 1000}
    at_base_rates = (300_000 * price.input + 1000 * price.output) / 1e6
    expected = genai_prices.calc_price(genai_prices.Usage(input_tokens=300_000, output_tokens=1000),
                                       "gemini-2.5-pro", provider_api_url=GOOGLE_OPENAI_API).total_price
    assert price.cost(long_prompt) == pytest.approx(float(expected)) and price.cost(long_prompt) > at_base_rates


def test_a_local_server_is_never_priced_as_a_cloud_one(no_network):
    assert price_for(GEMINI_FLASH, base_url=LOCAL_SERVER) is None
    assert price_for("qwen2.5-coder:32b", base_url=LOCAL_SERVER) is None
    assert price_for(GEMINI_FLASH).provider_id == "google"  # no server given: the maker whose names match


def test_without_genai_prices_an_unlisted_model_counts_tokens_and_the_start_line_says_why(monkeypatch):
    monkeypatch.setitem(sys.modules, "genai_prices", None)  # `import genai_prices` now raises ImportError
    assert genai_prices_version() is None
    assert price_for(SONNET_37, base_url=ANTHROPIC_API) is None
    assert price_for("claude-sonnet-5-5").source == TABLE_SOURCE  # the table needs no package
    line = describe_price(SONNET_37, None)
    assert "genai-prices is not installed" in line and "--price IN,OUT" in line and "\n" not in line


def test_the_start_line_names_the_price_and_its_source():
    assert describe_price(SONNET_37, price_for(SONNET_37, base_url=ANTHROPIC_API)) == (
        f"agent model {SONNET_37}: $3 in, $15 out, $0.3 cache read, $3.75 cache write per million tokens "
        f"({GENAI_SOURCE})")
    unknown = describe_price("my-local-model", None)
    assert f"not in the {TABLE_SOURCE}, nor in {GENAI_SOURCE}" in unknown


def test_each_turn_records_who_priced_it_and_the_totals_say_so():
    adapter = SimpleNamespace(provider="anthropic", model=SONNET_37)
    priced = LLMAgent(adapter, price=price_for(SONNET_37, base_url=ANTHROPIC_API)).usage(dict(USAGE))
    unpriced = LLMAgent(adapter, price=None).usage(dict(USAGE))
    assert priced["price_source"] == GENAI_SOURCE and priced["cost_usd"] == pytest.approx(0.02085)
    assert unpriced["price_source"] == NO_PRICE_SOURCE and unpriced["cost_usd"] is None

    totals = UsageTotals()
    totals.add({**USAGE, "cost_usd": 0.5})  # a turn recorded before sources were kept
    assert totals.as_dict()["price_source"] is None
    totals.add(priced)
    totals.add(priced)
    assert totals.as_dict()["price_source"] == GENAI_SOURCE
    totals.add({**USAGE, "cost_usd": 0.1, "price_source": "--price"})  # resumed with --price
    assert totals.as_dict()["price_source"] == f"{GENAI_SOURCE}, --price"


def test_the_ui_cost_line_names_the_source():
    status = {"cost": {"turns": 3, "tokens_in": 5000, "tokens_out": 400, "cost_usd": 0.02,
                       "priced_cost_usd": 0.02, "max_cost": 5.0, "price_source": GENAI_SOURCE}}
    assert cost_text(status, {}).endswith(f"· priced by {GENAI_SOURCE}")
    assert "priced by" not in cost_text({"cost": {**status["cost"], "price_source": None}}, {})


@pytest.mark.parametrize(("provider", "key"), [("anthropic", "ANTHROPIC_API_KEY"), ("openai", "OPENAI_API_KEY")])
def test_the_agents_look_the_model_up_at_the_server_they_talk_to(monkeypatch, no_network, provider, key):
    module = pytest.importorskip(f"supervisor.agents.{provider}_agent")
    monkeypatch.setenv(key, "test-key-not-used")
    monkeypatch.delenv(f"{provider.upper()}_BASE_URL", raising=False)  # the official server unless given
    model, official = (SONNET_37, ANTHROPIC_API) if provider == "anthropic" else (GEMINI_FLASH, GOOGLE_OPENAI_API)
    agent = module.create_agent(model, None if provider == "anthropic" else official)
    try:
        assert agent.price is not None and agent.price.source == GENAI_SOURCE
    finally:
        agent.close()
    local = module.create_agent(model, LOCAL_SERVER)
    try:
        assert local.price is None and not local.prices_known
    finally:
        local.close()


def test_the_module_never_imports_genai_prices_for_a_listed_model(monkeypatch):
    # The table answers first; the package (half a second to import) is loaded only for a model it lacks.
    monkeypatch.setattr(pricing, "maintained_price", lambda *a, **k: pytest.fail("genai-prices was consulted"))
    assert price_for("gpt-5.4").source == TABLE_SOURCE


def test_a_turn_genai_prices_cannot_price_is_charged_at_the_base_rates(monkeypatch):
    price = price_for(SONNET_37, base_url=ANTHROPIC_API)

    def lookup_fails(*args, **kwargs):
        raise LookupError("Unable to find model")

    monkeypatch.setattr(pricing, "_genai_prices_cost", lookup_fails)
    assert price.cost(USAGE) == pytest.approx((1000 * 3 + 2000 * 0.3 + 3000 * 3.75 + 400 * 15) / 1e6)
