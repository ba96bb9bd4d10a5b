"""Write ``labelled.jsonl``: texts with embedded PII at exact character spans, and hard negatives.

Deterministic (a fixed seed), so the file in the repository is exactly what this script writes::

    python tests/data/pii/make_labelled.py            # rewrites tests/data/pii/labelled.jsonl
    python tests/data/pii/make_labelled.py OUT.jsonl  # writes elsewhere

Each line is ``{"id": N, "text": ..., "spans": [{"type", "start", "end"}], "kind": "positive" |
"negative"}``; offsets are character offsets into ``text`` (end exclusive). Every value is synthetic:
card numbers and IBANs are generated to pass their checks, SSNs to fall in valid ranges.
"""

from __future__ import annotations

import ipaddress
import json
import random
import sys
from pathlib import Path
from typing import Any

SEED = 20261126
HERE = Path(__file__).resolve().parent

_FIRST = """Alice Bruno Chen Dmitri Elena Farah Georg Hana Ivan Julia Kofi Laura Mateo Nadia Oscar Priya
Quentin Rosa Samuel Tomas Ursula Viktor Wen Yusuf Zoe Amara Liam Sofia Noah Emma"""
FIRST = _FIRST.split()
_LAST = """Smith Novak Garcia Okafor Schmidt Rossi Tanaka Dubois Kowalski Jensen Haddad Silva Murphy
Nguyen Petrov Larsen Moreau Fischer Costa Walker O'Brien Meyer-Lang"""
LAST = _LAST.split()
DOMAINS = ["example.com", "mail.example.org", "corp.example.co.uk", "example.de", "test.example.net"]
_WORDS = """the invoice was sent twice and the refund has not arrived yet please check the account
status before Friday our team cannot log in since the update the dashboard shows wrong totals
shipment delayed at the warehouse thanks for the quick reply we need a copy of the contract"""
WORDS = _WORDS.split()


def _luhn_complete(prefix: str, length: int, rng: random.Random) -> str:
    body = prefix + "".join(rng.choice("0123456789") for _ in range(length - len(prefix) - 1))
    for check in "0123456789":
        digits = body + check
        total = 0
        for i, ch in enumerate(reversed(digits)):
            d = int(ch)
            if i % 2:
                d = d * 2 - 9 if d > 4 else d * 2
            total += d
        if total % 10 == 0:
            return digits
    raise AssertionError("unreachable")


def _luhn_broken(rng: random.Random) -> str:
    good = _luhn_complete("4", 16, rng)
    return good[:-1] + str((int(good[-1]) + 1 + rng.randrange(8)) % 10)


def card(rng: random.Random) -> str:
    kind = rng.choice(["visa", "visa", "mc", "amex", "discover"])
    if kind == "amex":
        n = _luhn_complete(rng.choice(["34", "37"]), 15, rng)
        groups = [n[:4], n[4:10], n[10:]]
    else:
        prefix = {"visa": "4", "mc": str(rng.randint(51, 55)), "discover": "6011"}[kind]
        n = _luhn_complete(prefix, 16, rng)
        groups = [n[i : i + 4] for i in range(0, 16, 4)]
    return rng.choice([" ", "-", ""]).join(groups)


def _iban_check(country: str, bban: str) -> str:
    moved = bban + country + "00"
    value = int("".join(str(int(ch, 36)) for ch in moved))
    return f"{98 - value % 97:02d}"


def iban(rng: random.Random, *, valid: bool = True) -> str:
    digits = "0123456789"
    letters = "ABCDEFGHIJKLMNOPQRSTUVWXYZ"
    country = rng.choice(["DE", "GB", "FR", "NL", "ES", "IT"])
    pick = lambda pool, n: "".join(rng.choice(pool) for _ in range(n))  # noqa: E731
    bban = {
        "DE": lambda: pick(digits, 18),
        "GB": lambda: pick(letters, 4) + pick(digits, 14),
        "FR": lambda: pick(digits, 10) + pick(digits, 11) + pick(digits, 2),
        "NL": lambda: pick(letters, 4) + pick(digits, 10),
        "ES": lambda: pick(digits, 20),
        "IT": lambda: pick(letters, 1) + pick(digits, 10) + pick(digits, 12),
    }[country]()
    check = _iban_check(country, bban)
    if not valid:
        check = f"{(int(check) + 1 + rng.randrange(90)) % 97 + 2:02d}"
        if check == _iban_check(country, bban):
            check = f"{(int(check) + 1) % 100:02d}"
    compact = country + check + bban
    if rng.random() < 0.5:
        return compact
    return " ".join(compact[i : i + 4] for i in range(0, len(compact), 4))


