"""PII ops: ``pii_detect`` (findings per row) and ``pii_mask`` (mask, keyed hash or drop), their
detectors, and :func:`insert_pii_masks`, the plan rewrite behind ``pii: {mask_before_llm: true}``.

Detectors (``detector: patterns``, the default) are compiled regexes whose candidates are validated in
Python where a checksum or range exists:

- EMAIL: ``local@domain.tld``.
Numbers are found inside words too (``card4012888888881881``, ``tel+14155552671``, ``ssn123-45-6789``):
only digits around a card, phone or SSN end it, not letters.

- PHONE: a leading ``+`` and 8-15 digits (E.164 / international), NANP ``(415) 555-2671`` /
  ``415-555-2671``, or a national number with a trunk ``0`` and separators (``030 1234 5678``,
  ``06 12 34 56 78``), 9-12 digits. A bare run of digits (an order id) is never a phone number.
- CREDIT_CARD: 13-19 digits, compact or in groups of 3-6 split by one kind of separator (space, dash,
  dot), with a card-network prefix and a valid Luhn check digit.
- IBAN: country code, check digits and BBAN (compact or in groups of four, either case), the
  country's length where known, and the ISO 7064 mod-97 check.
- US_SSN: ``AAA-GG-SSSS`` without area 000, 666 or 9xx, group 00 or serial 0000.
- IP_ADDRESS: IPv4 with octets 0-255 (not after `version`/`v`, so ``version 2.4.1.0`` is not an
  address), IPv6 as the stdlib :mod:`ipaddress` accepts it.
- PERSON: names after an honorific (``Dr. Jane Roe``) or a cue (``my name is``, ``Dear``, ``Hi``,
  ``signed``, ``Regards,``, ``Name:``). Conservative on purpose: it misses names without a cue
  (measured recall in ``tests/data/pii/RESULTS.md``) rather than mask ordinary capitalised words;
  a column of bare names is masked whole by declaring it (``pii: {columns: [name]}``).

Why Presidio is not the default: Microsoft Presidio's analyzer (``presidio-analyzer`` on PyPI) installs,
but it finds names with a spaCy NER model (``en_core_web_lg`` by default) that spaCy downloads from
GitHub releases, not from a package registry, so it cannot be installed where only registries are
reachable (this project's machines and CI); copies re-uploaded to PyPI by third parties are not vetted.
It also pulls spaCy and its native stack into every worker and costs milliseconds per row. Enable it
with ``detector: presidio`` (on the op or under ``pii:``) after ``pip install presidio-analyzer`` and
installing the model (``python -m spacy download en_core_web_lg``, or a wheel from your mirror; another
model via ``presidio_model``). Presidio then finds PERSON; the other types keep the validated patterns
above. A missing package or model is a clear error when the pipeline is checked and when a task starts.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Callable, Collection, Iterable, Mapping, Sequence
from functools import lru_cache
from typing import Literal, NamedTuple

import pyarrow as pa
from jinja2 import meta
from pydantic import Field, model_validator

from engine.plan import Plan, Problem
from engine.spec.expressions import sandbox
from engine.spec.models import (
    PII_KEY_ENV,
    PII_TYPES,
    Columns,
    EnvVarName,
    NodeSpec,
    PiiDetector,
    PiiType,
    Pipeline,
    SpacyModel,
    TransformSpec,
    presidio_problem,
)
from engine.spec.registry import register_op

__all__ = [
    "FINDINGS_TYPE",
    "Finding",
    "PiiDetect",
    "PiiMask",
    "find_pii",
    "iban_valid",
    "insert_pii_masks",
    "luhn_valid",
    "readable_type_name",
    "ssn_valid",
    "unreadable_prompt_inputs",
]

MaskMode = Literal["mask", "hash", "drop"]
FINDINGS_TYPE = "list<item: struct<type: string, column: string, start: int32, end: int32>>"
"""The Arrow type name of the column ``pii_detect`` adds."""


class Finding(NamedTuple):
    """One piece of PII in a text: its type and ``text[start:end]`` (character offsets)."""

    type: PiiType
    start: int
    end: int


# --- validators ------------------------------------------------------------------------------------


def luhn_valid(digits: str) -> bool:
    """Whether a string of digits passes the Luhn check (payment card numbers)."""
    total = 0
    for i, ch in enumerate(reversed(digits)):
        d = ord(ch) - 48
        if i % 2:
            d = d * 2 - 9 if d > 4 else d * 2
        total += d
    return total % 10 == 0


# Lengths of IBANs by country (ISO 13616 registry, the countries most often seen); others need 15-34.
_IBAN_LENGTHS = {
    "AD": 24, "AE": 23, "AL": 28, "AT": 20, "AZ": 28, "BA": 20, "BE": 16, "BG": 22, "BH": 22, "BR": 29,
    "CH": 21, "CR": 22, "CY": 28, "CZ": 24, "DE": 22, "DK": 18, "DO": 28, "EE": 20, "EG": 29, "ES": 24,
    "FI": 18, "FO": 18, "FR": 27, "GB": 22, "GE": 22, "GI": 23, "GL": 18, "GR": 27, "GT": 28, "HR": 21,
    "HU": 28, "IE": 22, "IL": 23, "IS": 26, "IT": 27, "JO": 30, "KW": 30, "KZ": 20, "LB": 28, "LI": 21,
    "LT": 20, "LU": 20, "LV": 21, "MC": 27, "MD": 24, "ME": 22, "MK": 19, "MR": 27, "MT": 31, "MU": 30,
    "NL": 18, "NO": 15, "PK": 24, "PL": 28, "PS": 29, "PT": 25, "QA": 29, "RO": 24, "RS": 22, "SA": 24,
    "SE": 24, "SI": 19, "SK": 24, "SM": 27, "TN": 24, "TR": 26, "UA": 29, "VG": 24, "XK": 20,
}  # fmt: skip


def iban_valid(iban: str) -> bool:
    """Whether ``iban`` (spaces allowed) has its country's length and a valid mod-97 check."""
    compact = iban.replace(" ", "").upper()
    if not re.fullmatch(r"[A-Z]{2}[0-9]{2}[A-Z0-9]{11,30}", compact):
        return False
    if len(compact) != _IBAN_LENGTHS.get(compact[:2], len(compact)):
        return False
    moved = compact[4:] + compact[:4]
    return int("".join(str(int(ch, 36)) for ch in moved)) % 97 == 1


