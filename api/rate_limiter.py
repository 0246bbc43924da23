"""Rate limits shared by every api process: the `limits` library on Redis (or memory when embedded).

What is counted: a key's requests (per key), and per client address the requests that carry
no valid key (keyless callers where keys are optional, and every 401). The address's bucket
is looked at *before* a key is looked up in the database, so a flood of invented keys is a
429 without touching it (`api/deps/auth.py`).

REGDIFF_RATE_LIMIT_PER_MINUTE and REGDIFF_RATE_LIMIT_BURST keep their token-bucket meaning as
a moving window: at most `burst` requests in any window of `burst / rate` minutes, which lets
a burst through at once and then sustains exactly `rate` per minute. The window is what
`limits` stores (a list of hit times per identity, trimmed by one Lua script in Redis), so
every api process sees the same count.
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass

from limits import RateLimitItem, RateLimitItemPerSecond
from limits.errors import StorageError
from limits.storage import storage_from_string
from limits.strategies import MovingWindowRateLimiter

from service.errors import Problem

log = logging.getLogger(__name__)
KEY_PREFIX = "regdiff-ratelimit"
RATE_LIMIT_HEADERS = ("RateLimit-Limit", "RateLimit-Remaining", "RateLimit-Reset", "RateLimit-Policy")


def window_item(per_minute: float, burst: int) -> RateLimitItem:
    """`burst` requests per `burst / rate` (whole seconds, at least one; the amount follows so the
    sustained rate stays `per_minute`)."""
    seconds = max(1, round(burst * 60 / per_minute))
    return RateLimitItemPerSecond(max(1, round(per_minute * seconds / 60)), seconds)


@dataclass(frozen=True)
class Verdict:
    """One look at a bucket: allowed or not, and what the RateLimit-* headers say."""

    allowed: bool
    limit: int
    remaining: int
    reset_seconds: int  # until the oldest counted request leaves the window: one more is allowed

    def headers(self, window_seconds: int) -> list[tuple[bytes, bytes]]:
        """draft-ietf-httpapi-ratelimit-headers fields, for SecurityHeadersMiddleware to add."""
        values = (self.limit, self.remaining, self.reset_seconds, f"{self.limit};w={window_seconds}")
        return [(name.lower().encode(), str(value).encode()) for name, value in zip(RATE_LIMIT_HEADERS, values)]


class RateLimiter:
    """Moving-window limits per identity ("key:<id>" or "address:<ip>") in shared storage.

    When the storage cannot be reached the request is let through and a warning is logged:
    the limiter protects the database from a runaway client, and an unreachable Redis must
    not take the api down with it (the broker is down too, and /readyz says so)."""

    def __init__(self, per_minute: float, burst: int, storage_uri: str):
        self.per_minute = per_minute
        self.item = window_item(per_minute, burst) if per_minute > 0 else None
        self.storage_uri = storage_uri
        if self.item is not None:
            storage = storage_from_string(storage_uri, key_prefix=KEY_PREFIX, wrap_exceptions=True,
                                          socket_timeout=2, socket_connect_timeout=2)
            self._strategy = MovingWindowRateLimiter(storage)

    @property
    def enabled(self) -> bool:
        return self.item is not None

    @property
    def window_seconds(self) -> int:
        return self.item.get_expiry() if self.item else 0

    def hit(self, identity: str) -> Verdict | None:
        """Spend one request of `identity`'s window; None when limits are off or storage is down."""
        return self._look(identity, spend=True)

    def peek(self, identity: str) -> Verdict | None:
        """Whether one more request would be allowed, spending nothing."""
        return self._look(identity, spend=False)

    def _look(self, identity: str, *, spend: bool) -> Verdict | None:
        if self.item is None:
            return None
        try:
            allowed = (self._strategy.hit if spend else self._strategy.test)(self.item, identity)
            stats = self._strategy.get_window_stats(self.item, identity)
        except StorageError as exc:
            log.warning("rate limit storage unreachable, request let through: %s", type(exc.storage_error).__name__)
            return None
        reset = max(1, math.ceil(stats.reset_time - time.time()))
        return Verdict(allowed, self.item.amount, stats.remaining, reset)


def enforce(request_state: object, limiter: RateLimiter, identity: str, *, spend: bool, what: str) -> None:
    """Check (and spend from) `identity`'s window; remember the headers; 429 when it is empty.

    `request_state` is the request's `state`, which SecurityHeadersMiddleware reads the
    RateLimit-* headers from (so they reach every response, images and streams included)."""
    verdict = limiter.hit(identity) if spend else limiter.peek(identity)
    if verdict is None:
        return
    request_state.rate_limit_headers = verdict.headers(limiter.window_seconds)
    if not verdict.allowed:
        raise Problem(429, "Too Many Requests",
                      f"rate limit of {limiter.per_minute:g} requests per minute {what} exceeded;"
                      f" retry in {verdict.reset_seconds} s",
                      headers={"Retry-After": str(verdict.reset_seconds)})
