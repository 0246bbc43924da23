"""Rate limiting: every /v1 request spends a token of its caller's bucket (api/security.py's RateLimiter)."""

from __future__ import annotations

from fastapi import Request

from api.deps.auth import Principal, PrincipalDep
from api.security import retry_after
from service.errors import Problem
from store.settings import is_loopback


def rate_limited(request: Request, principal: PrincipalDep) -> Principal:
    """Every /v1 request spends a token of its key's bucket.

    Without a key (keys off), a remote client spends from its address's bucket; the local user
    of the embedded default on loopback is not limited."""
    limiter = getattr(request.app.state, "rate_limiter", None)
    client = request.client.host if request.client else ""
    if limiter is None or (principal.key_id is None and is_loopback(client)):
        return principal
    wait = limiter.take(principal.key_id or f"anonymous:{client}")
    if wait > 0:
        raise Problem(429, "Too Many Requests",
                      f"rate limit of {limiter.rate * 60:g} requests per minute per key exceeded;"
                      f" retry in {retry_after(wait)} s", headers={"Retry-After": retry_after(wait)})
    return principal
