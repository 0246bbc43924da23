"""Plans: every SDK operation written once, as a generator, and run by a sync or an async runner.

A plan yields *ops* (an HTTP call, a sleep, an item for the caller, a line of an SSE stream)
and receives their results, so pagination, `wait()` polling and SSE resumption exist once
for `Client` and `AsyncClient`; only the two small runners below know about I/O.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncGenerator, Callable, Generator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import httpx

from ._errors import JobFailedError, RegdiffError, WaitTimeoutError, connection_error

if TYPE_CHECKING:
    from ._http import AsyncTransport, SyncTransport

T = TypeVar("T")


@dataclass(frozen=True)
class Call:
    """One HTTP request; the transport retries it, reusing `idempotency_key` on every attempt."""

    method: str
    path: str
    params: dict[str, Any] | None = None
    json: Any = None
    files: dict[str, Any] | None = None
    data: dict[str, Any] | None = None
    headers: dict[str, str] | None = None
    idempotency_key: str | None = None
    binary: bool = False  # the result is the body's bytes, not its JSON


@dataclass(frozen=True)
class Sleep:
    seconds: float


@dataclass(frozen=True)
class Emit:
    """An item for the caller of an iterating plan (`list`, `events`)."""

    item: Any


@dataclass(frozen=True)
class OpenStream:
    """Open `call` as a text/event-stream; the result is False when the server answered otherwise."""

    call: Call


@dataclass(frozen=True)
class ReadLine:
    """The next line of the open stream, None at its end; a dropped connection raises APIConnectionError."""


Op = Call | Sleep | Emit | OpenStream | ReadLine
Plan = Generator[Op, Any, T]

POLL_MIN, POLL_MAX = 0.25, 5.0


def _result_as_item(plan: Plan[T]) -> Plan[None]:
    """Lets `run()` reuse `iterate()`: the plan's return value becomes its one emitted item."""
    value = yield from plan
    yield Emit(value)


def _is_event_stream(response: httpx.Response) -> bool:
    return response.headers.get("content-type", "").startswith("text/event-stream")


class SyncRunner:
    def __init__(self, transport: SyncTransport):
        self._transport = transport

    def run(self, plan: Plan[T]) -> T:
        items = self.iterate(_result_as_item(plan))
        try:
            return next(items)
        finally:
            items.close()

    def iterate(self, plan: Plan[Any]) -> Generator[Any, None, None]:
        stream: list[Any] = []  # [response, its line iterator] while this plan has a stream open
        reply: Any = None
        error: BaseException | None = None
        try:
            while True:
                try:
                    op = plan.throw(error) if error else plan.send(reply)
                except StopIteration:
                    return
                reply, error = None, None
                if isinstance(op, Emit):
                    yield op.item
                    continue
                try:
                    reply = self._do(op, stream)
                except RegdiffError as exc:
                    error = exc
        finally:
            plan.close()
            self._close(stream)

    def _do(self, op: Op, stream: list[Any]) -> Any:
        if isinstance(op, Call):
            return self._transport.request(op)
        if isinstance(op, Sleep):
            time.sleep(op.seconds)
            return None
        if isinstance(op, OpenStream):
            self._close(stream)
            response = self._transport.open_stream(op.call)
            stream[:] = [response, response.iter_lines()]
            return _is_event_stream(response)
        try:
            return next(stream[1], None)
        except httpx.TransportError as exc:
            raise connection_error(exc) from exc

    @staticmethod
    def _close(stream: list[Any]) -> None:
        if stream:
            stream.pop(0).close()
            stream.clear()


