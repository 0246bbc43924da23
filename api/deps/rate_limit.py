"""Rate limiting: every /v1 request spends from its caller's window (api/rate_limiter.py).

A key spends from the key's window; a caller without a key (where keys are optional) from
its address's window. Requests that fail authentication spent from the address's window in
`authenticate` already."""

from __future__ import annotations

from fastapi import Request

from api.deps.auth import Principal, PrincipalDep, client_address
from api.rate_limiter import enforce
from store.settings import is_loopback


def rate_limited(request: Request, principal: PrincipalDep) -> Principal:
    """Spend one request of the key's window, or of the address's without a key.

    Only the local user of the embedded default (no key needed: loopback, no proxy) is not
    limited; once keys are on, loopback callers are counted like any other."""
    limiter = request.app.state.rate_limiter
    if principal.key_id is not None:
        enforce(request.state, limiter, f"key:{principal.key_id}", spend=True, what="per key")
    elif not (request.client and is_loopback(request.client.host)):
        enforce(request.state, limiter, client_address(request), spend=True, what="per client address")
    return principal
