"""Webhook delivery: every worker POSTs the outbox's due deliveries, signed per Standard Webhooks.

The events were written by store/ in the transaction of the change that caused them; here a
daemon thread (like the reconciler) claims due deliveries (store/webhooks.py::claim_delivery: one
UPDATE, so two workers never send the same try) and POSTs each with

    webhook-id: <the event id, the same on every retry>
    webhook-timestamp: <unix seconds of this try>
    webhook-signature: v1,<base64 HMAC-SHA256 over "{id}.{timestamp}.{body}" with the secret's bytes>

A 2xx is success. Anything else (an error status, a timeout, a refused or unreachable address)
is retried after REGDIFF_WEBHOOK_BACKOFF_SECONDS, doubling up to ..._BACKOFF_MAX_SECONDS, until
REGDIFF_WEBHOOK_MAX_ATTEMPTS tries, then the delivery is `failed` in the log. A worker that dies
mid-try leaves the delivery pending: it is tried again (at least once; receivers deduplicate on
webhook-id). Tries run on a small thread pool beside training, so a slow receiver delays nothing
else.

SSRF guard (`check_target`, also what the api checks at creation): http(s) only, at most 2,048
characters, and every address the host resolves to must be public unless
REGDIFF_WEBHOOK_ALLOW_PRIVATE=true. It is checked again at every try and the request goes to the
address that was checked (the name kept in Host and TLS SNI), so a name that resolves elsewhere
later (DNS rebinding) reaches nothing it should not.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import ipaddress
import json
import logging
import secrets
import socket
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import httpx

from store import webhooks
from store.db import session_scope
from store.settings import get_settings
from store.tables import as_utc

log = logging.getLogger(__name__)
MAX_URL_LENGTH = 2048
SCHEMES = ("http", "https")
SECRET_PREFIX = "whsec_"
BATCH = 32  # due deliveries looked at per pass and worker
SENDERS = 4  # tries in flight at once per worker
USER_AGENT = "regdiff-webhooks/1"

Address = ipaddress.IPv4Address | ipaddress.IPv6Address


class TargetRefused(ValueError):
    """The URL may not be called: its message says why, for the 422 and the delivery log."""


# ---- the URL guard ------------------------------------------------------------------------------


def check_url_shape(url: str) -> httpx.URL:
    """The URL parsed, or TargetRefused: http(s), a host, at most MAX_URL_LENGTH characters."""
    if len(url) > MAX_URL_LENGTH:
        raise TargetRefused(f"{len(url)} characters; at most {MAX_URL_LENGTH}")
    try:
        parsed = httpx.URL(url)
    except (httpx.InvalidURL, ValueError, TypeError):
        raise TargetRefused("not a valid URL") from None
    if parsed.scheme not in SCHEMES:
        raise TargetRefused(f"scheme {parsed.scheme or '(none)'!r} is not allowed; use http or https")
    if not parsed.host:
        raise TargetRefused("the URL names no host")
    return parsed


def forbidden_kind(address: Address) -> str | None:
    """Why the address is not a public one (loopback, private, ...), or None when it is."""
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped
    for kind in ("loopback", "link_local", "multicast", "unspecified", "reserved", "private"):  # most telling first
        if getattr(address, f"is_{kind}"):
            return kind.replace("_", "-")
    return None if address.is_global else "non-global"


def resolve(host: str, port: int) -> list[Address]:
    """Every address `host` resolves to (an IP literal is itself); TargetRefused when it resolves to none."""
    try:
        return [ipaddress.ip_address(host.strip("[]"))]
    except ValueError:
        pass
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except (OSError, UnicodeError, ValueError):
        raise TargetRefused(f"the host {host!r} does not resolve") from None
    return list(dict.fromkeys(ipaddress.ip_address(info[4][0].split("%")[0]) for info in infos))


def check_target(url: str, *, allow_private: bool) -> tuple[httpx.URL, list[Address]]:
    """(the parsed URL, its addresses) when a webhook may be sent there; otherwise TargetRefused.

    Multicast and unspecified addresses are never a receiver; the others that are not public
    (loopback, private, link-local, reserved) only with REGDIFF_WEBHOOK_ALLOW_PRIVATE=true."""
    parsed = check_url_shape(url)
    addresses = resolve(parsed.host, parsed.port or (443 if parsed.scheme == "https" else 80))
    for address in addresses:
        kind = forbidden_kind(address)
        if kind in ("multicast", "unspecified") or (kind is not None and not allow_private):
            hint = "" if kind in ("multicast", "unspecified") else " (REGDIFF_WEBHOOK_ALLOW_PRIVATE=true allows it)"
            raise TargetRefused(f"{parsed.host} resolves to {address}, a {kind} address{hint}")
    return parsed, addresses


# ---- signing ------------------------------------------------------------------------------------


def new_secret() -> str:
    """`whsec_` and 32 random bytes in base64: the HMAC key, as Standard Webhooks writes it."""
    return SECRET_PREFIX + base64.b64encode(secrets.token_bytes(32)).decode()


def sign(secret: str, msg_id: str, timestamp: int, body: bytes) -> str:
    """`v1,<base64 HMAC-SHA256 of "{id}.{timestamp}.{body}">` keyed by the secret's decoded bytes."""
    key = base64.b64decode(secret.removeprefix(SECRET_PREFIX))
    digest = hmac.new(key, f"{msg_id}.{timestamp}.".encode() + body, hashlib.sha256).digest()
    return f"v1,{base64.b64encode(digest).decode()}"