_BAD_SSNS = frozenset({"078-05-1120", "219-09-9999"})  # published in advertising, never issued


def ssn_valid(ssn: str) -> bool:
    """Whether ``AAA-GG-SSSS`` is a possible US SSN (area not 000/666/9xx, group and serial not 0)."""
    m = re.fullmatch(r"(\d{3})-(\d{2})-(\d{4})", ssn)
    if not m or ssn in _BAD_SSNS:
        return False
    area, group, serial = m.groups()
    return area not in ("000", "666") and area[0] != "9" and group != "00" and serial != "0000"


# --- pattern detectors ----------------------------------------------------------------------------

_Candidates = Callable[[str], Iterable[tuple[int, int]]]

_EMAIL = re.compile(
    r"(?<![\w.%+-])[A-Za-z0-9][A-Za-z0-9._%+-]*@(?:[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?\.)+"
    r"[A-Za-z]{2,24}(?![\w-])"
)
_PHONE_INTL = re.compile(r"(?<![\d+])\+\d{1,3}(?:[ .-]?\(\d{1,4}\))?(?:[ .-]?\d{1,5}){1,6}(?![\d-]|[ .]\d)")
_PHONE_NANP = re.compile(r"(?<![\d+.-])(?:\(\d{3}\) ?|\d{3}[.-])\d{3}[.-]\d{4}(?![\d-]|[.]\d)")
_PHONE_TRUNK = re.compile(r"(?<![\w+.,/-])(?<!\d )0[1-9]\d{0,3}(?:[ .-]\d{2,8}){1,4}(?![\w/-]|[ .,]\d)")
_CARD = re.compile(r"(?<![\d.,-])(?<!\d[ .-])\d(?:[ .-]?\d){12,18}(?![\d-]|[ .,]\d)")
_CARD_PREFIX = re.compile(r"4|5[1-5]|2[2-7]|3[0-9]|6")
_IBAN = re.compile(
    r"(?<![A-Za-z0-9])[A-Za-z]{2}\d{2}(?: ?[A-Za-z0-9]{4}){2,7}(?: ?[A-Za-z0-9]{1,3})?(?![A-Za-z0-9])"
)
_SSN = re.compile(r"(?<![\d-])\d{3}-\d{2}-\d{4}(?![\d-])")
_OCTET = r"(?:25[0-5]|2[0-4]\d|1\d\d|[1-9]?\d)"
_IPV4 = re.compile(rf"(?<![\w.])(?:{_OCTET}\.){{3}}{_OCTET}(?![\w]|\.\d)")
_VERSION_CUE = re.compile(r"\b(?:version|ver\.?|release|build|v)\s*$", re.IGNORECASE)
_IPV6 = re.compile(
    r"(?<![\w:.])(?:[0-9A-Fa-f]{1,4}:|:)(?:[0-9A-Fa-f]{0,4}:){1,7}(?:(?:\d{1,3}\.){3}\d{1,3}|"
    r"[0-9A-Fa-f]{1,4})?(?![\w:]|\.\d)"
)


