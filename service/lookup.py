"""The two answers every lookup shares: a tenant's row or a 404, and a list page or a 422 on its cursor."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

from service.errors import invalid, not_found
from store.pagination import UnknownCursor

Row = TypeVar("Row")


def found(row: Row | None, kind: str, ident: str) -> Row:
    """The row, or 404 `no <kind> with id ...`: another tenant's row is looked up as missing."""
    if row is None:
        raise not_found(kind, ident)
    return row


def page(fetch: Callable[..., tuple[list[Row], bool]], *, after: str | None,
         **query: Any) -> tuple[list[Row], bool]:
    """`fetch(after=..., **query)`, a store list function; an unknown cursor is a 422 naming `after`."""
    try:
        return fetch(after=after, **query)
    except UnknownCursor:
        raise invalid("after", f"no item {after!r} in this list; pass the next_cursor of the previous page,"
                      " or leave `after` out for the first page") from None
