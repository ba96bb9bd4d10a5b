"""The answers an estimate assumes for LLM nodes it does not ask: their size, and values to stand in.

Output tokens per call::

    llm_classify, llm_filter   the labels' mean length, each as likely as the others (yes/no for a filter)
    llm_extract                a minimal instance of output_schema: required fields, short strings (a floor)
    llm_map                    an assumption: --output-tokens, else min(max_tokens, MAP_OUTPUT_TOKENS)

plus what a provider puts around a structured answer: for anthropic the tool call as the model writes
it (the tool's name and its input as JSON, a label wrapped as ``{"value": label}``), for gemini the JSON
quoting. A stand-in answer has the right type and
about that size, so that nodes downstream render prompts of a realistic length.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from typing import Any

from engine.estimate.results import MAP_OUTPUT_TOKENS, EstimateOptions
from operators.llm import LlmClassify, LlmExtract, LlmFilter, LlmSpec
from operators.providers.claude import TOOL_NAME
from operators.providers.offline import estimate_tokens, schema_instance

_ANSWER_FRAMING_TOKENS: Mapping[str, int] = {"gemini": 2}
"""Output tokens around a structured answer: Gemini's JSON quoting (approximate); anthropic's tool call is
counted from its JSON (``_tool_call_tokens``)."""
_SEED = "0" * 64
"""A fingerprint-length seed: schema instances get strings as long as the offline provider's."""
_FILLER = "the model's answer to this row, of about the assumed length. "


def output_tokens(spec: LlmSpec, provider: str, options: EstimateOptions) -> tuple[int, str]:
    """Output tokens expected per call of ``spec`` (``provider``: whose framing applies), and what that
    figure rests on."""
    framing = _ANSWER_FRAMING_TOKENS.get(provider, 0) if provider != "offline" else 0
    extra = f" + {framing} for the answer's framing" if framing else ""
    if provider == "anthropic":
        extra = ", as a tool call (its name and input as JSON)"
    if isinstance(spec, (LlmClassify, LlmFilter)):
        labels = spec.labels if isinstance(spec, LlmClassify) else ["yes", "no"]
        if provider == "anthropic":
            each = [_tool_call_tokens({"value": label}) for label in labels]
        else:
            each = [estimate_tokens(label) + framing for label in labels]
        tokens = math.ceil(sum(each) / len(each))
        basis = f"the labels' mean length (each label as likely){extra}"
    elif isinstance(spec, LlmExtract):
        try:
            value = schema_instance(dict(spec.output_schema), seed=_SEED)
            if provider == "anthropic":
                tokens = _tool_call_tokens(value)
            else:
                tokens = estimate_tokens(json.dumps(value)) + framing
            basis = f"a minimal instance of output_schema (required fields, short strings: a floor){extra}"
        except (ValueError, KeyError, TypeError):
            tokens, basis = MAP_OUTPUT_TOKENS, "assumed: output_schema has no instance to measure"
    elif options.output_tokens is not None:
        tokens, basis = options.output_tokens, "assumed: --output-tokens"
    else:
        tokens = MAP_OUTPUT_TOKENS
        basis = f"assumed: min(max_tokens, {MAP_OUTPUT_TOKENS}); --output-tokens N sets it"
    return min(tokens, spec.max_tokens), basis


def _tool_call_tokens(value: Any) -> int:
    """About four characters a token over Claude's tool call recording ``value``."""
    return math.ceil(len(json.dumps({"name": TOOL_NAME, "input": value})) / 4)


def stand_in(spec: LlmSpec, output_tokens: int, index: int) -> Any:
    """A value standing in for the answer to row ``index``, of the right type and about the expected
    size; labels take turns, so a filter on them keeps each label's even share."""
    if isinstance(spec, LlmClassify):
        return spec.labels[index % len(spec.labels)]
    if isinstance(spec, LlmFilter):
        return True
    if isinstance(spec, LlmExtract):
        try:
            return schema_instance(dict(spec.output_schema), seed=_SEED)
        except (ValueError, KeyError, TypeError):
            return None
    chars = output_tokens * 4
    return (_FILLER * (chars // len(_FILLER) + 1))[:chars]