def _emails(text: str) -> Iterable[tuple[int, int]]:
    return (m.span() for m in _EMAIL.finditer(text))


def _digits(s: str) -> int:
    return sum(ch.isdigit() for ch in s)


def _phones(text: str) -> Iterable[tuple[int, int]]:
    for m in _PHONE_INTL.finditer(text):
        if 8 <= _digits(m.group()) <= 15:
            yield m.span()
    for m in _PHONE_NANP.finditer(text):
        if m.group()[1 if m.group().startswith("(") else 0] in "23456789":
            yield m.span()
    for m in _PHONE_TRUNK.finditer(text):
        if 9 <= _digits(m.group()) <= 12 and not _SSN.fullmatch(m.group()):
            yield m.span()


def _cards(text: str) -> Iterable[tuple[int, int]]:
    for m in _CARD.finditer(text):
        raw = m.group()
        groups = re.split(r"[ .-]", raw)
        digits = "".join(groups)
        # separators must be of one kind, between groups of 3-6 digits (4-4-4-4, 4-6-5)
        mixed = len(set(raw) - set("0123456789")) > 1
        if len(groups) > 1 and (mixed or not all(3 <= len(g) <= 6 for g in groups)):
            continue
        if 13 <= len(digits) <= 19 and _CARD_PREFIX.match(digits) and luhn_valid(digits):
            yield m.span()


def _ibans(text: str) -> Iterable[tuple[int, int]]:
    for m in _IBAN.finditer(text):
        # an upper-case word after the IBAN may have been taken for its last group: try shorter ends
        raw = m.group()
        ends = [len(raw)] + [i for i in range(len(raw) - 1, 4, -1) if raw[i] == " "]
        for end in ends:
            if iban_valid(raw[:end]):
                yield m.start(), m.start() + end
                break


def _ssns(text: str) -> Iterable[tuple[int, int]]:
    return (m.span() for m in _SSN.finditer(text) if ssn_valid(m.group()))


def _ips(text: str) -> Iterable[tuple[int, int]]:
    for m in _IPV4.finditer(text):
        if not _VERSION_CUE.search(text, max(0, m.start() - 12), m.start()):
            yield m.span()
    for m in _IPV6.finditer(text):
        candidate = m.group()
        if candidate.count(":") < 2 or not re.search(r"[0-9A-Fa-f]", candidate):
            continue
        try:
            ipaddress.IPv6Address(candidate)
        except ValueError:
            continue
        yield m.span()


