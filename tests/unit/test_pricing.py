"""Prices: which rate a model gets (exact ids, patterns, dated ids, overrides), what a call costs, and the
errors a user sees for an unknown model or a bad override."""

from __future__ import annotations

import json
from importlib import resources

import pytest

from operators.providers.pricing import PRICE_FIELDS, Price, PriceTable, UnknownPrice, worst_case_cost

MILLION = 1_000_000


@pytest.fixture(scope="module")
def table() -> PriceTable:
    return PriceTable()


def test_bundled_file_says_where_its_prices_come_from(table: PriceTable) -> None:
    data = json.loads(resources.files("operators.providers").joinpath("prices.json").read_text("utf-8"))
    assert data["as_of"] == table.as_of == "2026-11"
    assert set(data["source"]) >= {"anthropic", "gemini"}
    assert all(url.startswith("https://") for name, url in data["source"].items() if name != "offline")


def test_every_bundled_price_has_rates_and_the_vendors_batch_discount() -> None:
    data = json.loads(resources.files("operators.providers").joinpath("prices.json").read_text("utf-8"))
    for provider in ("anthropic", "gemini"):
        for pattern, fields in data["providers"][provider].items():
            assert set(fields) <= set(PRICE_FIELDS), pattern
            assert fields["input"] > 0 and fields["output"] > fields["input"], pattern
            assert fields["batch_discount"] == 0.5, pattern


@pytest.mark.parametrize(
    ("provider", "model", "rates"),
    [
        ("anthropic", "claude-haiku-4-5", (1.0, 5.0, 0.1, 1.25)),
        ("anthropic", "claude-haiku-4-5-20251001", (1.0, 5.0, 0.1, 1.25)),
        ("anthropic", "claude-sonnet-4-5-20250929", (3.0, 15.0, 0.3, 3.75)),
        ("anthropic", "claude-opus-4-1-20250805", (15.0, 75.0, 1.5, 18.75)),
        ("anthropic", "claude-opus-4-5-20251101", (5.0, 25.0, 0.5, 6.25)),
        ("anthropic", "claude-3-5-haiku-20241022", (0.8, 4.0, 0.08, 1.0)),
        ("anthropic", "claude-3-5-haiku-latest", (0.8, 4.0, 0.08, 1.0)),
        ("gemini", "gemini-2.5-flash", (0.3, 2.5, 0.03, None)),
        ("gemini", "gemini-2.5-flash-preview-09-2025", (0.3, 2.5, 0.03, None)),
        ("gemini", "gemini-2.5-flash-lite", (0.1, 0.4, 0.01, None)),
        ("gemini", "gemini-2.5-pro", (1.25, 10.0, 0.125, None)),
        ("gemini", "gemini-2.0-flash-001", (0.1, 0.4, 0.025, None)),
        ("gemini", "gemini-2.0-flash-lite", (0.075, 0.3, None, None)),
    ],
)
def test_list_prices_of_aliases_and_dated_ids(
    table: PriceTable, provider: str, model: str, rates: tuple[float, float, float | None, float | None]
) -> None:
    price = table.price(provider, model)
    assert (price.input, price.output, price.cache_read, price.cache_write) == rates


def test_longest_pattern_wins(table: PriceTable) -> None:
    # "gemini-2.5-flash-preview-[0-9]*" must not swallow lite; the lite id gets the lite rate.
    assert table.price("gemini", "gemini-2.5-flash-lite-preview-06-17").output == 0.4
    overridden = PriceTable(
        {"mistral*": {"input": 9.0, "output": 9.0}, "mistral-small*": {"input": 1.0, "output": 2.0}}
    )
    assert overridden.price("mistral", "mistral-small-2506") == Price(input=1.0, output=2.0)
    assert overridden.price("mistral", "mistral-large-2411") == Price(input=9.0, output=9.0)


