"""``/v1/tokens``: an admin creates, lists and revokes the service's tokens over the API, as
``headrace tokens`` does on the server's machine; an admin grants and sees only tokens within its own
tenants (every tenant for an admin of ``*``), and the new token is in the answer once, never again."""

from __future__ import annotations

import time
from typing import Any, Literal

from fastapi import APIRouter, HTTPException, Request, status
from pydantic import BaseModel, ConfigDict, Field

from engine.service.auth import Admin, Principal, note
from engine.service.tokens import ALL_TENANTS, TokenEntry, TokenError, TokenStore

router = APIRouter(tags=["tokens"])


class TokenRequest(BaseModel):
    """A token to create."""

    model_config = ConfigDict(extra="forbid")

    role: Literal["viewer", "operator", "admin"] = Field(description="What the token may do.")
    tenants: list[str] = Field(min_length=1, description="The tenants it acts for (`*`: every tenant).")
    expires_s: float | None = Field(None, gt=0, description="Seconds until it expires (default: never).")
    name: str = Field("", max_length=200, description="Who or what holds it.")


def _store(request: Request) -> TokenStore:
    store: TokenStore | None = getattr(request.app.state.authenticator, "store", None)
    if store is None:
        raise HTTPException(status.HTTP_404_NOT_FOUND, "this server has no token store")
    return store


def _within(caller: Principal, tenants: tuple[str, ...] | list[str]) -> bool:
    if caller.tenants is None:
        return True
    return ALL_TENANTS not in tenants and all(t in caller.tenants for t in tenants)


@router.post("/tokens", status_code=status.HTTP_201_CREATED)
def create_token(body: TokenRequest, request: Request, caller: Admin) -> Any:
    """Create a token; the answer holds it (`token`) once."""
    if not _within(caller, body.tenants):
        note(request, reason="granting tenants outside the admin's own")
        raise HTTPException(status.HTTP_403_FORBIDDEN, "a token may only be given tenants of your own")
    expires = time.time() + body.expires_s if body.expires_s else None
    try:
        token, entry = _store(request).create(body.role, body.tenants, expires=expires, name=body.name)
    except TokenError as exc:
        raise HTTPException(status.HTTP_422_UNPROCESSABLE_CONTENT, str(exc)) from None
    note(request, target=entry.id, tenant=",".join(entry.tenants))
    return {**entry.public(), "token": token}


@router.get("/tokens")
def list_tokens(request: Request, caller: Admin) -> Any:
    """The tokens within the admin's tenants (never the tokens themselves)."""
    return {"tokens": [e.public() for e in _store(request).entries() if _within(caller, e.tenants)]}


@router.delete("/tokens/{token_id}")
def revoke_token(token_id: str, request: Request, caller: Admin) -> Any:
    """Revoke a token: refused (401) from its next request on."""
    note(request, target=token_id)
    store = _store(request)
    entry: TokenEntry | None = store.get(token_id)
    if entry is None:
        raise HTTPException(status.HTTP_404_NOT_FOUND, f"no token {token_id!r}")
    if not _within(caller, entry.tenants):
        note(request, reason="a token outside the admin's tenants")
        raise HTTPException(status.HTTP_403_FORBIDDEN, "that token acts for tenants outside yours")
    return store.revoke(token_id).public()
