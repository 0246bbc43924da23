"""Sweeps: one base RunSpec, one run per combination of the varied fields."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from .._plan import Plan, create, fetch, fetch_bytes
from ..types import Sweep
from ._base import SyncResource


def _create(base: Mapping[str, Any], vary: Mapping[str, Sequence[Any]]) -> Plan[Sweep]:
    body = {"base": dict(base), "vary": {k: list(v) for k, v in vary.items()}}
    return create("/v1/sweeps", Sweep.from_json, json=body)


class Sweeps(SyncResource):
    def create(self, *, base: Mapping[str, Any], vary: Mapping[str, Sequence[Any]]) -> Sweep:
        """e.g. `vary={"lambda": [0, 0.1, 1]}` makes three runs of `base`."""
        return self._runner.run(_create(base, vary))

    def get(self, sweep_id: str) -> Sweep:
        return self._runner.run(fetch(f"/v1/sweeps/{sweep_id}", Sweep.from_json))

    def report(self, sweep_id: str) -> dict[str, Any]:
        """The server's comparison of the sweep's runs (metrics side by side), as JSON."""
        return self._runner.run(fetch(f"/v1/sweeps/{sweep_id}/report"))

    def report_png(self, sweep_id: str) -> bytes:
        return self._runner.run(fetch_bytes(f"/v1/sweeps/{sweep_id}/report.png"))
