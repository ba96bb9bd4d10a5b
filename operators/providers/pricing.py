"""What LLM calls cost: list prices per model, bundled in ``prices.json``, with user overrides on top.

``PriceTable().price("anthropic", "claude-haiku-4-5-20251001")`` is that model's ``Price`` (US dollars per
million tokens); ``Price.cost`` turns a call's token counts into dollars, and ``worst_case_cost`` bounds a
call before it is made, for budget reservations. A model's price is found by these rules:

1. Overrides (model id or pattern -> some price fields) beat the bundled table, so a negotiated rate wins
   over the list price. They apply to every provider but the free ones (``offline``: it never pays a vendor,
   whatever model name a dry run gives it).
2. Within the overrides, and within the provider's bundled prices, an exact model id beats every pattern,
   and the longest matching pattern beats shorter ones. Patterns are ``fnmatch`` patterns matched
   case-sensitively (``claude-haiku-4-5*`` matches the dated id ``claude-haiku-4-5-20251001``).
3. An override may be partial: its fields replace those of the bundled price of the same model
   (``{"gemini-2.5-flash": {"batch_discount": 0}}``); an override of a model the table does not know must
   give at least ``input`` and ``output``.
4. No match at all raises ``UnknownPrice`` naming the closest known models: a wrong price is worse than none,
   because budgets are enforced with it.

Pure Python: no Ray, no network.
"""

from __future__ import annotations

import dataclasses
import difflib
import fnmatch
import json
import math
from collections.abc import Mapping
from dataclasses import dataclass
from functools import lru_cache
from importlib import resources
from typing import Any, TypeVar

from operators.providers.base import LlmResponse

_T = TypeVar("_T")
PER_MILLION = 1_000_000
PRICE_FIELDS = ("input", "output", "cache_read", "cache_write", "batch_discount")
_REQUIRED = ("input", "output")
_PATTERN_CHARS = frozenset("*?[")
_BUNDLED_FILE = "prices.json"

Overrides = Mapping[str, Mapping[str, float]]
"""Model id or pattern -> some of the ``Price`` fields (``PRICE_FIELDS``), in USD per million tokens."""


class UnknownPrice(ValueError):
    """No price is known for a provider's model; ``suggestions`` are the closest models that have one."""

    def __init__(self, provider: str, model: str, reason: str, suggestions: tuple[str, ...] = ()) -> None:
        self.provider = provider
        self.model = model
        self.suggestions = suggestions
        hint = f"; closest known: {', '.join(suggestions)}" if suggestions else ""
        if provider == "openai":
            hint += (
                "; a model served on your own hardware or a gateway through `openai` has no list price: "
                "set it in providers.openai.prices (0 is allowed)"
            )
        super().__init__(
            f"no price for {provider} model {model!r}: {reason}{hint}. Check the model name, or give its "
            "`input` and `output` price (USD per million tokens) as a price override"
        )


@dataclass(frozen=True, slots=True)
class Price:
    """The rates of one model, in US dollars per million tokens.

    ``cache_read`` and ``cache_write`` are the prompt-cache rates; None means the vendor has no such rate and
    those tokens are billed as input. ``batch_discount`` is the fraction taken off every rate when the call
    goes through the vendor's batch API (0.5 for both Anthropic's and Gemini's).
    """

    input: float
    output: float
    cache_read: float | None = None
    cache_write: float | None = None
    batch_discount: float = 0.0

    def __post_init__(self) -> None:
        for name in PRICE_FIELDS:
            value = getattr(self, name)
            if value is not None or name in _REQUIRED:
                _check_rate(name, value)
        if self.batch_discount > 1:
            raise ValueError(f"price field 'batch_discount' must be at most 1, got {self.batch_discount}")

    def cost(
        self,
        input_tokens: int,
        output_tokens: int,
        *,
        batch: bool = False,
        cache_read_tokens: int = 0,
        cache_write_tokens: int = 0,
    ) -> float:
        """The dollars a call with these token counts costs.

        ``input_tokens`` are the tokens billed at the plain input rate; cache reads and writes are counted
        apart (as Anthropic's ``usage`` reports them; Gemini's ``prompt_token_count`` includes the cached
        tokens, which the caller subtracts).
        """
        counts = {
            "input_tokens": input_tokens,
            "output_tokens": output_tokens,
            "cache_read_tokens": cache_read_tokens,
            "cache_write_tokens": cache_write_tokens,
        }
        for name, count in counts.items():
            if count < 0:
                raise ValueError(f"{name} must not be negative, got {count}")
        cache_read = self.input if self.cache_read is None else self.cache_read
        cache_write = self.input if self.cache_write is None else self.cache_write
        dollars = (
            input_tokens * self.input
            + output_tokens * self.output
            + cache_read_tokens * cache_read
            + cache_write_tokens * cache_write
        ) / PER_MILLION
        return dollars * (1.0 - self.batch_discount) if batch else dollars


def answer_cost(price: Price, response: LlmResponse) -> float:
    """What an answer cost: its cached input at the ``cache_read`` rate, the rest of its input at the
    input rate, its output (reasoning included) at the output rate, at the batch price for a batch answer."""
    cached = min(max(0, response.cached_input_tokens), response.input_tokens)
    return price.cost(
        response.input_tokens - cached, response.output_tokens, batch=response.batch, cache_read_tokens=cached
    )


def worst_case_cost(price: Price, input_tokens: int, max_output_tokens: int, *, batch: bool = False) -> float:
    """The most a call can cost: every input token uncached and every allowed output token used.

    For budget reservations: reserve this before the call, settle with ``Price.cost`` after it.
    """
    return price.cost(input_tokens, max_output_tokens, batch=batch)


