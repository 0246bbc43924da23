"""The query parameters of every keyset-paginated list (store/pagination.py): `limit` and `after`."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated

from fastapi import Depends, Query


@dataclass(frozen=True)
class PageParams:
    limit: int
    after: str | None


def page_params(
    limit: Annotated[int, Query(ge=1, le=100)] = 20,
    after: Annotated[str | None, Query(max_length=64, description="cursor: the last id of the previous page")] = None,
) -> PageParams:
    return PageParams(limit, after)


PageDep = Annotated[PageParams, Depends(page_params)]


def next_cursor(rows: list, has_more: bool) -> str | None:
    """The id to pass as `after` for the next page, or None on the last page."""
    return rows[-1].id if has_more else None
