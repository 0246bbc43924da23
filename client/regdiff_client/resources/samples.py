"""Sample jobs: draw new images from a finished run's EMA weights."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from .._images import array_to_images, npz_to_array
from .._plan import Plan, create, download, fetch, fetch_bytes, poll, remove
from ..types import SampleJob
from ._base import AsyncResource, SyncResource


def _path(sample_id: str, suffix: str = "") -> str:
    return f"/v1/samples/{sample_id}{suffix}"


def _create(run_id: str, **params: Any) -> Plan[SampleJob]:
    body = {k: v for k, v in params.items() if v is not None}  # unset: the server's defaults
    return create(f"/v1/runs/{run_id}/samples", SampleJob.from_json, json=body)


def _wait(sample_id: str, timeout: float | None, raise_on_failure: bool) -> Plan[SampleJob]:
    return poll(_path(sample_id), SampleJob.from_json, timeout=timeout, raise_on_failure=raise_on_failure)


class Samples(SyncResource):
    def create(
        self,
        run_id: str,
        *,
        n: int | None = None,
        sampler: str | None = None,
        steps: int | None = None,
        eta: float | None = None,
        seed: int | None = None,
        checkpoint: str | None = None,
    ) -> SampleJob:
        """Start a sample job (202); `wait()` for it, then fetch the grid, images or array."""
        plan = _create(run_id, n=n, sampler=sampler, steps=steps, eta=eta, seed=seed, checkpoint=checkpoint)
        return self._runner.run(plan)

    def get(self, sample_id: str) -> SampleJob:
        return self._runner.run(fetch(_path(sample_id), SampleJob.from_json))

    def delete(self, sample_id: str) -> None:
        """Removes an on-demand job and its images (a run's preview goes with its run: ConflictError)."""
        self._runner.run(remove(_path(sample_id)))

    def wait(
        self, sample_id: str, *, timeout: float | None = None, raise_on_failure: bool = True
    ) -> SampleJob:
        return self._runner.run(_wait(sample_id, timeout, raise_on_failure))

    def grid_png(self, sample_id: str) -> bytes:
        return self._runner.run(fetch_bytes(_path(sample_id, "/grid.png")))

    def save_grid(self, sample_id: str, path: str | Path) -> Path:
        return self._runner.run(download(_path(sample_id, "/grid.png"), path))

    def image_png(self, sample_id: str, index: int) -> bytes:
        return self._runner.run(fetch_bytes(_path(sample_id, f"/images/{index}.png")))

    def array(self, sample_id: str) -> Any:
        """uint8 (N, H, W, C) numpy array from samples.npz; needs the `[images]` extra."""
        return npz_to_array(self._runner.run(fetch_bytes(_path(sample_id, "/samples.npz"))))

    def images(self, sample_id: str) -> list[Any]:
        """PIL images, one per sample; needs the `[images]` extra."""
        return array_to_images(self.array(sample_id))


class AsyncSamples(AsyncResource):
    async def create(
        self,
        run_id: str,
        *,
        n: int | None = None,
        sampler: str | None = None,
        steps: int | None = None,
        eta: float | None = None,
        seed: int | None = None,
        checkpoint: str | None = None,
    ) -> SampleJob:
        plan = _create(run_id, n=n, sampler=sampler, steps=steps, eta=eta, seed=seed, checkpoint=checkpoint)
        return await self._runner.run(plan)

    async def get(self, sample_id: str) -> SampleJob:
        return await self._runner.run(fetch(_path(sample_id), SampleJob.from_json))

    async def delete(self, sample_id: str) -> None:
        await self._runner.run(remove(_path(sample_id)))

    async def wait(
        self, sample_id: str, *, timeout: float | None = None, raise_on_failure: bool = True
    ) -> SampleJob:
        return await self._runner.run(_wait(sample_id, timeout, raise_on_failure))

    async def grid_png(self, sample_id: str) -> bytes:
        return await self._runner.run(fetch_bytes(_path(sample_id, "/grid.png")))

    async def save_grid(self, sample_id: str, path: str | Path) -> Path:
        return await self._runner.run(download(_path(sample_id, "/grid.png"), path))

    async def image_png(self, sample_id: str, index: int) -> bytes:
        return await self._runner.run(fetch_bytes(_path(sample_id, f"/images/{index}.png")))

    async def array(self, sample_id: str) -> Any:
        return npz_to_array(await self._runner.run(fetch_bytes(_path(sample_id, "/samples.npz"))))

    async def images(self, sample_id: str) -> list[Any]:
        return array_to_images(await self.array(sample_id))