def body_of(payload: dict[str, Any], created_at: Any) -> bytes:
    """The JSON body: {"type", "timestamp" (when the event happened), "data"}, the same bytes every try."""
    document = {"type": payload["type"], "timestamp": as_utc(created_at).isoformat(), "data": payload["data"]}
    return json.dumps(document, separators=(",", ":")).encode()


# ---- one try ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Outcome:
    succeeded: bool
    response_code: int | None = None
    error: str | None = None


def post(url: str, *, msg_id: str, body: bytes, secret: str, allow_private: bool, timeout: float) -> Outcome:
    """One signed POST to the checked address of `url`; never raises for the receiver's faults."""
    try:
        parsed, addresses = check_target(url, allow_private=allow_private)
    except TargetRefused as exc:
        return Outcome(False, error=f"refused: {exc}")
    timestamp = int(time.time())
    headers = {"content-type": "application/json", "user-agent": USER_AGENT, "webhook-id": msg_id,
               "webhook-timestamp": str(timestamp), "webhook-signature": sign(secret, msg_id, timestamp, body),
               "host": parsed.netloc.decode()}
    pinned = parsed.copy_with(host=str(addresses[0]))
    extensions = {"sni_hostname": parsed.host} if parsed.scheme == "https" else {}
    try:
        with httpx.Client(timeout=timeout, follow_redirects=False, trust_env=False) as client:
            response = client.post(pinned, content=body, headers=headers, extensions=extensions)
    except httpx.TimeoutException:
        return Outcome(False, error=f"timed out after {timeout:g} s")
    except httpx.HTTPError as exc:
        return Outcome(False, error=f"request failed ({type(exc).__name__})")
    if response.is_success:
        return Outcome(True, response.status_code)
    return Outcome(False, response.status_code, f"HTTP {response.status_code}")


def backoff(attempts: int) -> float:
    """Seconds before the next try after `attempts` failed ones: doubling, capped."""
    settings = get_settings()
    return min(settings.webhook_backoff_seconds * 2 ** (attempts - 1), settings.webhook_backoff_max_seconds)


def attempt(delivery_id: str) -> None:
    """Send one claimed delivery and record the outcome (and when to try again)."""
    settings = get_settings()
    with session_scope() as session:
        found = webhooks.delivery_target(session=session, delivery_id=delivery_id)
        if found is None:  # its endpoint was deleted meanwhile
            return
        delivery, endpoint = found
        url, secret, attempts = endpoint.url, endpoint.secret, delivery.attempts
        msg_id, body = delivery.event_id, body_of(delivery.event.payload, delivery.event.created_at)
    outcome = post(url, msg_id=msg_id, body=body, secret=secret, allow_private=settings.webhook_allow_private,
                   timeout=settings.webhook_timeout_seconds)
    last = attempts >= settings.webhook_max_attempts
    retry_in = None if outcome.succeeded or last else backoff(attempts)
    if not outcome.succeeded:
        log.info("webhook delivery %s (endpoint %s) try %d: %s", delivery_id, endpoint.id, attempts, outcome.error)
    with session_scope() as session:
        webhooks.record_attempt(session=session, delivery_id=delivery_id, succeeded=outcome.succeeded,
                                response_code=outcome.response_code, error=outcome.error, retry_in=retry_in)


class Sender:
    """Tries in flight on a few threads, each claimed only when a thread is free for it: a slow
    receiver holds one thread, and the others keep delivering."""

    def __init__(self, threads: int = SENDERS):
        self.pool = ThreadPoolExecutor(max_workers=threads, thread_name_prefix="webhook")
        self.free = threading.BoundedSemaphore(threads)

    def pass_once(self) -> int:
        """Claim due deliveries, as many as there are free threads, and start them; returns how many."""
        settings = get_settings()
        hold = 4 * settings.webhook_timeout_seconds + 30  # longer than a try can take (connect, write, read)
        started = 0
        with session_scope() as session:
            due = webhooks.due_deliveries(session=session, limit=BATCH)
        for delivery_id in due:
            if not self.free.acquire(blocking=False):
                break
            with session_scope() as session:
                claimed = webhooks.claim_delivery(session=session, delivery_id=delivery_id, hold_seconds=hold)
            if not claimed:  # another worker took it
                self.free.release()
                continue
            self.pool.submit(self._run, delivery_id)
            started += 1
        return started

    def _run(self, delivery_id: str) -> None:
        try:
            attempt(delivery_id)
        except Exception:  # the database, not the receiver: the claim's hold expires and it is tried again
            log.exception("webhook delivery %s could not be recorded", delivery_id)
        finally:
            self.free.release()


def start_delivery_thread() -> threading.Event:
    """Deliver every REGDIFF_WEBHOOK_POLL_SECONDS until the returned event is set."""
    stop = threading.Event()
    interval = get_settings().webhook_poll_seconds
    sender = Sender()

    def loop() -> None:
        while not stop.wait(interval):
            try:
                sender.pass_once()
            except Exception:
                log.exception("webhook delivery pass failed")

    threading.Thread(target=loop, name="webhooks", daemon=True).start()
    return stop