class PriceTable:
    """The bundled list prices with ``overrides`` on top; ``price(provider, model)`` finds a model's rates.

    Overrides are validated here, so a typo in a key or a negative rate fails before any call is made. A
    table is immutable once built and safe to share between threads.
    """

    def __init__(self, overrides: Overrides | None = None) -> None:
        bundled = _bundled()
        self.as_of: str = bundled.as_of
        self.source: Mapping[str, str] = bundled.source
        self._bundled = bundled.prices
        self._free = bundled.free
        self._overrides = _parse_prices(overrides or {}, "price override")
        self._found: dict[tuple[str, str], Price] = {}

    def __repr__(self) -> str:
        return f"PriceTable(as_of={self.as_of!r}, overrides={len(self._overrides)})"

    def price(self, provider: str, model: str) -> Price:
        """The rates of ``model`` on ``provider``; ``UnknownPrice`` when neither table knows it."""
        key = (provider, model)
        found = self._found.get(key)
        if found is None:
            found = self._resolve(provider, model)
            self._found[key] = found  # tables never change, so a found price stays right
        return found

    def _resolve(self, provider: str, model: str) -> Price:
        override = None if provider in self._free else _best_match(self._overrides, model)
        base = _best_match(self._bundled.get(provider, {}), model)
        if override is None:
            if base is None:
                raise self._unknown(provider, model)
            return base
        if base is None:
            missing = [name for name in _REQUIRED if name not in override]
            if missing:
                raise UnknownPrice(
                    provider,
                    model,
                    f"its override gives no {' or '.join(missing)} and the bundled table has no price to "
                    "complete it",
                )
            return Price(**override)
        return dataclasses.replace(base, **override)

    def _unknown(self, provider: str, model: str) -> UnknownPrice:
        if provider not in self._bundled:
            known = sorted(self._bundled)
            return UnknownPrice(
                provider, model, f"no prices for provider {provider!r} (known: {', '.join(known)})"
            )
        patterns = {*self._bundled[provider], *({} if provider in self._free else self._overrides)}
        # Compare with the literal part of each pattern ("claude-haiku-4-5*" is close to "claude-haiku-4-6");
        # where an exact id and a pattern share it, name the exact id (patterns sort first, ids overwrite).
        literal = {
            pattern.split("[")[0].rstrip("*?-"): pattern
            for pattern in sorted(patterns, key=lambda p: not _PATTERN_CHARS.intersection(p))
        }
        close = difflib.get_close_matches(model, literal, n=3, cutoff=0.6)
        return UnknownPrice(
            provider, model, "no model id or pattern matches", tuple(literal[c] for c in close)
        )


@dataclass(frozen=True)
class _Bundled:
    as_of: str
    source: Mapping[str, str]
    prices: Mapping[str, Mapping[str, Price]]
    free: frozenset[str]


@lru_cache(maxsize=1)
def _bundled() -> _Bundled:
    """The bundled price file, read and validated once per process."""
    text = resources.files("operators.providers").joinpath(_BUNDLED_FILE).read_text(encoding="utf-8")
    data = json.loads(text)
    if data.get("format") != 1:
        raise ValueError(f"{_BUNDLED_FILE}: unsupported format {data.get('format')!r} (expected 1)")
    prices: dict[str, dict[str, Price]] = {}
    for provider, section in data["providers"].items():
        prices[provider] = {}
        for pattern, fields in _parse_prices(section, f"{_BUNDLED_FILE} {provider}").items():
            missing = [name for name in _REQUIRED if name not in fields]
            if missing:
                raise ValueError(f"{_BUNDLED_FILE}: {provider} {pattern!r} lacks {', '.join(missing)}")
            prices[provider][pattern] = Price(**fields)
    free = frozenset(data["free_providers"])
    return _Bundled(str(data["as_of"]), dict(data["source"]), prices, free)


def _parse_prices(prices: Any, where: str) -> dict[str, dict[str, float]]:
    """A validated copy of model pattern -> partial price mappings; a bad key or rate is a ValueError."""
    if not isinstance(prices, Mapping):
        raise ValueError(f"{where}: expected a mapping of model ids or patterns to prices, got {prices!r}")
    parsed: dict[str, dict[str, float]] = {}
    for pattern, fields in prices.items():
        if not isinstance(pattern, str) or not pattern:
            raise ValueError(f"{where}: model ids must be non-empty strings, got {pattern!r}")
        if not isinstance(fields, Mapping):
            raise ValueError(f"{where} {pattern!r}: expected a mapping of price fields, got {fields!r}")
        for name, value in fields.items():
            if name not in PRICE_FIELDS:
                allowed = ", ".join(PRICE_FIELDS)
                raise ValueError(f"{where} {pattern!r}: unknown key {name!r} (allowed: {allowed})")
            _check_rate(name, value, f"{where} {pattern!r}: ")
        if fields.get("batch_discount", 0) > 1:
            raise ValueError(f"{where} {pattern!r}: 'batch_discount' must be at most 1")
        parsed[pattern] = {name: float(value) for name, value in fields.items()}
    return parsed


def _check_rate(name: str, value: object, where: str = "") -> None:
    if (
        isinstance(value, bool)
        or not isinstance(value, (int, float))
        or not math.isfinite(value)
        or value < 0
    ):
        raise ValueError(f"{where}price field {name!r} must be a non-negative number, got {value!r}")


def _best_match(entries: Mapping[str, _T], model: str) -> _T | None:
    """The entry of ``model``'s exact id, else of the longest pattern matching it, else None."""
    if model in entries:
        return entries[model]
    matching = [p for p in entries if _PATTERN_CHARS.intersection(p) and fnmatch.fnmatchcase(model, p)]
    if not matching:
        return None
    return entries[max(matching, key=lambda p: (len(p), p))]