_NAME = r"(?:[A-Z]')?[A-Z][a-z]+(?:-[A-Z][a-z]+)?"
_INITIAL = r"[A-Z]\."
_FULL_NAME = rf"(?:{_NAME}|{_INITIAL})(?: (?:{_NAME}|{_INITIAL}))*"
_HONORIFIC = re.compile(rf"\b(?:Mr|Mrs|Ms|Miss|Mx|Dr|Prof|Sir|Dame|Herr|Frau|Mme|Mlle)\.? ({_FULL_NAME})")
_CUE = re.compile(
    rf"(?:\b(?:[Mm]y name is|[Nn]ame is|[Dd]ear|Hi|Hello|[Ss]igned|[Ss]igned by|[Cc]ontact person:?|"
    rf"Name:|Attn:?|Attention:)|(?:Regards|Sincerely|Best|Thanks|Cheers|Yours),\s*\n?) *({_FULL_NAME})"
)
_NOT_NAME_WORDS = """All Team Everyone There Sir Madam Support Customer Customers Service Sales Admin
    Friend Friends Colleagues Folks Guys Hiring Manager Mr Mrs Ms Dr The This That These Those Monday
    Tuesday Wednesday Thursday Friday Saturday Sunday January February March April May June July
    August September October November December Again Regards Thanks Thank Please Hello Hi Dear Yes No
    Not Unknown User Client Member Members Partner Partners Valued Account Owner Applicant"""
_NOT_NAMES = frozenset(_NOT_NAME_WORDS.split())
"""Capitalised words that follow a cue ("Hi Team", "Dear Customer") but are not names."""


def _names(text: str) -> Iterable[tuple[int, int]]:
    for pattern in (_HONORIFIC, _CUE):
        for m in pattern.finditer(text):
            start, end = m.span(1)
            words = text[start:end].split(" ")
            while words and (words[-1] in _NOT_NAMES or (words[-1].endswith(".") and len(words) > 1)):
                end -= len(words.pop()) + 1
            if words and words[0] not in _NOT_NAMES and not all(w.endswith(".") for w in words):
                yield start, end


_PATTERNS: dict[PiiType, _Candidates] = {
    "EMAIL": _emails,
    "IBAN": _ibans,
    "CREDIT_CARD": _cards,
    "US_SSN": _ssns,
    "IP_ADDRESS": _ips,
    "PHONE": _phones,
    "PERSON": _names,
}
_RANK = {t: i for i, t in enumerate(_PATTERNS)}  # validated types win overlaps

# A text can only hold a finding of a type when it holds that type's trigger: batches are screened with
# these in Arrow (pyarrow.compute), and only rows that match go through the Python detectors.
TRIGGERS: dict[PiiType, str] = {
    "EMAIL": "@",
    "PHONE": r"\+\d|\(\d{3}\)|\d{3}[.-]\d{3}|0[1-9]\d{0,3}[ .-]\d\d",
    "CREDIT_CARD": r"\d{13}|\d{3}[ .-]\d{3}",
    "IBAN": r"[A-Za-z]{2}\d\d",
    "US_SSN": r"\d{3}-\d\d-\d{4}",
    "IP_ADDRESS": r"\d\.\d{1,3}\.\d|:[0-9A-Fa-f]{0,4}:",
    "PERSON": r"\b(?:Mr|Mrs|Ms|Miss|Mx|Dr|Prof|Sir|Dame|Herr|Frau|Mme|Mlle)\.? [A-Z]|"
    r"\b(?:[Mm]y name is|[Nn]ame is|[Dd]ear|Hi|Hello|[Ss]igned|[Cc]ontact person|Name:|Attn|Attention:)|"
    r"(?:Regards|Sincerely|Best|Thanks|Cheers|Yours),",
}
"""A regex (RE2, for pyarrow.compute) that every text holding a finding of the type matches."""
ANY_NAME_TRIGGER = r"[A-Z][a-z]"
"""The trigger of PERSON when another detector (Presidio) finds names without cues."""


