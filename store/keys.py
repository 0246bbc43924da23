"""API keys: minted once, stored only as a SHA-256, each bound to one tenant.

Why SHA-256 and not bcrypt/scrypt/argon2: a slow hash protects *low-entropy* secrets
(passwords) against offline guessing once the table leaks. These keys are 256 random bits
from `secrets`, so even a leaked hash cannot be guessed (2^256 tries at any hash speed), and a
fast, unsalted digest lets the api find the key with one indexed lookup per request instead of
spending ~100 ms of CPU on every call. The same reasoning is GitHub's and Stripe's for tokens.

A key looks like `rdk_<43 url-safe chars>`; the prefix makes a leaked key easy to spot
(secret scanners, logs) and to tell from other credentials.
"""

from __future__ import annotations

import hashlib
import re
import secrets

from sqlalchemy import func, select, update
from sqlalchemy.orm import Session

from store.tables import ApiKey, utcnow

KEY_PREFIX = "rdk_"
TENANT_PATTERN = re.compile(r"^[a-z0-9][a-z0-9_.-]{0,63}$")


def hash_key(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def check_tenant(tenant: str) -> str:
    if not TENANT_PATTERN.fullmatch(tenant):
        raise ValueError(
            f"invalid tenant {tenant!r}; allowed: 1-64 characters, lowercase letters, digits, '_', '.', '-',"
            " starting with a letter or digit"
        )
    return tenant


def create_key(*, session: Session, tenant: str) -> tuple[ApiKey, str]:
    """A new key for `tenant`: returns the row and the key itself, which is never stored."""
    key = KEY_PREFIX + secrets.token_urlsafe(32)
    row = ApiKey(tenant=check_tenant(tenant), key_hash=hash_key(key))
    session.add(row)
    session.flush()
    return row, key


def find_key(*, session: Session, key: str) -> ApiKey | None:
    """The live (unrevoked) key row for a presented key, or None."""
    return session.scalar(select(ApiKey).where(ApiKey.key_hash == hash_key(key), ApiKey.revoked_at.is_(None)))


def revoke_key(*, session: Session, key_id: str) -> bool:
    """Revoke at once (the next request with it is a 401); False if no live key has this id."""
    result = session.execute(
        update(ApiKey).where(ApiKey.id == key_id, ApiKey.revoked_at.is_(None)).values(revoked_at=utcnow())
    )
    return result.rowcount == 1


def list_keys(*, session: Session, tenant: str | None = None) -> list[ApiKey]:
    query = select(ApiKey).order_by(ApiKey.created_at, ApiKey.id)
    if tenant is not None:
        query = query.where(ApiKey.tenant == tenant)
    return list(session.scalars(query))


def count_live_keys(*, session: Session) -> int:
    return session.scalar(select(func.count()).select_from(ApiKey).where(ApiKey.revoked_at.is_(None))) or 0
