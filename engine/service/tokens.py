"""The service's token store: bearer tokens with a role and tenants, kept only as salted hashes.

A token reads ``hr_<id>_<secret>``: the id (12 hex digits) names its entry, the secret (256 random bits)
is checked against the entry's salted SHA-256 in constant time. A slow password hash (argon2, bcrypt)
protects low-entropy secrets people choose; these secrets are random and as long as a key, so a salted
SHA-256 is already out of reach of guessing, and it costs microseconds per request instead of the tens
of milliseconds a memory-hard hash would add to every API call.

The store is one JSON file, ``$HEADRACE_HOME/tokens.json`` by default (mode 0600), written whole and
atomically under an exclusive lock, so ``headrace tokens`` and a running server can share it: the server
re-reads it when it changes, so a token revoked from the command line is refused at the next request.

Roles rank ``viewer`` < ``operator`` < ``admin``; a token holds for its tenants, ``*`` for every tenant.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import re
import secrets
import threading
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass, replace
from datetime import datetime, timezone
from pathlib import Path
from typing import Literal, cast

from engine.errors import HeadraceError
from engine.service.discovery import headrace_home

Role = Literal["viewer", "operator", "admin"]
ROLES: tuple[Role, ...] = ("viewer", "operator", "admin")
ALL_TENANTS = "*"
TOKENS_FILE = "tokens.json"
_FORMAT = 1
_PREFIX = "hr_"
_ID_HEX = 12
_TENANT = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,62}")
_DURATION = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}


class TokenError(HeadraceError):
    """A token cannot be created, found or stored as asked."""

    code = "token"
    exit_code = 1


def rank(role: str) -> int:
    """The role's place in ``viewer`` < ``operator`` < ``admin`` (-1 for an unknown role)."""
    return ROLES.index(cast(Role, role)) if role in ROLES else -1


@dataclass(frozen=True)
class TokenEntry:
    """One token as the store keeps it: never the secret, only its salted hash."""

    id: str
    role: Role
    tenants: tuple[str, ...]
    """Tenant names, or ``("*",)`` for every tenant."""
    created: float
    salt: str
    hash: str
    expires: float | None = None
    revoked: float | None = None
    name: str = ""
    """A label for people (who or what holds it)."""

    def state(self, now: float | None = None) -> Literal["active", "expired", "revoked"]:
        """Whether the token is usable now."""
        if self.revoked is not None:
            return "revoked"
        if self.expires is not None and (time.time() if now is None else now) >= self.expires:
            return "expired"
        return "active"

    def public(self) -> dict[str, object]:
        """What ``tokens list`` shows: everything but the salt and hash."""
        return {
            "id": self.id,
            "name": self.name,
            "role": self.role,
            "tenants": list(self.tenants),
            "created": self.created,
            "expires": self.expires,
            "revoked": self.revoked,
            "state": self.state(),
        }


@dataclass(frozen=True)
class Verdict:
    """What a presented token turned out to be: its entry (when its id is known) and whether it holds."""

    entry: TokenEntry | None
    problem: str | None
    """None when the token is valid; else why not (unknown, wrong secret, expired, revoked)."""

    @property
    def token_id(self) -> str | None:
        """The id the token names, when it names a stored one."""
        return self.entry.id if self.entry is not None else None


def tokens_path(env: Mapping[str, str] | None = None) -> Path:
    """``$HEADRACE_TOKENS``, else ``tokens.json`` under ``$HEADRACE_HOME``."""
    env = os.environ if env is None else env
    given = env.get("HEADRACE_TOKENS")
    return Path(given).expanduser().absolute() if given else headrace_home(env) / TOKENS_FILE


def token_id_of(token: str) -> str | None:
    """The id a token names (``hr_<id>_<secret>``), or None when it is not spelt as one."""
    if not token.startswith(_PREFIX) or len(token) < len(_PREFIX) + _ID_HEX + 2:
        return None
    ident, sep = token[len(_PREFIX) : len(_PREFIX) + _ID_HEX], token[len(_PREFIX) + _ID_HEX]
    if sep != "_" or not re.fullmatch(r"[0-9a-f]+", ident):
        return None
    return ident


def check_tenants(tenants: Sequence[str]) -> tuple[str, ...]:
    """The tenants of a new token, checked: names of letters, digits, ``.``, ``_`` and ``-``, or ``*``."""
    if not tenants:
        raise TokenError("a token needs at least one --tenant (or --tenant '*' for every tenant)")
    for tenant in tenants:
        if tenant != ALL_TENANTS and not _TENANT.fullmatch(tenant):
            raise TokenError(
                f"tenant {tenant!r}: use letters, digits, '.', '_' and '-' (at most 63), or '*' for every "
                "tenant"
            )
    return (ALL_TENANTS,) if ALL_TENANTS in tenants else tuple(dict.fromkeys(tenants))


def parse_expiry(text: str, now: float | None = None) -> float:
    """When a token given ``--expires TEXT`` expires: a duration from now (``30d``, ``12h``, ``2w``) or
    an ISO date (UTC unless it says otherwise)."""
    now = time.time() if now is None else now
    spec = text.strip().lower()
    if spec and spec[-1] in _DURATION:
        try:
            amount = float(spec[:-1])
        except ValueError:
            amount = -1.0
        if amount > 0:
            return now + amount * _DURATION[spec[-1]]
    try:
        when = datetime.fromisoformat(text.strip())
    except ValueError:
        raise TokenError(
            f"--expires {text!r}: give a duration (30d, 12h, 2w) or a date (2027-01-31)"
        ) from None
    stamp = (when if when.tzinfo else when.replace(tzinfo=timezone.utc)).timestamp()
    if stamp <= now:
        raise TokenError(f"--expires {text!r} is in the past")
    return stamp