def ssn(rng: random.Random) -> str:
    area = rng.choice([a for a in range(1, 900) if a != 666])
    return f"{area:03d}-{rng.randint(1, 99):02d}-{rng.randint(1, 9999):04d}"


def phone(rng: random.Random) -> str:
    d = lambda n: "".join(rng.choice("0123456789") for _ in range(n))  # noqa: E731
    nanp = f"{rng.randint(2, 9)}{d(2)}"
    exchange = f"{rng.randint(2, 9)}{d(2)}"
    return rng.choice(
        [
            f"+1 {nanp}-{exchange}-{d(4)}",
            f"+1{nanp}{exchange}{d(4)}",
            f"({nanp}) {exchange}-{d(4)}",
            f"{nanp}-{exchange}-{d(4)}",
            f"{nanp}.{exchange}.{d(4)}",
            f"+44 20 {rng.randint(7, 8)}{d(3)} {d(4)}",
            f"+44 7{d(3)} {d(6)}",
            f"+49 30 {d(8)}",
            f"+49 (0)89 {d(7)}",
            f"+33 6 {d(2)} {d(2)} {d(2)} {d(2)}",
            f"+31 6 {d(8)}",
            f"020 {rng.randint(7, 8)}{d(3)} {d(4)}",
            f"06 {d(2)} {d(2)} {d(2)} {d(2)}",
            f"030 {d(4)} {d(4)}",
            f"0{rng.randint(2, 9)}{d(2)}-{d(6)}",
        ]
    )


def ip(rng: random.Random) -> str:
    if rng.random() < 0.65:
        return ".".join(str(rng.randint(1 if i == 0 else 0, 255)) for i in range(4))
    addr = ipaddress.IPv6Address(rng.getrandbits(128))
    if rng.random() < 0.5:
        groups = addr.exploded.split(":")
        groups[2:5] = ["0", "0", "0"]
        addr = ipaddress.IPv6Address(":".join(groups))
    return addr.compressed if rng.random() < 0.7 else addr.exploded


def email(rng: random.Random) -> str:
    first, last = rng.choice(FIRST).lower(), rng.choice(LAST).lower().replace("'", "")
    local = rng.choice(
        [f"{first}.{last}", f"{first[0]}{last}", f"{first}+orders", f"{last}{rng.randint(1, 99)}"]
    )
    return f"{local}@{rng.choice(DOMAINS)}"


def name(rng: random.Random) -> str:
    return f"{rng.choice(FIRST)} {rng.choice(LAST)}"


FILL = {"EMAIL": email, "PHONE": phone, "CREDIT_CARD": card, "IBAN": iban, "US_SSN": ssn, "IP_ADDRESS": ip}

