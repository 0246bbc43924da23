"""Runs: submit a RunSpec, follow it (poll, SSE events), fetch what it made."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Iterator, Mapping
from pathlib import Path
from typing import Any, TypedDict, Unpack

from .._errors import APIConnectionError, APIError
from .._plan import (
    POLL_MAX,
    POLL_MIN,
    Call,
    Emit,
    OpenStream,
    Plan,
    ReadLine,
    Sleep,
    create,
    download,
    fetch,
    fetch_bytes,
    paginate,
    poll,
    remove,
)
from .._progress import RunProgress
from .._sse import Decoder, Message
from ..types import Event, Run, Series
from ._base import AsyncResource, SyncResource

# Answers that mean "this server will not stream events": fall back to polling JSON pages.
NO_SSE_STATUSES = frozenset({406, 415, 501})
# The server's last message on a stream: the run is over and every event was sent.
END_EVENT = "end"


class RunFields(TypedDict, total=False):
    """Top-level RunSpec fields as keyword arguments (`lambda_` because `lambda` is a keyword)."""

    dataset: str
    regularizer: str | list[dict[str, Any]]
    lambda_: float
    model: dict[str, Any]
    estimator: dict[str, Any]
    reg_schedule: dict[str, Any]
    train: dict[str, Any]
    preview: dict[str, Any]
    checkpoint_every: int | None
    init_from: str | None


def build_spec(spec: Mapping[str, Any] | None, fields: Mapping[str, Any]) -> dict[str, Any]:
    """Keyword fields override `spec`; a dict field merges one level, so `train={"steps": 5}`
    keeps the spec's other train settings."""
    out = dict(spec or {})
    for key, value in fields.items():
        key = "lambda" if key == "lambda_" else key
        if isinstance(value, Mapping) and isinstance(out.get(key), Mapping):
            value = {**out[key], **value}
        out[key] = value
    return out


def _run_path(run_id: str, suffix: str = "") -> str:
    return f"/v1/runs/{run_id}{suffix}"


def _cancel(run_id: str) -> Plan[Run]:
    body = yield Call("POST", _run_path(run_id, "/cancel"))
    return Run.from_json(body) if body else (yield from fetch(_run_path(run_id), Run.from_json))


def _metrics(run_id: str) -> Plan[Series]:
    body = yield Call("GET", _run_path(run_id, "/metrics"))
    return {name: [(int(s), float(v)) for s, v in points] for name, points in body["series"].items()}


def _event(message: Message) -> Event:
    """An SSE message's data is the event's JSON; the SSE id/event fill in what it leaves out."""
    try:
        payload = json.loads(message.data)
    except ValueError:
        payload = message.data
    if not isinstance(payload, dict):
        payload = {"data": payload}
    return Event.from_json({"id": message.id, "type": message.event, **payload})


def _events(run_id: str, after: str | int | None) -> Plan[None]:
    """SSE, resumed with Last-Event-ID after a drop; JSON pages when the server will not stream.

    The `end` message ends the iteration. A stream that closes without it ends it too if the
    run is over (after one JSON page, for anything not flushed); otherwise reconnect, pausing
    longer each time nothing arrived in between.
    """
    path = _run_path(run_id, "/events")
    last_id = after
    quiet_reconnects = 0
    while True:
        headers = {"Accept": "text/event-stream"}
        if last_id is not None:
            headers["Last-Event-ID"] = str(last_id)
        try:
            streaming = yield OpenStream(Call("GET", path, headers=headers))
        except APIError as exc:
            if exc.status not in NO_SSE_STATUSES:
                raise
            streaming = False
        if not streaming:
            yield from _poll_events(run_id, last_id)
            return
        decoder = Decoder()
        try:
            while (line := (yield ReadLine())) is not None:
                message = decoder.feed(line)
                if message is None:
                    continue
                if message.event == END_EVENT:
                    return
                event = _event(message)
                last_id = event.id
                quiet_reconnects = 0
                yield Emit(event)
        except APIConnectionError:
            pass  # dropped mid-stream: resume below
        else:
            run = yield from fetch(_run_path(run_id), Run.from_json)
            if run.done:
                yield from _events_so_far(run_id, last_id)
                return
        yield Sleep(min(POLL_MIN * 2**quiet_reconnects, POLL_MAX))
        quiet_reconnects += 1


