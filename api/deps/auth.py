"""Authentication: who is calling (a Principal: tenant and key), from `Authorization: Bearer <key>`."""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass
from typing import Annotated

from fastapi import Depends, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from api.deps.session import SessionDep, SettingsDep
from service.errors import Problem
from store import keys
from store.settings import Settings, is_loopback

DEFAULT_TENANT = "default"


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


def current_tenant(principal: PrincipalDep) -> str:
    return principal.tenant


TenantDep = Annotated[str, Depends(current_tenant)]