POSITIVE = {
    "EMAIL": [
        "Please write to {} about the refund.",
        "contact: {}",
        "Sender <{}> asked twice.",
        "cc {}, thanks",
    ],
    "PHONE": ["Call me back on {} after 5pm.", "Phone: {}", "my mobile is {}.", "Reach the desk at {} today"],
    "CREDIT_CARD": ["Charged to card {} yesterday.", "card number: {}", "Paid with {} but no receipt"],
    "IBAN": ["Please refund to IBAN {} asap.", "Bank account {}", "transfer to {}, reference invoice"],
    "US_SSN": ["SSN {} on file.", "my social security number is {}.", "Tax id (SSN): {}"],
    "IP_ADDRESS": ["Login from {} was blocked.", "The server at {} is down", "client ip={} rejected"],
}
PERSON_CUED = [
    "Dear {},\nthe order is late.",
    "Hello {}, thanks for writing.",
    "My name is {} and I need help.",
    "Dr. {} will review the claim.",
    "Thanks for the help.\nRegards,\n{}",
    "Best,\n{}",
    "Ms. {} asked for a callback.",
    "Signed by {} on the last page.",
    "Name: {}",
]
PERSON_UNCUED = ["{} called about the invoice.", "I spoke with {} yesterday.", "Forwarded to {} in sales."]
NEGATIVES = [
    "Order #A-{n8} shipped on 2024-03-15.",
    "order number {n10} is still pending",
    "Your order ORD-00{n2}-{n4}-{n4} was cancelled.",
    "Meeting moved to 15.03.2024 at 10:30:00.",
    "Due date 03/15/2024, invoice {n6}.",
    "Upgraded to version 2.4.1.0 and then v1.12.3.",
    "Running release 10.0.19041.1 on build 22631.",
    "Total: $1,299.99 (was € 2.499,00).",
    "Card 4111 1111 1111 111{bad_last} was declined.",
    "Tried card number {bad_card} with no luck.",
    "IBAN {bad_iban} is rejected by the bank.",
    "Reference 987-65-{n4} and 666-{n2}-{n4} are test ids.",
    "Employee id 123-00-{n4} and 321-45-0000 are placeholders.",
    "Tracking 1Z999AA1{n10} via UPS.",
    "ISBN 978-3-16-148410-0, page 42.",
    "Room 1204, Building 7, floor 3.",
    "Coordinates 48.8566, 2.3522 near the office.",
    "Commit deadbeef{n4} fixed it; ratio 3:2:1.",
    "Temperature 21.5 C, humidity 45%, 3 of 4 items.",
    "Hi Team, the Monday report is ready.",
    "The Customer Service desk opens at 9.",
    "Quantity 1,000,000 units at 0.25 each.",
]


# Hand-written cases the generated ones do not cover; `[[TYPE:value]]` marks a labelled span. Some are
# missed by design (an SSN with spaces, a local 7-digit number, names without a cue), so the measured
# recall is not flattered by a set written alongside the detectors.
HARD = [
    "Mail [[EMAIL:John.Smith@Example.COM]] today",
    "cc [[EMAIL:ops-team@sub.example.io]] and the desk",
    "call [[PHONE:+1-800-555-0199]] (toll free)",
    "Phone [[PHONE:+49 (0)30 1234 5678]] ask for billing",
    "call [[PHONE:555-0134]] after lunch",
    "refund to [[IBAN:de89 3704 0044 0532 0130 00]] please",
    "iban: [[IBAN:FR14 2004 1010 0505 0001 3M02 606]]",
    "card [[CREDIT_CARD:4111.1111.1111.1111]] expired",
    "amex [[CREDIT_CARD:3714 496353 98431]] was charged",
    "Visa [[CREDIT_CARD:4012888888881881]] on file",
    "ssn [[US_SSN:123 45 6789]] written with spaces",
    "from [[IP_ADDRESS:fe80::1ff:fe23:4567:890a]] on the lan",
    "proxy [[IP_ADDRESS:127.0.0.1]]:8080 refused",
    "Kindly ask [[PERSON:Mary Lee]] to sign",
    "From: [[PERSON:Priya Natarajan]] <[[EMAIL:priya.n@example.org]]>",
    "Dear Mr. [[PERSON:Tanaka]], your order",
    "Hi [[PERSON:Kofi]], thanks for the quick reply",
    "MAC 00:1A:2B:3C:4D:5E on port 3",
    "logged at 12:30:45.123 by the cron job",
    "SKU 0412 345 678 is out of stock",
    "GUID 123e4567-e89b-12d3-a456-426614174000",
    "semver 1.2.3-beta.4 and 2.0.0-rc.1",
    "call ext. 4021 for help",
    "Invoice 2024-000123 paid",
    "bank code 37040044 and sort code 20-00-00",
    "New York, NY 10001; Dear Sir or Madam,",
    "score 4.5/5 from 1,234 reviews",
    "build 20240315.1 deployed to 10 hosts",
    "Account ID 4000-0000-0000 is closed",
    "phone: see above",
    # numbers glued to words (issue 18): letters around a card, phone or SSN do not hide it
    "card[[CREDIT_CARD:4012888888881881]] on file",
    "paid with visa[[CREDIT_CARD:4111-1111-1111-1111]]thanks",
    "ref_[[CREDIT_CARD:5555555555554444]]_x",
    "tel[[PHONE:+14155552671]] anytime",
    "mobile:[[PHONE:415-555-2671]]ext",
    "ssn[[US_SSN:123-45-6789]]on record",
    "ORD4111111111111112 shipped",
    "build20240315001 deployed, tag v1234567890123",
]