def _events_so_far(run_id: str, after: str | int | None) -> Plan[Any]:
    """The events already written, page by page, without waiting for more; returns the last id."""
    return paginate(_run_path(run_id, "/events"), Event.from_json, after=after)


def _poll_events(run_id: str, after: str | int | None) -> Plan[None]:
    delay = POLL_MIN
    while True:
        run = yield from fetch(_run_path(run_id), Run.from_json)  # before the page, so nothing is missed
        after = yield from _events_so_far(run_id, after)
        if run.done:
            return
        yield Sleep(delay)
        delay = min(delay * 1.5, POLL_MAX)


def metadata_params(metadata: Mapping[str, str] | None) -> dict[str, str]:
    """`{"exp": "a"}` -> `{"metadata[exp]": "a"}`: the list filter's query parameters."""
    return {f"metadata[{key}]": value for key, value in (metadata or {}).items()}


def _list(status: str | None, sweep_id: str | None, limit: int | None,
          metadata: Mapping[str, str] | None) -> Plan[None]:
    return paginate("/v1/runs", Run.from_json, status=status, sweep_id=sweep_id, limit=limit,
                    **metadata_params(metadata))


def _create(spec: Mapping[str, Any] | None, fields: Mapping[str, Any], idempotency_key: str | None,
            metadata: Mapping[str, str] | None, webhook: Mapping[str, Any] | None) -> Plan[Run]:
    body = build_spec(spec, fields)
    if metadata is not None:
        body["metadata"] = dict(metadata)
    if webhook is not None:
        body["webhook"] = dict(webhook)
    return create("/v1/runs", Run.from_json, idempotency_key=idempotency_key, json=body)


def _update(run_id: str, metadata: Mapping[str, str | None] | None) -> Plan[Run]:
    body = {} if metadata is None else {"metadata": dict(metadata)}
    return Run.from_json((yield Call("PATCH", _run_path(run_id), json=body)))


def _wait(run_id: str, timeout: float | None, raise_on_failure: bool, bar: RunProgress) -> Plan[Run]:
    return poll(
        _run_path(run_id),
        Run.from_json,
        timeout=timeout,
        raise_on_failure=raise_on_failure,
        on_update=bar.update,
    )


def _compare(run_id: str, baseline: str) -> Plan[dict[str, Any]]:
    return fetch(_run_path(run_id, "/compare"), baseline=baseline)


