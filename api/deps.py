"""Dependencies as Annotated aliases: the session, the tenant, and owned resources."""

from __future__ import annotations

import ipaddress
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Annotated

from fastapi import Depends, Path, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from sqlalchemy import select
from sqlalchemy.orm import Session

from api.errors import Problem, not_found
from api.security import retry_after
from store import keys, runs
from store.db import new_session
from store.settings import Settings, get_settings, is_loopback
from store.tables import Run, SampleJob

DEFAULT_TENANT = "default"


def get_session() -> Iterator[Session]:
    with new_session() as session:
        yield session


SessionDep = Annotated[Session, Depends(get_session)]
SettingsDep = Annotated[Settings, Depends(get_settings)]


def auth_required(settings: Settings, request: Request | None = None) -> bool:
    """On whenever the api listens beyond loopback, unless REGDIFF_AUTH says otherwise.

    Besides REGDIFF_HOST, the server address a connection arrived on counts (defence in depth):
    `uvicorn --host 0.0.0.0` without REGDIFF_HOST still requires keys on a non-loopback interface.
    """
    if settings.auth_enabled:
        return True
    if settings.auth == "off" or request is None:
        return False
    server = request.scope.get("server")
    host = str(server[0]) if server else ""
    return _is_ip(host) and not is_loopback(host)


def _is_ip(host: str) -> bool:
    try:
        ipaddress.ip_address(host.strip("[]"))
    except ValueError:
        return False
    return True


@dataclass(frozen=True)
class Principal:
    """Who is calling: the tenant, and the key (None when keys are not required and none was sent)."""

    tenant: str
    key_id: str | None


# Declared for the OpenAPI document (the docs' "Authorize" button); the header is read below.
bearer_scheme = HTTPBearer(auto_error=False, description="an API key from `regdiff-admin keys create`")


def authenticate(
    request: Request, session: SessionDep, settings: SettingsDep,
    _: Annotated[HTTPAuthorizationCredentials | None, Depends(bearer_scheme)],
) -> Principal:
    """`Authorization: Bearer <key>` -> the key's tenant. The key is hashed, never logged.

    A header that is present is always checked, even where keys are optional."""
    authorization = request.headers.get("authorization")
    if authorization is None and not auth_required(settings, request):
        return Principal(DEFAULT_TENANT, None)
    scheme, _sep, key = (authorization or "").partition(" ")
    if scheme.lower() != "bearer" or not key.strip():
        raise Problem(401, "Unauthorized", "send 'Authorization: Bearer <api key>'",
                      headers={"WWW-Authenticate": 'Bearer realm="regdiff"'})
    row = keys.find_key(session=session, key=key.strip())
    if row is None:
        raise Problem(401, "Unauthorized", "unknown or revoked api key",
                      headers={"WWW-Authenticate": 'Bearer realm="regdiff", error="invalid_token"'})
    return Principal(row.tenant, row.id)


PrincipalDep = Annotated[Principal, Depends(authenticate)]


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


def current_tenant(principal: PrincipalDep) -> str:
    return principal.tenant


TenantDep = Annotated[str, Depends(current_tenant)]


def owned_run(run_id: Annotated[str, Path()], session: SessionDep, tenant: TenantDep) -> Run:
    """The run if this tenant owns it; another tenant's run answers 404, exactly like a missing one."""
    run = runs.get_run(session=session, tenant=tenant, run_id=run_id)
    if run is None:
        raise not_found("run", run_id)
    return run


OwnedRun = Annotated[Run, Depends(owned_run)]


def owned_sample(sample_id: Annotated[str, Path()], session: SessionDep, tenant: TenantDep) -> SampleJob:
    job = session.scalar(select(SampleJob).where(SampleJob.id == sample_id, SampleJob.tenant == tenant))
    if job is None:
        raise not_found("sample job", sample_id)
    return job


OwnedSample = Annotated[SampleJob, Depends(owned_sample)]