class AsyncRunner:
    def __init__(self, transport: AsyncTransport):
        self._transport = transport

    async def run(self, plan: Plan[T]) -> T:
        items = self.iterate(_result_as_item(plan))
        try:
            return await anext(items)
        finally:
            await items.aclose()

    async def iterate(self, plan: Plan[Any]) -> AsyncGenerator[Any, None]:
        stream: list[Any] = []
        reply: Any = None
        error: BaseException | None = None
        try:
            while True:
                try:
                    op = plan.throw(error) if error else plan.send(reply)
                except StopIteration:
                    return
                reply, error = None, None
                if isinstance(op, Emit):
                    yield op.item
                    continue
                try:
                    reply = await self._do(op, stream)
                except RegdiffError as exc:
                    error = exc
        finally:
            plan.close()
            await self._close(stream)

    async def _do(self, op: Op, stream: list[Any]) -> Any:
        if isinstance(op, Call):
            return await self._transport.request(op)
        if isinstance(op, Sleep):
            await asyncio.sleep(op.seconds)
            return None
        if isinstance(op, OpenStream):
            await self._close(stream)
            response = await self._transport.open_stream(op.call)
            stream[:] = [response, response.aiter_lines()]
            return _is_event_stream(response)
        try:
            return await anext(stream[1], None)
        except httpx.TransportError as exc:
            raise connection_error(exc) from exc

    @staticmethod
    async def _close(stream: list[Any]) -> None:
        if stream:
            await stream.pop(0).aclose()
            stream.clear()


# Plans shared by several resources.


def create(
    path: str, build: Callable[[Any], T], *, idempotency_key: str | None = None, **call: Any
) -> Plan[T]:
    """POST a new resource; the Idempotency-Key is made once here, so all retries reuse it."""
    key = idempotency_key or str(uuid.uuid4())
    return build((yield Call("POST", path, idempotency_key=key, **call)))


def fetch(path: str, build: Callable[[Any], T] | None = None, **params: Any) -> Plan[T]:
    body = yield Call("GET", path, params={k: v for k, v in params.items() if v is not None} or None)
    return build(body) if build else body


def remove(path: str) -> Plan[None]:
    """DELETE a resource: the server answers 204, or a problem (404, 409) that the runner raises."""
    yield Call("DELETE", path)


def fetch_bytes(path: str) -> Plan[bytes]:
    return (yield Call("GET", path, binary=True))


def download(path: str, dest: str | Path) -> Plan[Path]:
    """Fetch bytes and write them; whole-body in memory, fine for this service's small models."""
    data = yield Call("GET", path, binary=True)
    dest = Path(dest)
    dest.write_bytes(data)
    return dest


def paginate(path: str, build: Callable[[dict[str, Any]], Any], **params: Any) -> Plan[Any]:
    """Emit every item across cursor pages; returns the last item's id (a resume point)."""
    params = {k: v for k, v in params.items() if v is not None}
    last = params.get("after")
    while True:
        page = yield Call("GET", path, params=params)
        data = page.get("data") or []
        for raw in data:
            yield Emit(build(raw))
        if data:
            last = data[-1].get("id", last)
        if not (page.get("has_more") and data):
            return last
        params = {**params, "after": page.get("next_cursor") or last}


def poll(
    path: str,
    build: Callable[[dict[str, Any]], T],
    *,
    timeout: float | None,
    raise_on_failure: bool,
    on_update: Callable[[T], None] = lambda job: None,
) -> Plan[T]:
    """GET until the job is done, sleeping 0.25 s growing to 5 s; `job.done`/`.status` decide."""
    start = time.monotonic()
    delay = POLL_MIN
    while True:
        job = build((yield Call("GET", path)))
        on_update(job)
        if job.done:  # type: ignore[attr-defined]
            if raise_on_failure and job.status == "failed":  # type: ignore[attr-defined]
                raise JobFailedError(job)
            return job
        if timeout is None:
            yield Sleep(delay)
        else:
            remaining = timeout - (time.monotonic() - start)
            if remaining <= 0:
                raise WaitTimeoutError(job, timeout)
            yield Sleep(min(delay, remaining))
        delay = min(delay * 1.5, POLL_MAX)
