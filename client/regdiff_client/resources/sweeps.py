"""Sweeps: one base RunSpec, one run per combination of the varied fields (once per seed)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from .._plan import Plan, create, fetch, fetch_bytes, remove
from ..types import Sweep
from ._base import AsyncResource, SyncResource


def _create(base: Mapping[str, Any], vary: Mapping[str, Sequence[Any]], seeds: Sequence[int] | None,
            max_fcd_increase: float | None, metadata: Mapping[str, str] | None) -> Plan[Sweep]:
    body: dict[str, Any] = {"base": dict(base), "vary": {k: list(v) for k, v in vary.items()}}
    if seeds is not None:
        body["seeds"] = list(seeds)
    if max_fcd_increase is not None:
        body["max_fcd_increase"] = max_fcd_increase
    if metadata is not None:
        body["metadata"] = dict(metadata)
    return create("/v1/sweeps", Sweep.from_json, json=body)


def _report(sweep_id: str) -> Plan[dict[str, Any]]:
    return fetch(f"/v1/sweeps/{sweep_id}/report")


class Sweeps(SyncResource):
    def create(self, *, base: Mapping[str, Any], vary: Mapping[str, Sequence[Any]],
               seeds: Sequence[int] | None = None, max_fcd_increase: float | None = None,
               metadata: Mapping[str, str] | None = None) -> Sweep:
        """e.g. `vary={"lambda": [0, 0.1, 1]}` makes three runs of `base`; `seeds=[0, 1]` trains each
        point once per seed (and the lambda=0 baseline is added per seed when `vary` lacks it).
        `metadata` goes on the sweep and on each of its runs."""
        return self._runner.run(_create(base, vary, seeds, max_fcd_increase, metadata))

    def get(self, sweep_id: str) -> Sweep:
        return self._runner.run(fetch(f"/v1/sweeps/{sweep_id}", Sweep.from_json))

    def report(self, sweep_id: str) -> dict[str, Any]:
        """Each point over its seeds with 95% intervals, its verdict against the lambda=0 baseline,
        `best` (or null) and `statement`, and the runs side by side, as JSON."""
        return self._runner.run(_report(sweep_id))

    def report_png(self, sweep_id: str) -> bytes:
        return self._runner.run(fetch_bytes(f"/v1/sweeps/{sweep_id}/report.png"))

    def delete(self, sweep_id: str) -> None:
        """Removes the sweep with all its runs, whatever their status (running ones stop)."""
        self._runner.run(remove(f"/v1/sweeps/{sweep_id}"))


class AsyncSweeps(AsyncResource):
    async def create(self, *, base: Mapping[str, Any], vary: Mapping[str, Sequence[Any]],
                     seeds: Sequence[int] | None = None, max_fcd_increase: float | None = None,
                     metadata: Mapping[str, str] | None = None) -> Sweep:
        return await self._runner.run(_create(base, vary, seeds, max_fcd_increase, metadata))

    async def get(self, sweep_id: str) -> Sweep:
        return await self._runner.run(fetch(f"/v1/sweeps/{sweep_id}", Sweep.from_json))

    async def report(self, sweep_id: str) -> dict[str, Any]:
        return await self._runner.run(_report(sweep_id))

    async def report_png(self, sweep_id: str) -> bytes:
        return await self._runner.run(fetch_bytes(f"/v1/sweeps/{sweep_id}/report.png"))

    async def delete(self, sweep_id: str) -> None:
        await self._runner.run(remove(f"/v1/sweeps/{sweep_id}"))
