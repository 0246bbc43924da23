"""Database writes that survive a blip: a restart, a failover, a dropped connection.

A transient database error is infrastructure, never the run's fault: the worker retries the
write with bounded exponential backoff, and past REGDIFF_DB_RETRY_SECONDS raises
`DatabaseUnavailable`, on which it gives the run back to the queue without spending an
attempt (worker/training.py). The error text (SQL included) goes to the log only.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import TypeVar

from sqlalchemy.exc import InterfaceError, OperationalError
from sqlalchemy.orm import Session

from store.db import session_scope
from store.settings import get_settings

log = logging.getLogger(__name__)
T = TypeVar("T")
TRANSIENT = (OperationalError, InterfaceError)  # connection lost, server restarting, SQLite busy
FIRST_DELAY, MAX_DELAY = 0.5, 8.0


class DatabaseUnavailable(Exception):
    """The database stayed unreachable for REGDIFF_DB_RETRY_SECONDS."""


def retrying(write: Callable[[], T], what: str) -> T:
    """`write()` (one transaction), retried on transient database errors with backoff."""
    deadline = time.monotonic() + get_settings().db_retry_seconds
    delay = FIRST_DELAY
    while True:
        try:
            return write()
        except TRANSIENT as exc:
            if time.monotonic() + delay > deadline:
                raise DatabaseUnavailable(what) from exc
            log.warning("%s: database error (%s); retrying in %.1f s", what, type(exc).__name__, delay)
            time.sleep(delay)
            delay = min(2 * delay, MAX_DELAY)


def in_transaction(work: Callable[[Session], T], what: str) -> T:
    """`work(session)` in one transaction, retried through a database blip; its result."""

    def once() -> T:
        with session_scope() as session:
            return work(session)

    return retrying(once, what)
