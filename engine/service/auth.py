"""Who is calling and what they may do: bearer tokens, roles and tenants, as small replaceable pieces.

An :class:`Authenticator` turns the token of a request into a :class:`Principal` or refuses it with
:class:`Unauthenticated` (401). The server's is :class:`ServiceTokens`: the owner token of the
discovery file (the local user, an admin of every tenant) and the tokens of the token store
(:mod:`engine.service.tokens`). :class:`LocalToken` alone is the owner token.

Authorisation is two checks, each a 403: the caller's role ranks at least the route's
(``viewer`` reads, ``operator`` also submits, cancels and resumes, ``admin`` also manages tokens and
schedules), and the tenant a request acts for is one of the caller's. Every refusal leaves its reason in
the request's state, where the audit trail (:mod:`engine.service.audit_trail`) finds it.
"""

from __future__ import annotations

import secrets
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Annotated, Any, Protocol

from fastapi import Depends, HTTPException, Request, status
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from engine.service.tokens import ALL_TENANTS, Role, TokenStore, rank

OWNER = "owner"
"""The name of the discovery file's token in audit entries."""
COOKIE = "headrace_token"
"""The web view's cookie holding a signed-in token; it stands for the token on GET requests only."""
_SAFE = frozenset({"GET", "HEAD"})


@dataclass(frozen=True)
class Principal:
    """An authenticated caller."""

    name: str
    """Who it is: a token's id, or ``owner`` for the discovery file's token."""
    role: Role = "admin"
    tenants: frozenset[str] | None = None
    """The tenants it may act for; None: every tenant."""

    def has(self, role: Role) -> bool:
        """Whether the caller's role ranks at least ``role``."""
        return rank(self.role) >= rank(role)

    def may_act_for(self, tenant: str) -> bool:
        """Whether ``tenant`` is one of the caller's."""
        return self.tenants is None or tenant in self.tenants


class Unauthenticated(Exception):
    """The token is missing, unknown, expired or revoked (401)."""

    def __init__(self, reason: str, token_id: str | None = None) -> None:
        super().__init__(reason)
        self.reason = reason
        self.token_id = token_id


class Authenticator(Protocol):
    """Maps a bearer token to the caller it belongs to."""

    def authenticate(self, token: str) -> Principal:
        """The caller; raises :class:`Unauthenticated` when the token is not valid."""
        ...


class LocalToken:
    """One random token, for the local user who can read the discovery file: an admin of every tenant."""

    def __init__(self, token: str | None = None) -> None:
        self.token = token or secrets.token_urlsafe(32)

    def authenticate(self, token: str) -> Principal:
        """The owner when ``token`` is this one (compared in constant time)."""
        if secrets.compare_digest(token.encode(), self.token.encode()):
            return Principal(OWNER, "admin", None)
        raise Unauthenticated("unknown token")


class ServiceTokens:
    """The owner token, then the token store's tokens (re-read when the store's file changes)."""

    def __init__(self, owner: LocalToken, store: TokenStore) -> None:
        self.owner = owner
        self.store = store

    @property
    def token(self) -> str:
        """The owner token (written to the discovery file)."""
        return self.owner.token

    def authenticate(self, token: str) -> Principal:
        """The owner, or the store's token's holder; :class:`Unauthenticated` says why not."""
        if secrets.compare_digest(token.encode(), self.owner.token.encode()):
            return Principal(OWNER, "admin", None)
        verdict = self.store.verify(token)
        if verdict.problem is not None or verdict.entry is None:
            raise Unauthenticated(verdict.problem or "unknown token", verdict.token_id)
        entry = verdict.entry
        tenants = None if ALL_TENANTS in entry.tenants else frozenset(entry.tenants)
        return Principal(entry.id, entry.role, tenants)


_bearer = HTTPBearer(auto_error=False, description="A token from `headrace tokens create` (or engine.json).")


def note(request: Request, **facts: Any) -> None:
    """Leave facts about the request (caller, tenant, run, reason) for its audit entry."""
    for key, value in facts.items():
        if value is not None:
            setattr(request.state, key, value)


async def authenticated(
    request: Request, credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)]
) -> Principal:
    """FastAPI dependency: the caller of ``request``, or 401 with a ``WWW-Authenticate`` challenge.

    Async (on the server's loop) because it is cheap: one ``stat`` of the token store (a revoked token is
    refused on the next request) and a salted SHA-256. A sync dependency would take a worker thread per
    request, and under load those threads queue behind the submissions compiling pipelines."""
    authenticator: Authenticator = request.app.state.authenticator
    if credentials is None and request.method in _SAFE and request.cookies.get(COOKIE):
        # the web view's pages read the API (the event stream, the report) with the signed-in cookie
        credentials = HTTPAuthorizationCredentials(scheme="Bearer", credentials=request.cookies[COOKIE])
    if credentials is None:
        note(request, reason="no bearer token")
        raise _unauthorized("a bearer token is required (`headrace tokens create`, or engine.json's token)")
    try:
        principal = authenticator.authenticate(credentials.credentials)
    except Unauthenticated as exc:
        note(request, token=exc.token_id, reason=exc.reason)
        raise _unauthorized(f"the bearer token was refused: {exc.reason}") from None
    note(request, token=principal.name, role=principal.role)
    return principal


def _unauthorized(detail: str) -> HTTPException:
    return HTTPException(status.HTTP_401_UNAUTHORIZED, detail, headers={"WWW-Authenticate": "Bearer"})


def require(role: Role) -> Callable[..., Awaitable[Principal]]:
    """FastAPI dependency factory: the caller, when its role ranks at least ``role`` (else 403)."""

    async def dependency(request: Request, caller: Annotated[Principal, Depends(authenticated)]) -> Principal:
        if not caller.has(role):
            note(request, reason=f"role {caller.role} may not do this (needs {role})")
            raise HTTPException(
                status.HTTP_403_FORBIDDEN, f"this needs the {role} role; the token's role is {caller.role}"
            )
        return caller

    dependency.__name__ = f"require_{role}"
    return dependency


def tenant_of(caller: Principal) -> str:
    """The tenant a request that names none acts for: the token's only tenant, else ``default``."""
    only = sorted(caller.tenants) if caller.tenants is not None else []
    return only[0] if len(only) == 1 else "default"


def for_tenant(request: Request, caller: Principal, tenant: str) -> None:
    """Refuse (403) a request that acts for a tenant that is not the caller's."""
    note(request, tenant=tenant)
    if not caller.may_act_for(tenant):
        note(request, reason=f"tenant {tenant} is not one of the token's")
        raise HTTPException(
            status.HTTP_403_FORBIDDEN,
            f"tenant {tenant!r} is not one of this token's tenants "
            f"({', '.join(sorted(caller.tenants or ()))})",
        )


Viewer = Annotated[Principal, Depends(require("viewer"))]
Operator = Annotated[Principal, Depends(require("operator"))]
Admin = Annotated[Principal, Depends(require("admin"))]
