"""Metadata: the caller's own string pairs on runs and sweeps (an experiment name, a ticket, the id
of a row in the caller's database), returned with them, matched by `?metadata[key]=value` in lists
and changed by `PATCH /v1/runs/{id}` as a JSON merge patch (a key set to null is removed).

Bounded so that it stays a label, not a store: at most MAX_PAIRS pairs, keys of 1-40 characters
from [A-Za-z0-9_.-] (safe in a query string and in a JSON path), values of at most MAX_VALUE
characters. A sweep's metadata is copied to every run it makes.
"""

from __future__ import annotations

import re
from collections.abc import Mapping

from service.errors import invalid, invalid_fields

MAX_PAIRS = 16
MAX_KEY = 40
MAX_VALUE = 500
KEY = re.compile(rf"[A-Za-z0-9_.-]{{1,{MAX_KEY}}}")
KEY_RULE = f"keys are 1-{MAX_KEY} characters of A-Z, a-z, 0-9, '_', '.', '-'"


def _bad_key(key: str) -> str:
    shown = key if len(key) <= 60 else key[:60] + "..."
    return f"key {shown!r} is not allowed; {KEY_RULE}"


def check(metadata: Mapping[str, str] | None, field: str = "metadata") -> dict[str, str]:
    """The pairs as stored ({} for none), or a 422 naming `field` (or `field.<key>`) at fault."""
    pairs = dict(metadata or {})
    errors = []
    if len(pairs) > MAX_PAIRS:
        errors.append({"field": field, "message": f"{len(pairs)} pairs; at most {MAX_PAIRS}"})
    for key, value in pairs.items():
        if not KEY.fullmatch(key):
            errors.append({"field": field, "message": _bad_key(key)})
        elif len(value) > MAX_VALUE:
            errors.append({"field": f"{field}.{key}", "message": f"{len(value)} characters; at most {MAX_VALUE}"})
    if errors:
        raise invalid_fields(errors)
    return pairs


def merge(current: Mapping[str, str] | None, patch: Mapping[str, str | None]) -> dict[str, str]:
    """JSON merge patch (RFC 7396) of flat string pairs: a value replaces, null removes; then `check`."""
    merged = dict(current or {})
    for key, value in patch.items():
        if value is None:
            merged.pop(key, None)
        else:
            merged[key] = value
    return check(merged)


def check_filter(pairs: Mapping[str, str]) -> dict[str, str]:
    """`?metadata[key]=value` pairs: the same key rule; a bad key is a 422 naming `metadata[key]`."""
    for key in pairs:
        if not KEY.fullmatch(key):
            raise invalid(f"metadata[{key[:60]}]", _bad_key(key))
    if len(pairs) > MAX_PAIRS:
        raise invalid("metadata", f"{len(pairs)} filters; at most {MAX_PAIRS}")
    return dict(pairs)