def test_exact_id_beats_any_pattern() -> None:
    table = PriceTable(
        {"claude-haiku-4-5-20251001": {"input": 0.5}, "claude-haiku-4-5-2025*": {"input": 0.7}}
    )
    assert table.price("anthropic", "claude-haiku-4-5-20251001").input == 0.5
    assert table.price("anthropic", "claude-haiku-4-5-20250101").input == 0.7
    assert table.price("anthropic", "claude-haiku-4-5").input == 1.0  # no override matches: the list price


def test_variants_priced_differently_are_not_matched_by_a_family_pattern(table: PriceTable) -> None:
    # Google prices tts and image variants apart; guessing the text price would corrupt budgets.
    for model in ("gemini-2.5-flash-preview-tts", "gemini-2.5-flash-image", "gemini-2.5-pro-preview-tts"):
        with pytest.raises(UnknownPrice):
            table.price("gemini", model)


def test_offline_is_free_for_any_model(table: PriceTable) -> None:
    for model in ("claude-haiku-4-5", "gemini-2.5-pro", "anything-at-all"):
        price = table.price("offline", model)
        assert price.cost(123_456, 7_890, cache_read_tokens=1_000) == 0.0
        assert worst_case_cost(price, 10**9, 10**6) == 0.0


def test_overrides_do_not_make_offline_cost_money() -> None:
    # A dry run keeps the node's model name; an override of that model's price must not bill it.
    table = PriceTable({"claude-haiku-4-5*": {"input": 50.0}, "*": {"input": 1.0, "output": 1.0}})
    assert table.price("offline", "claude-haiku-4-5").cost(MILLION, MILLION) == 0.0
    assert table.price("anthropic", "claude-haiku-4-5").input == 50.0


def test_partial_override_keeps_the_other_list_rates() -> None:
    table = PriceTable({"claude-haiku-4-5*": {"input": 0.9}})
    price = table.price("anthropic", "claude-haiku-4-5-20251001")
    assert price == Price(input=0.9, output=5.0, cache_read=0.1, cache_write=1.25, batch_discount=0.5)


def test_override_pattern_beats_a_longer_bundled_pattern() -> None:
    # A negotiated rate for a whole family wins over every list price in it.
    table = PriceTable({"claude-*": {"batch_discount": 0.0}})
    assert table.price("anthropic", "claude-sonnet-4-5-20250929") == Price(3.0, 15.0, 0.3, 3.75, 0.0)
    assert table.price("gemini", "gemini-2.5-flash").batch_discount == 0.5  # other models untouched


def test_override_of_an_unlisted_model_needs_input_and_output() -> None:
    table = PriceTable({"claude-fable-9": {"input": 2.0, "output": 8.0}, "claude-half-9": {"input": 2.0}})
    assert table.price("anthropic", "claude-fable-9") == Price(input=2.0, output=8.0)
    with pytest.raises(UnknownPrice, match=r"override gives no output"):
        table.price("anthropic", "claude-half-9")


def test_override_prices_a_plugin_provider() -> None:
    table = PriceTable({"mistral-small*": {"input": 0.1, "output": 0.3}})
    assert table.price("mistral", "mistral-small-2506").cost(MILLION, MILLION) == pytest.approx(0.4)


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"claude-haiku-4-5": {"inptu": 1.0}}, r"'claude-haiku-4-5': unknown key 'inptu' \(allowed: input, "),
        (
            {"claude-haiku-4-5": {"output": -1}},
            r"'claude-haiku-4-5': .*'output' must be a non-negative number",
        ),
        ({"claude-haiku-4-5": {"input": "1.0"}}, r"'input' must be a non-negative number, got '1.0'"),
        ({"claude-haiku-4-5": {"input": True}}, r"'input' must be a non-negative number, got True"),
        ({"claude-haiku-4-5": {"input": float("nan")}}, r"'input' must be a non-negative number, got nan"),
        (
            {"claude-haiku-4-5": {"batch_discount": 1.5}},
            r"'claude-haiku-4-5': 'batch_discount' must be at most 1",
        ),
        ({"claude-haiku-4-5": 1.0}, r"'claude-haiku-4-5': expected a mapping of price fields"),
        ({"": {"input": 1.0}}, r"model ids must be non-empty strings"),
        (["claude-haiku-4-5"], r"expected a mapping of model ids or patterns to prices"),
    ],
)
def test_invalid_overrides_are_refused_naming_the_key(overrides: object, message: str) -> None:
    with pytest.raises(ValueError, match=message) as raised:
        PriceTable(overrides)  # type: ignore[arg-type]
    assert str(raised.value).startswith("price override")