def find_pii(
    text: str, types: Collection[PiiType] = PII_TYPES, *, person: _Candidates | None = None
) -> list[Finding]:
    """Every finding of ``types`` in ``text``, in text order, never overlapping.

    Where candidates overlap, the more specific type wins (EMAIL, IBAN, CREDIT_CARD, US_SSN,
    IP_ADDRESS, PHONE, PERSON: an IBAN's digits are not also a phone number), then the longer span.
    ``person`` replaces the built-in name detector (Presidio's, with ``detector: presidio``).
    """
    candidates: list[Finding] = []
    for kind in types:
        detector = person if kind == "PERSON" and person is not None else _PATTERNS[kind]
        candidates.extend(Finding(kind, s, e) for s, e in detector(text) if e > s)
    if len(candidates) < 2:
        return candidates
    candidates.sort(key=lambda f: (_RANK[f.type], f.start - f.end, f.start))
    taken: list[Finding] = []
    for f in candidates:
        if all(f.end <= t.start or f.start >= t.end for t in taken):
            taken.append(f)
    return sorted(taken, key=lambda f: f.start)


# --- Presidio (optional) --------------------------------------------------------------------------


class PresidioMissing(RuntimeError):
    """``detector: presidio`` was asked for, but the package or its spaCy model is not installed."""


@lru_cache(maxsize=2)
def presidio_names(model: str) -> _Candidates:
    """A PERSON detector backed by Presidio's analyzer with spaCy model ``model`` (built once per
    process: loading a spaCy model takes seconds)."""
    problem = presidio_problem(model)
    if problem:
        raise PresidioMissing(problem)
    from presidio_analyzer import AnalyzerEngine
    from presidio_analyzer.nlp_engine import NlpEngineProvider

    config = {"nlp_engine_name": "spacy", "models": [{"lang_code": "en", "model_name": model}]}
    engine = AnalyzerEngine(nlp_engine=NlpEngineProvider(nlp_configuration=config).create_engine())

    def detect(text: str) -> list[tuple[int, int]]:
        return [(r.start, r.end) for r in engine.analyze(text=text, language="en", entities=["PERSON"])]

    return detect


# --- ops ------------------------------------------------------------------------------------------


class _PiiOp(TransformSpec):
    """Fields shared by the PII ops."""

    types: list[PiiType] = Field(
        default_factory=lambda: list(PII_TYPES),
        min_length=1,
        description="The PII types to find: EMAIL, PHONE, CREDIT_CARD, IBAN, US_SSN, IP_ADDRESS, PERSON.",
    )
    detector: PiiDetector = Field(
        "patterns",
        description="`patterns` (built in) or `presidio` (person names by Microsoft Presidio; needs "
        "`presidio-analyzer` and the spaCy model `presidio_model` installed on every machine).",
    )
    presidio_model: SpacyModel = Field(
        "en_core_web_lg",
        description="With `detector: presidio`, the spaCy model (an installed package name).",
    )

    @model_validator(mode="after")
    def _presidio_installed(self) -> _PiiOp:
        if self.detector == "presidio" and "PERSON" in self.types:
            problem = presidio_problem(self.presidio_model)
            if problem:
                raise ValueError(problem)
        return self


@register_op
class PiiDetect(_PiiOp):
    """Find personal data in text columns; each row gets a list of findings (type, column, span)."""

    op: Literal["pii_detect"] = Field(description="Find PII in text columns.")
    columns: list[str] = Field(min_length=1, description="The string columns to scan.")
    output: str = Field(
        "pii_findings",
        min_length=1,
        description="The column that receives the findings: a list of {type, column, start, end}, "
        "character offsets into that column's text (end exclusive), in column then text order.",
    )

    def output_columns(self, inputs: object) -> Columns | None:
        known = _first(inputs)
        return None if known is None else {**known, self.output: FINDINGS_TYPE}

    def column_refs(self) -> list[tuple[str, tuple[str | int, ...]]]:
        return [(c, ("columns", i)) for i, c in enumerate(self.columns)]