class Runs(SyncResource):
    def create(
        self,
        *,
        spec: Mapping[str, Any] | None = None,
        idempotency_key: str | None = None,
        metadata: Mapping[str, str] | None = None,
        webhook: Mapping[str, Any] | None = None,
        **fields: Unpack[RunFields],
    ) -> Run:
        """Submit a run: a whole `spec` dict, keyword fields, or both (keywords win).

        `metadata`: your own string pairs (at most 16). `webhook`: `{"url": ..., "events": [...]}`,
        this run's own endpoint; the returned run's `.webhook["secret"]` is shown this once."""
        return self._runner.run(_create(spec, fields, idempotency_key, metadata, webhook))

    def list(
        self, *, status: str | None = None, sweep_id: str | None = None, limit: int | None = None,
        metadata: Mapping[str, str] | None = None,
    ) -> Iterator[Run]:
        """Every run, newest first, fetching pages of `limit` as the iteration goes; `metadata`:
        only runs with all of these pairs."""
        return self._runner.iterate(_list(status, sweep_id, limit, metadata))

    def get(self, run_id: str) -> Run:
        return self._runner.run(fetch(_run_path(run_id), Run.from_json))

    def update(self, run_id: str, *, metadata: Mapping[str, str | None] | None = None) -> Run:
        """Change the run's metadata as a merge patch: a key set to None is removed, others are set."""
        return self._runner.run(_update(run_id, metadata))

    def cancel(self, run_id: str) -> Run:
        return self._runner.run(_cancel(run_id))

    def delete(self, run_id: str) -> None:
        self._runner.run(remove(_run_path(run_id)))

    def wait(
        self,
        run_id: str,
        *,
        timeout: float | None = None,
        progress: bool = True,
        raise_on_failure: bool = True,
    ) -> Run:
        """Poll until the run ends; raises JobFailedError if it failed (unless told not to)."""
        with RunProgress(progress) as bar:
            return self._runner.run(_wait(run_id, timeout, raise_on_failure, bar))

    def events(self, run_id: str, *, after: str | int | None = None, follow: bool = True) -> Iterator[Event]:
        """The run's events as they happen, until it ends; `follow=False`: only those written so far."""
        return self._runner.iterate(_events(run_id, after) if follow else _events_so_far(run_id, after))

    def metrics(self, run_id: str) -> Series:
        """Every logged series: `{"loss": [(step, value), ...], ...}`."""
        return self._runner.run(_metrics(run_id))

    def samples_png(self, run_id: str) -> bytes:
        """The preview grid made at the end of the run."""
        return self._runner.run(fetch_bytes(_run_path(run_id, "/samples.png")))

    def save_grid(self, run_id: str, path: str | Path) -> Path:
        return self._runner.run(download(_run_path(run_id, "/samples.png"), path))

    def export(self, run_id: str, path: str | Path) -> Path:
        """The trained model as a zip of a diffusers pipeline folder."""
        return self._runner.run(download(_run_path(run_id, "/export"), path))

    def compare(self, run_id: str, *, baseline: str) -> dict[str, Any]:
        """The run against `baseline` (e.g. its lambda=0 twin): both runs' penalties and FCDs with 95%
        intervals that include seed variance, and `verdict` {penalty, quality, sentence}."""
        return self._runner.run(_compare(run_id, baseline))


class AsyncRuns(AsyncResource):
    async def create(
        self,
        *,
        spec: Mapping[str, Any] | None = None,
        idempotency_key: str | None = None,
        metadata: Mapping[str, str] | None = None,
        webhook: Mapping[str, Any] | None = None,
        **fields: Unpack[RunFields],
    ) -> Run:
        return await self._runner.run(_create(spec, fields, idempotency_key, metadata, webhook))

    def list(
        self, *, status: str | None = None, sweep_id: str | None = None, limit: int | None = None,
        metadata: Mapping[str, str] | None = None,
    ) -> AsyncIterator[Run]:
        return self._runner.iterate(_list(status, sweep_id, limit, metadata))

    async def get(self, run_id: str) -> Run:
        return await self._runner.run(fetch(_run_path(run_id), Run.from_json))

    async def update(self, run_id: str, *, metadata: Mapping[str, str | None] | None = None) -> Run:
        return await self._runner.run(_update(run_id, metadata))

    async def cancel(self, run_id: str) -> Run:
        return await self._runner.run(_cancel(run_id))

    async def delete(self, run_id: str) -> None:
        await self._runner.run(remove(_run_path(run_id)))

    async def wait(
        self,
        run_id: str,
        *,
        timeout: float | None = None,
        progress: bool = True,
        raise_on_failure: bool = True,
    ) -> Run:
        with RunProgress(progress) as bar:
            return await self._runner.run(_wait(run_id, timeout, raise_on_failure, bar))

    def events(self, run_id: str, *, after: str | int | None = None, follow: bool = True) -> AsyncIterator[Event]:
        return self._runner.iterate(_events(run_id, after) if follow else _events_so_far(run_id, after))

    async def metrics(self, run_id: str) -> Series:
        return await self._runner.run(_metrics(run_id))

    async def samples_png(self, run_id: str) -> bytes:
        return await self._runner.run(fetch_bytes(_run_path(run_id, "/samples.png")))

    async def save_grid(self, run_id: str, path: str | Path) -> Path:
        return await self._runner.run(download(_run_path(run_id, "/samples.png"), path))

    async def export(self, run_id: str, path: str | Path) -> Path:
        return await self._runner.run(download(_run_path(run_id, "/export"), path))

    async def compare(self, run_id: str, *, baseline: str) -> dict[str, Any]:
        return await self._runner.run(_compare(run_id, baseline))
