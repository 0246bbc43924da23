"""Sweeps: one run per point of a grid over dotted paths into the RunSpec JSON.

A sweep row holds the base spec (canonical JSON) and `vary`, `{"lambda": [0.0, 0.1, 1.0],
"estimator.kind": ["tweedie", "ddim"]}`, with every value stored as the run's spec holds it
(normalised by RunSpec), so a run's point is read back from its own spec: `get_path(run.spec,
key)` is one of `vary[key]`. A sweep has no status column: it is derived from its runs.

Sweep status (`derive_status`), from the statuses of its runs:
- `queued`: every run is queued;
- `running`: some run is running or cancelling, or some are queued and others already finished;
- `succeeded`: every run succeeded;
- `cancelled`: every run was cancelled;
- `failed`: every run finished and none succeeded (some failed);
- `partially-failed`: every run finished, some succeeded and some failed or were cancelled.
"""

from __future__ import annotations

import copy
import itertools
from collections import Counter
from collections.abc import Iterable
from typing import Any

from sqlalchemy import delete, select
from sqlalchemy.orm import Session

from store import runs
from store.pagination import keyset_page
from store.tables import Run, Sweep

STATUSES = ("queued", "running", "succeeded", "failed", "cancelled", "partially-failed")
_MISSING = object()


# ---- dotted paths into spec JSON -------------------------------------------------------------


def _step(node: Any, part: str) -> Any:
    if isinstance(node, dict):
        return node.get(part, _MISSING)
    if isinstance(node, list) and part.isdigit() and int(part) < len(node):
        return node[int(part)]
    return _MISSING


def get_path(spec: dict[str, Any], path: str, default: Any = None) -> Any:
    """`get_path(spec, "regularizer.0.weight")`: dict keys and list indices, separated by dots."""
    node: Any = spec
    for part in path.split("."):
        node = _step(node, part)
        if node is _MISSING:
            return default
    return node


def has_path(spec: dict[str, Any], path: str) -> bool:
    return get_path(spec, path, _MISSING) is not _MISSING


def set_path(spec: dict[str, Any], path: str, value: Any) -> dict[str, Any]:
    """A deep copy of `spec` with `path` set to `value`; the path must exist (see has_path)."""
    out = copy.deepcopy(spec)
    *parents, last = path.split(".")
    node: Any = out
    for part in parents:
        node = _step(node, part)
    if isinstance(node, list):
        node[int(last)] = copy.deepcopy(value)
    else:
        node[last] = copy.deepcopy(value)
    return out


def grid(vary: dict[str, list[Any]]) -> list[dict[str, Any]]:
    """Every combination of the values, the first key varying slowest: [{key: value, ...}, ...]."""
    keys = list(vary)
    return [dict(zip(keys, combo)) for combo in itertools.product(*(vary[k] for k in keys))]


def point_of(run: Run, vary: dict[str, list[Any]]) -> dict[str, Any]:
    return {key: get_path(run.spec, key) for key in vary}


def grid_order(run: Run, vary: dict[str, list[Any]]) -> tuple[int, ...]:
    """The run's position in the grid (runs are shown in the order of the values given)."""
    position = []
    for key, values in vary.items():
        value = get_path(run.spec, key)
        position.append(values.index(value) if value in values else len(values))
    return tuple(position)


# ---- status ------------------------------------------------------------------------------------


def derive_status(statuses: Iterable[str]) -> str:
    """The sweep's status from its runs' statuses (see the module docstring)."""
    counts = Counter(statuses)
    total = sum(counts.values())
    if total == 0 or counts["queued"] == total:
        return "queued"
    if any(counts[s] for s in runs.ACTIVE):
        return "running"
    if counts["succeeded"] == total:
        return "succeeded"
    if counts["cancelled"] == total:
        return "cancelled"
    if counts["succeeded"] == 0:
        return "failed"
    return "partially-failed"


# ---- rows --------------------------------------------------------------------------------------


def create_sweep(
    *,
    session: Session,
    tenant: str,
    base: dict[str, Any],
    vary: dict[str, list[Any]],
    specs: list[dict[str, Any]],
    idempotency_key: str | None = None,
    options: dict[str, Any] | None = None,
    metadata: dict[str, str] | None = None,
) -> tuple[Sweep, bool]:
    """The sweep and one queued run per spec, in the caller's transaction (all or nothing).
    Every run gets the sweep's `metadata`, so a list filtered by it finds them.

    With an Idempotency-Key, run i gets the key `sweep:<key>:<i>`; a retry finds run 0 and
    returns its sweep (created False). Raises runs.IdempotencyConflict when the key was used
    for another request.
    """
    if idempotency_key is not None:
        replay = _replay(session, tenant, idempotency_key, base, vary, options, metadata)
        if replay is not None:
            return replay, False
    sweep = Sweep(tenant=tenant, base=base, vary=vary, options=options, meta=metadata or None)
    session.add(sweep)
    session.flush()
    for i, spec in enumerate(specs):
        key = f"sweep:{idempotency_key}:{i}" if idempotency_key is not None else None
        _, created = runs.create_run(session=session, tenant=tenant, spec=spec, idempotency_key=key,
                                     sweep_id=sweep.id, metadata=metadata)
        if not created:  # a concurrent request with this key won: answer with its sweep
            session.rollback()
            replay = _replay(session, tenant, idempotency_key, base, vary, options, metadata)
            if replay is None:
                raise runs.IdempotencyConflict(f"sweep:{idempotency_key}:{i}")
            return replay, False
    return sweep, True


def _replay(session: Session, tenant: str, key: str, base: dict, vary: dict, options: dict | None,
            metadata: dict | None) -> Sweep | None:
    first = session.scalar(select(Run).where(Run.tenant == tenant, Run.idempotency_key == f"sweep:{key}:0"))
    if first is None:
        return None
    sweep = get_sweep(session=session, tenant=tenant, sweep_id=first.sweep_id or "")
    if (sweep is None or sweep.base != base or sweep.vary != vary or (sweep.options or None) != (options or None)
            or (sweep.meta or None) != (metadata or None)):
        raise runs.IdempotencyConflict(first.sweep_id or first.id)
    return sweep


def get_sweep(*, session: Session, tenant: str, sweep_id: str) -> Sweep | None:
    return session.scalar(select(Sweep).where(Sweep.id == sweep_id, Sweep.tenant == tenant))


def sweep_runs(*, session: Session, sweep: Sweep) -> list[Run]:
    """The sweep's runs in grid order."""
    rows = list(session.scalars(select(Run).where(Run.sweep_id == sweep.id).order_by(Run.created_at, Run.id)))
    vary = sweep.vary or {}
    return sorted(rows, key=lambda run: grid_order(run, vary))


def delete_sweep(*, session: Session, sweep_id: str) -> None:
    """Removes the sweep and its runs with their events, checkpoints and samples (ON DELETE
    CASCADE); a worker on one of them finds its lease gone at its next beat and stops."""
    session.execute(delete(Run).where(Run.sweep_id == sweep_id))
    session.execute(delete(Sweep).where(Sweep.id == sweep_id))


def list_sweeps(*, session: Session, tenant: str, limit: int, after: str | None = None,
                metadata: dict[str, str] | None = None) -> tuple[list[Sweep], bool]:
    """Newest first; `after` is the id of the last sweep of the previous page (UnknownCursor if none).
    `metadata`: only sweeps with every one of these pairs."""
    query = select(Sweep).where(Sweep.tenant == tenant, *runs.has_metadata(Sweep.meta, metadata))
    return keyset_page(session, query, Sweep, tenant=tenant, limit=limit, after=after)