@register_op
class PiiMask(_PiiOp):
    """Replace personal data in text columns by its type, a keyed hash of it, or null the cell.

    The output depends only on the input (and the key), so reruns and the LLM response cache see the
    same text. Only string columns are scanned; other columns pass unchanged (cast them first).
    """

    op: Literal["pii_mask"] = Field(description="Mask, hash or drop PII in text columns.")
    columns: list[str] | dict[str, MaskMode] | Literal["*"] = Field(
        description="The string columns to mask: a list (each masked by `mode`), a mapping column -> "
        "mode (e.g. {body: mask, email: hash, ssn: drop}), or `*` for every string column.",
    )
    mode: MaskMode = Field(
        "mask",
        description="For a list of columns or `*`: `mask` replaces each finding with its type (`[EMAIL]`); "
        "`hash` with the type and the first 12 hex digits of HMAC-SHA256(key, value) "
        "(`[EMAIL:1a2b3c4d5e6f]`); `drop` sets the whole cell to null when it holds any finding.",
    )
    key_env: EnvVarName = Field(
        PII_KEY_ENV,
        description="For `hash`: the environment variable holding the key (16 characters or more) on "
        "every machine that runs tasks; there is no default key, a missing one fails the run.",
    )

    whole: list[str] = Field(
        default_factory=list,
        description="Columns masked whole: every non-null value (each leaf of a struct, list or map) "
        "becomes `[PII]` (`mode: hash`: `[PII:<keyed hash>]`; `drop`: null), whatever its type.",
    )
    any_type: bool = Field(
        False,
        description="Also scan columns that are not strings: numbers and binary are read as text, "
        "structs, lists and maps leaf by leaf; such a column becomes text (a nested one keeps its shape, "
        "with text leaves). `pii.mask_before_llm` sets it, so every value a prompt renders is scanned.",
    )

    @model_validator(mode="after")
    def _some_columns(self) -> PiiMask:
        if not self.columns:
            raise ValueError("`columns` is empty; name the columns to mask, or `*` for every string column")
        return self

    def output_columns(self, inputs: object) -> Columns | None:
        known = _first(inputs)
        if known is None or not (self.any_type or self.whole):
            return known
        targets = set(known) if self.columns == "*" else {*(self.modes() or {}), *self.whole}
        return {c: (_text_type_name(t) if c in targets else t) for c, t in known.items()}

    def modes(self) -> dict[str, MaskMode] | None:
        """The mode of each named column (None for `*`: every string column by `mode`)."""
        if self.columns == "*":
            return None
        if isinstance(self.columns, dict):
            return dict(self.columns)
        return dict.fromkeys(self.columns, self.mode)

    def column_refs(self) -> list[tuple[str, tuple[str | int, ...]]]:
        if isinstance(self.columns, dict):
            return [(c, ("columns", c)) for c in self.columns]
        refs: list[tuple[str, tuple[str | int, ...]]] = [
            (c, ("columns", i)) for i, c in enumerate(self.modes() or {})
        ]
        return refs + [(c, ("whole", i)) for i, c in enumerate(self.whole) if self.columns != "*"]


def _first(inputs: object) -> Columns | None:
    if isinstance(inputs, (list, tuple)) and inputs and inputs[0] is not None:
        return inputs[0]
    return None


# --- pii: {mask_before_llm: true} -----------------------------------------------------------------