def _digest(salt: str, secret: str) -> str:
    return hashlib.sha256(f"{salt}:{secret}".encode()).hexdigest()


class TokenStore:
    """The tokens of one service, in one JSON file (see the module's docstring)."""

    def __init__(self, path: Path | str | None = None) -> None:
        self.path = Path(path) if path is not None else tokens_path()
        self._lock = threading.Lock()
        self._seen: tuple[int, int, int] | None = None
        self._entries: dict[str, TokenEntry] = {}

    # -- writing (the command line, an admin's API call) -----------------------------------------------

    def create(
        self, role: str, tenants: Sequence[str], *, expires: float | None = None, name: str = ""
    ) -> tuple[str, TokenEntry]:
        """A new token: the token itself (shown once, never stored) and its entry."""
        if role not in ROLES:
            raise TokenError(f"role {role!r}: choose one of {', '.join(ROLES)}")
        kept = check_tenants(tenants)
        secret = secrets.token_urlsafe(32)
        salt = secrets.token_hex(16)
        with self._editing() as entries:
            ident = secrets.token_hex(_ID_HEX // 2)
            while ident in entries:  # 48 random bits: a clash is all but impossible, still never reused
                ident = secrets.token_hex(_ID_HEX // 2)
            entry = TokenEntry(
                id=ident,
                role=cast(Role, role),
                tenants=kept,
                created=time.time(),
                salt=salt,
                hash=_digest(salt, secret),
                expires=expires,
                name=name,
            )
            entries[ident] = entry
        return f"{_PREFIX}{ident}_{secret}", entry

    def revoke(self, ident: str) -> TokenEntry:
        """Revoke token ``ident`` (kept in the store, refused from now on); its entry."""
        with self._editing() as entries:
            entry = entries.get(ident)
            if entry is None:
                raise TokenError(f"no token {ident!r} in {self.path}; `headrace tokens list` shows them")
            if entry.revoked is None:
                entry = entries[ident] = replace(entry, revoked=time.time())
        return entry

    # -- reading ---------------------------------------------------------------------------------------

    def entries(self) -> list[TokenEntry]:
        """Every token, oldest first."""
        return sorted(self._current().values(), key=lambda e: (e.created, e.id))

    def get(self, ident: str) -> TokenEntry | None:
        """Token ``ident``'s entry, if any."""
        return self._current().get(ident)

    def verify(self, token: str, now: float | None = None) -> Verdict:
        """Check a presented token."""
        ident = token_id_of(token)
        entry = self._current().get(ident) if ident is not None else None
        if entry is None:
            return Verdict(None, "unknown token")
        secret = token[len(_PREFIX) + _ID_HEX + 1 :]
        if not secrets.compare_digest(_digest(entry.salt, secret), entry.hash):
            return Verdict(entry, "wrong secret for this token id")
        state = entry.state(now)
        return Verdict(entry, None if state == "active" else f"token {entry.id} is {state}")

    def _current(self) -> dict[str, TokenEntry]:
        """The entries, read again when the file changed since the last read (one ``stat`` otherwise)."""
        try:
            st = self.path.stat()
            seen: tuple[int, int, int] | None = (st.st_mtime_ns, st.st_size, st.st_ino)
        except FileNotFoundError:
            seen = None
        with self._lock:
            if seen != self._seen:
                self._entries = self._read() if seen is not None else {}
                self._seen = seen
            return self._entries

    def _read(self) -> dict[str, TokenEntry]:
        try:
            data = json.loads(self.path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            return {}
        except (OSError, ValueError) as exc:
            raise TokenError(f"cannot read the token store {self.path}: {exc}") from None
        if (
            not isinstance(data, dict)
            or data.get("format") != _FORMAT
            or not isinstance(data.get("tokens"), list)
        ):
            raise TokenError(f"{self.path} is not a headrace token store (format {_FORMAT})")
        out: dict[str, TokenEntry] = {}
        for number, raw in enumerate(data["tokens"]):
            try:
                entry = TokenEntry(**{**raw, "tenants": tuple(raw["tenants"])})
            except (TypeError, KeyError) as exc:
                raise TokenError(f"{self.path}: token #{number} is malformed ({exc})") from None
            out[entry.id] = entry
        return out

    @contextlib.contextmanager
    def _editing(self) -> Iterator[dict[str, TokenEntry]]:
        """The entries to change, written back atomically (mode 0600) under the store's lock."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        lock = os.open(self.path.with_name(f".{self.path.name}.lock"), os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(lock, fcntl.LOCK_EX)
            entries = self._read()
            yield entries
            body = {"format": _FORMAT, "tokens": [asdict(e) for e in entries.values()]}
            tmp = self.path.with_name(f".{self.path.name}.{os.getpid()}")
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            with os.fdopen(fd, "w", encoding="utf-8") as fh:
                json.dump(body, fh, indent=1)
                fh.flush()
                os.fsync(fh.fileno())
            os.chmod(tmp, 0o600)
            tmp.replace(self.path)
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)
            os.close(lock)
