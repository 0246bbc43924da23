"""Keyset pagination, newest first, for every list of tenant-owned rows (runs, sweeps, ...).

A page ends at a row; the next page starts after that row's (created_at, id), so rows inserted
meanwhile never shift or repeat a page. The cursor is the id of the last row of the previous page.
An id that is not one of the tenant's rows is refused (UnknownCursor), never read as "page 1".
"""

from __future__ import annotations

from typing import Any, TypeVar

from sqlalchemy import Select
from sqlalchemy.orm import Session

Row = TypeVar("Row")


class UnknownCursor(LookupError):
    """`after` names no row of this list (a typo, another tenant's id, or a deleted row)."""


def keyset_page(session: Session, query: Select[Any], table: type[Row], *, tenant: str, limit: int,
                after: str | None) -> tuple[list[Row], bool]:
    """(rows, has_more): at most `limit` rows of `query` (already filtered) after the cursor row.

    `table` has `id`, `tenant` and `created_at` columns; the cursor row is looked up in the
    tenant's rows only, so another tenant's id is as unknown as a missing one."""
    if after:
        anchor = session.get(table, after)
        if anchor is None or anchor.tenant != tenant:
            raise UnknownCursor(after)
        query = query.where(
            (table.created_at < anchor.created_at)
            | ((table.created_at == anchor.created_at) & (table.id < anchor.id))
        )
    rows = list(session.scalars(query.order_by(table.created_at.desc(), table.id.desc()).limit(limit + 1)))
    return rows[:limit], len(rows) > limit