def insert_pii_masks(pipeline: Pipeline) -> Pipeline:
    """``pipeline`` with a ``pii_mask`` node in front of every LLM node whose prompt reads columns.

    The node ``<llm node>__pii_mask`` reads the LLM node's input and masks the columns its templates
    read (every string column when a template reads the whole ``row``); the LLM node then reads it. Being
    per-batch, it is fused into the task that hands the batch to the LLM pool, so unmasked values never
    leave that task. Returns ``pipeline`` itself when ``pii.mask_before_llm`` is off.
    """
    from operators.llm import LlmSpec

    settings = pipeline.pii
    if settings is None or not settings.mask_before_llm:
        return pipeline
    nodes: dict[str, NodeSpec] = dict(pipeline.nodes)
    for name, spec in pipeline.nodes.items():
        if not isinstance(spec, LlmSpec) or not spec.inputs():
            continue
        columns: list[str] | Literal["*"] = "*" if _reads_whole_row(spec) else _prompt_columns(spec)
        if not columns:
            continue
        masks: list[str] = []
        for i, source in enumerate(spec.inputs()):
            mask_name = _free_name(f"{name}__pii_mask" + (f"_{i}" if len(spec.inputs()) > 1 else ""), nodes)
            nodes[mask_name] = PiiMask(
                op="pii_mask",
                description=f"inserted by pii.mask_before_llm: masks what '{name}' sends to its LLM",
                input=source,
                columns=columns,
                whole=[c for c in settings.columns if columns == "*" or c in columns],
                any_type=True,
                mode=settings.mode,
                types=list(settings.types),
                key_env=settings.key_env,
                detector=settings.detector,
                presidio_model=settings.presidio_model,
            )
            masks.append(mask_name)
        nodes[name] = spec.model_copy(update={"input": masks[0] if isinstance(spec.input, str) else masks})
    return pipeline.model_copy(update={"nodes": nodes})


def unreadable_prompt_inputs(plan: Plan) -> list[Problem]:
    """Warnings for columns an inserted mask would scan whose Arrow type the detectors cannot read (a
    union, an extension type...): their values would reach the provider as they are."""
    problems: list[Problem] = []
    for node in plan.nodes.values():
        spec = node.spec
        if not isinstance(spec, PiiMask) or not spec.any_type or not node.inputs:
            continue
        known = plan.nodes[node.inputs[0]].columns or {}
        named = spec.modes()
        for column, type_name in known.items():
            if (named is not None and column not in named) or column in spec.whole:
                continue
            if not readable_type_name(type_name):
                llm = next(iter(plan.consumers(node.id)), node.id)
                problems.append(
                    Problem(
                        ("nodes", llm, "prompt"),
                        f"pii.mask_before_llm cannot read column '{column}' (type {type_name}): its values "
                        "reach the provider unmasked",
                        "cast it to string first, or list it in `pii.columns` to mask it whole",
                        severity="warning",
                        code="pii_unreadable",
                    )
                )
    return problems


def _text_type_name(name: str) -> str:
    """The type name a masked column of type ``name`` has (numbers and binary become strings)."""
    from operators.pii_text import text_type

    try:
        kind = text_type(pa.type_for_alias(name))
    except (ValueError, KeyError):
        return "string" if name.startswith("decimal") else name
    return "string" if kind is None else str(kind)


def readable_type_name(name: str) -> bool:
    """Whether the PII ops can read values of the Arrow type written ``name`` (unknown names are not)."""
    from operators.pii_text import text_type

    try:
        return text_type(pa.type_for_alias(name)) is not None
    except (ValueError, KeyError):
        nested = name.startswith(("struct<", "list<", "large_list<", "fixed_size_list<", "map<", "decimal"))
        return nested and not any(word in name for word in ("union", "extension"))


def _prompt_columns(spec: NodeSpec) -> list[str]:
    return list(dict.fromkeys(column for column, _ in spec.column_refs()))


def _reads_whole_row(spec: NodeSpec) -> bool:
    """Whether a template of ``spec`` reads ``row`` (any column, by a name not known in advance)."""
    templates: Sequence[object] = [getattr(spec, f, None) for f in ("prompt", "system", "item")]
    env = sandbox()
    return any(
        isinstance(t, str) and "row" in meta.find_undeclared_variables(env.parse(t)) for t in templates
    )


def _free_name(name: str, taken: Mapping[str, object]) -> str:
    candidate, n = name, 2
    while candidate in taken:
        candidate, n = f"{name}_{n}", n + 1
    return candidate