def test_unknown_model_names_the_model_and_close_matches(table: PriceTable) -> None:
    with pytest.raises(UnknownPrice) as raised:
        table.price("gemini", "gemini-2.5-flsh")
    error = raised.value
    assert isinstance(error, ValueError)
    assert (error.provider, error.model) == ("gemini", "gemini-2.5-flsh")
    assert error.suggestions[0] == "gemini-2.5-flash"
    assert "'gemini-2.5-flsh'" in str(error) and "closest known: gemini-2.5-flash" in str(error)
    assert "override" in str(error)  # says what to do


def test_unknown_model_suggests_the_family_pattern(table: PriceTable) -> None:
    with pytest.raises(UnknownPrice) as raised:
        table.price("anthropic", "claude-haiku-4-6")
    assert "claude-haiku-4-5*" in raised.value.suggestions


def test_unknown_provider_lists_the_known_ones(table: PriceTable) -> None:
    with pytest.raises(
        UnknownPrice, match=r"no prices for provider 'mistral' \(known: anthropic, gemini, offline, openai\)"
    ):
        table.price("mistral", "mistral-small")


def test_cost_per_token_type() -> None:
    price = Price(input=3.0, output=15.0, cache_read=0.3, cache_write=3.75, batch_discount=0.5)
    assert price.cost(MILLION, 0) == pytest.approx(3.0)
    assert price.cost(0, MILLION) == pytest.approx(15.0)
    assert price.cost(1_000, 500) == pytest.approx(0.003 + 0.0075)
    assert price.cost(0, 0, cache_read_tokens=MILLION) == pytest.approx(0.3)
    assert price.cost(0, 0, cache_write_tokens=MILLION) == pytest.approx(3.75)


def test_batch_discount_halves_every_rate(table: PriceTable) -> None:
    for provider, model in (("anthropic", "claude-haiku-4-5"), ("gemini", "gemini-2.5-flash")):
        price = table.price(provider, model)
        full = price.cost(20_000, 3_000, cache_read_tokens=5_000)
        assert price.cost(20_000, 3_000, cache_read_tokens=5_000, batch=True) == pytest.approx(full / 2)
    assert Price(1.0, 2.0).cost(MILLION, MILLION, batch=True) == pytest.approx(3.0)  # no discount listed


def test_cache_tokens_without_a_cache_rate_bill_as_input(table: PriceTable) -> None:
    price = table.price("gemini", "gemini-2.0-flash-lite")
    assert price.cost(0, 0, cache_read_tokens=MILLION) == pytest.approx(price.input)
    assert price.cost(0, 0, cache_write_tokens=MILLION) == pytest.approx(price.input)


def test_worst_case_is_every_output_token_used(table: PriceTable) -> None:
    price = table.price("anthropic", "claude-sonnet-4-5")
    assert worst_case_cost(price, 2_000, 1_024) == pytest.approx(2_000 * 3e-6 + 1_024 * 15e-6)
    assert worst_case_cost(price, 2_000, 1_024, batch=True) == pytest.approx(
        (2_000 * 3e-6 + 1_024 * 15e-6) / 2
    )
    assert worst_case_cost(price, 2_000, 1_024) >= price.cost(2_000, 700)


def test_negative_token_counts_are_refused() -> None:
    with pytest.raises(ValueError, match="output_tokens must not be negative"):
        Price(1.0, 1.0).cost(1, -1)


def test_price_values_validate_themselves() -> None:
    with pytest.raises(ValueError, match="'cache_read' must be a non-negative number"):
        Price(1.0, 1.0, cache_read=-0.1)
    with pytest.raises(ValueError, match="'batch_discount' must be at most 1"):
        Price(1.0, 1.0, batch_discount=2.0)