def _marked(source: str) -> dict[str, Any]:
    text, spans, at = "", [], 0
    while (open_at := source.find("[[", at)) >= 0:
        close = source.index("]]", open_at)
        kind, value = source[open_at + 2 : close].split(":", 1)
        text += source[at:open_at]
        spans.append({"type": kind, "start": len(text), "end": len(text) + len(value)})
        text += value
        at = close + 2
    text += source[at:]
    return {"text": text, "spans": spans, "kind": "positive" if spans else "negative"}


def _digits(rng: random.Random, n: int) -> str:
    return str(rng.randint(1, 9)) + "".join(rng.choice("0123456789") for _ in range(n - 1))


def _filler(rng: random.Random) -> str:
    return " ".join(rng.choice(WORDS) for _ in range(rng.randint(3, 9)))


def _compose(rng: random.Random, parts: list[tuple[str, str | None]]) -> dict[str, Any]:
    """Join (text, type) parts with filler; a part with a type is a labelled span."""
    text, spans = "", []
    for i, (piece, kind) in enumerate(parts):
        if i:
            text += rng.choice([" ", ". ", "; ", "\n"]) + _filler(rng) + " "
        if kind is None:
            text += piece
        else:
            # the piece is a template `{}` around the value; place the span on the value
            template, value = piece.split("\x00")
            before, after = template.split("{}")
            start = len(text) + len(before)
            text += before + value + after
            spans.append({"type": kind, "start": start, "end": start + len(value)})
    return {"text": text, "spans": spans}


def rows() -> list[dict[str, Any]]:
    rng = random.Random(SEED)
    out: list[dict[str, Any]] = []
    kinds = list(FILL)
    for i in range(210):
        parts: list[tuple[str, str | None]] = []
        for _ in range(rng.choice([1, 1, 2, 2, 3])):
            kind = kinds[i % len(kinds)] if not parts else rng.choice([*kinds, "PERSON"])
            if kind == "PERSON":
                template = rng.choice(PERSON_CUED)
                parts.append((template + "\x00" + name(rng), "PERSON"))
            else:
                parts.append((rng.choice(POSITIVE[kind]) + "\x00" + FILL[kind](rng), kind))
        if rng.random() < 0.3:
            parts.append((_filler(rng), None))
        out.append({**_compose(rng, parts), "kind": "positive"})
    for _ in range(30):
        pool = PERSON_CUED if rng.random() < 0.7 else PERSON_UNCUED
        out.append({**_compose(rng, [(rng.choice(pool) + "\x00" + name(rng), "PERSON")]), "kind": "positive"})
    for i in range(66):
        fields = {
            "n2": _digits(rng, 2),
            "n4": _digits(rng, 4),
            "n6": _digits(rng, 6),
            "n8": _digits(rng, 8),
            "n10": _digits(rng, 10),
            "bad_last": str((2 + rng.randrange(9)) % 10),
            "bad_card": _luhn_broken(rng),
            "bad_iban": iban(rng, valid=False),
        }
        text = NEGATIVES[i % len(NEGATIVES)].format(**fields)
        out.append({**_compose(rng, [(text, None), (_filler(rng), None)]), "kind": "negative"})
    out += [_marked(source) for source in HARD]
    return [{"id": n, **row} for n, row in enumerate(out)]


def write(path: Path) -> None:
    """Write the labelled set to ``path``, one JSON object a line."""
    with path.open("w", encoding="utf-8") as fh:
        for row in rows():
            fh.write(json.dumps(row, ensure_ascii=False) + "\n")


if __name__ == "__main__":
    write(Path(sys.argv[1]) if len(sys.argv) > 1 else HERE / "labelled.jsonl")
