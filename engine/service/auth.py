"""Who is calling: bearer-token authentication as one small, replaceable piece.

An :class:`Authenticator` turns the token of a request into a :class:`Principal`, or None (401). The
warm engine uses :class:`LocalToken`, the one random token of its discovery file; a multi-user service
plugs in a token store with roles and tenants behind the same interface.
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass, field
from typing import Annotated, Protocol

from fastapi import Depends, HTTPException, Request, status
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer


@dataclass(frozen=True)
class Principal:
    """An authenticated caller."""

    name: str
    """Who it is (a token's id), for logs and records."""
    roles: frozenset[str] = field(default_factory=frozenset)
    tenants: frozenset[str] | None = None
    """The tenants it may act for; None: every tenant."""


class Authenticator(Protocol):
    """Maps a bearer token to the caller it belongs to."""

    def authenticate(self, token: str) -> Principal | None:
        """The caller, or None when the token is unknown, expired or revoked."""
        ...


class LocalToken:
    """One random token, for the local user who can read the discovery file."""

    def __init__(self, token: str | None = None) -> None:
        self.token = token or secrets.token_urlsafe(32)

    def authenticate(self, token: str) -> Principal | None:
        """The local owner when ``token`` is this one (compared in constant time)."""
        if secrets.compare_digest(token.encode(), self.token.encode()):
            return Principal("local", frozenset({"admin"}))
        return None


_bearer = HTTPBearer(auto_error=False, description="The token from the engine's discovery file.")


def authenticated(
    request: Request, credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)]
) -> Principal:
    """FastAPI dependency: the caller of ``request``, or 401 with a ``WWW-Authenticate`` challenge."""
    authenticator: Authenticator = request.app.state.authenticator
    principal = authenticator.authenticate(credentials.credentials) if credentials is not None else None
    if principal is None:
        raise HTTPException(
            status.HTTP_401_UNAUTHORIZED,
            "a valid bearer token is required (the `token` in the engine's discovery file)",
            headers={"WWW-Authenticate": "Bearer"},
        )
    return principal
