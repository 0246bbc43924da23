"""Dependencies as Annotated aliases: the session, the tenant, and owned resources."""

from __future__ import annotations

import hashlib
import ipaddress
from collections.abc import Iterator
from typing import Annotated

from fastapi import Depends, Header, Path
from sqlalchemy import select
from sqlalchemy.orm import Session

from api.errors import Problem, not_found
from store import runs
from store.db import new_session
from store.settings import Settings, get_settings
from store.tables import ApiKey, Run, SampleJob

DEFAULT_TENANT = "default"


def get_session() -> Iterator[Session]:
    with new_session() as session:
        yield session


SessionDep = Annotated[Session, Depends(get_session)]
SettingsDep = Annotated[Settings, Depends(get_settings)]


def auth_required(settings: Settings) -> bool:
    """On whenever the api listens beyond loopback, unless REGDIFF_AUTH says otherwise."""
    if settings.auth != "auto":
        return settings.auth == "required"
    try:
        return not ipaddress.ip_address(settings.host).is_loopback
    except ValueError:
        return settings.host != "localhost"


def hash_key(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def current_tenant(
    session: SessionDep, settings: SettingsDep, authorization: Annotated[str | None, Header()] = None
) -> str:
    if authorization is None and not auth_required(settings):
        return DEFAULT_TENANT
    unauthorized = {"WWW-Authenticate": "Bearer"}
    scheme, _, key = (authorization or "").partition(" ")
    if scheme.lower() != "bearer" or not key.strip():
        raise Problem(401, "Unauthorized", "send 'Authorization: Bearer <api key>'", headers=unauthorized)
    tenant = session.scalar(
        select(ApiKey.tenant).where(ApiKey.key_hash == hash_key(key.strip()), ApiKey.revoked_at.is_(None))
    )
    if tenant is None:
        raise Problem(401, "Unauthorized", "unknown or revoked api key", headers=unauthorized)
    return tenant


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
