"""Authentication: who is calling (a Principal: tenant and key), from `Authorization: Bearer <key>`."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated

from fastapi import Depends, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from api.deps.session import SessionDep, SettingsDep
from api.rate_limiter import enforce
from api.security import host_name, is_ip, is_loopback_name, over_socket, through_proxy
from service.errors import Problem
from store import keys
from store.settings import Settings, is_loopback

DEFAULT_TENANT = "default"


def keys_required_because(settings: Settings, request: Request | None = None) -> str | None:
    """Why this request must carry a key, or None where keys are optional (auto mode, loopback).

    In auto mode a keyless request is trusted only when it is plainly the local user: it came
    straight to a loopback interface, named a loopback Host, and passed no proxy. A reverse proxy,
    a tunnel (cloudflared, ngrok, `ssh -R`) or a UNIX socket in front of the api would otherwise
    hand every remote caller the default tenant."""
    if settings.auth_enabled:
        return f"REGDIFF_AUTH={settings.auth}, REGDIFF_HOST={settings.host}"
    if settings.auth == "off" or request is None:
        return None
    scope = request.scope
    proxy = through_proxy(scope)
    if proxy:
        return f"the request came through a proxy ({proxy} header)"
    if over_socket(scope):
        return "the request came over a UNIX socket"
    host = host_name(scope)
    if host is None or not is_loopback_name(host):
        return f"the Host {host!r} is not a loopback name"
    server = str(scope["server"][0])
    if is_ip(server) and not is_loopback(server):  # `uvicorn --host 0.0.0.0` without REGDIFF_HOST
        return f"the request arrived on the non-loopback interface {server}"
    return None


def auth_required(settings: Settings, request: Request | None = None) -> bool:
    return keys_required_because(settings, request) is not None


STATE_CHANGING = frozenset({"POST", "PUT", "PATCH", "DELETE"})
CLIENT_HEADER = "X-Regdiff-Client"  # sent by the SDK and the CLI on every request


def refuse_forgeable(request: Request) -> None:
    """403 for a keyless state-changing request a cross-site page could have sent.

    A page may POST form fields, multipart files or text/plain anywhere without asking (a CORS
    "simple" request); `Content-Type: application/json` or a custom header makes the browser ask
    first (a preflight), which the api never grants to a page it does not list in
    REGDIFF_CORS_ORIGINS. With a key there is nothing to forge: a page does not have it."""
    if request.method not in STATE_CHANGING or request.headers.get(CLIENT_HEADER):
        return
    media_type = request.headers.get("content-type", "").partition(";")[0].strip().lower()
    if media_type != "application/json":
        raise Problem(403, "Forbidden",
                      f"a {request.method} without an API key must send 'Content-Type: application/json' or an"
                      f" '{CLIENT_HEADER}: 1' header (a cross-site page can send neither); the SDK and CLI send it",
                      code="cross-site-request")


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

    A header that is present is always checked, even where keys are optional. Before a key is
    looked up, the client address's rate-limit window must have room, and every 401 spends
    from it: a flood of invented keys is a 429 without reaching the database."""
    authorization = request.headers.get("authorization")
    required_because = keys_required_because(settings, request)
    if authorization is None and required_because is None:
        refuse_forgeable(request)
        return Principal(DEFAULT_TENANT, None)
    limiter = request.app.state.rate_limiter
    address = client_address(request)
    enforce(request.state, limiter, address, spend=False, what="per client address without a valid key")
    scheme, _sep, key = (authorization or "").partition(" ")
    if scheme.lower() != "bearer" or not key.strip():
        enforce(request.state, limiter, address, spend=True, what="per client address without a valid key")
        why = f" (keys are required: {required_because})" if required_because else ""
        raise Problem(401, "Unauthorized", f"send 'Authorization: Bearer <api key>'{why}",
                      headers={"WWW-Authenticate": 'Bearer realm="regdiff"'})
    row = keys.find_key(session=session, key=key.strip())
    if row is None:
        enforce(request.state, limiter, address, spend=True, what="per client address without a valid key")
        raise Problem(401, "Unauthorized", "unknown or revoked api key",
                      headers={"WWW-Authenticate": 'Bearer realm="regdiff", error="invalid_token"'})
    return Principal(row.tenant, row.id)


def client_address(request: Request) -> str:
    """The rate-limit identity of a caller without a valid key: its address (the proxy's, unless
    uvicorn's --forwarded-allow-ips trusts the proxy to name the client)."""
    return f"address:{request.client.host if request.client else 'unix-socket'}"


PrincipalDep = Annotated[Principal, Depends(authenticate)]


def current_tenant(principal: PrincipalDep) -> str:
    return principal.tenant


TenantDep = Annotated[str, Depends(current_tenant)]
