"""A scripted HTTP server on 127.0.0.1 (port 0) for the client's unit tests.

Real sockets, real HTTP: the client's transport, retries and SSE handling run exactly as
against the service; only the answers are scripted. Independent of the `service` fixture.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlsplit


@dataclass
class Reply:
    status: int = 200
    json: Any = None
    body: bytes = b""
    headers: dict[str, str] = field(default_factory=dict)
    delay: float = 0.0  # seconds before answering (timeouts)
    truncate: bool = False  # promise more bytes than sent, then close (a dropped stream)


def problem(
    status: int, title: str, detail: str = "", errors: list[dict[str, str]] | None = None, **headers: str
):
    body = {"type": "about:blank", "title": title, "status": status, "detail": detail}
    if errors is not None:
        body["errors"] = errors
    return Reply(status, json=body, headers={"Content-Type": "application/problem+json", **headers})


def sse(*events: tuple[int, str, dict[str, Any]], truncate: bool = False, end: bool = False) -> Reply:
    """An event-stream body: (id, type, data) per event; `end` adds the server's closing message."""
    text = "".join(f"id: {i}\nevent: {kind}\ndata: {json.dumps(data)}\n\n" for i, kind, data in events)
    text += "event: end\ndata: {}\n\n" if end else ""
    return Reply(
        body=(": keep-alive\n\n" + text).encode(),
        headers={"Content-Type": "text/event-stream"},
        truncate=truncate,
    )


@dataclass
class Seen:
    method: str
    path: str
    query: dict[str, str]
    headers: dict[str, str]  # lower-cased names
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)


Responder = Reply | Callable[[Seen], Reply]


class FakeAPI:
    """`api.on("GET", "/v1/runs/r1", reply1, reply2)`: replies in order, the last one repeats."""

    def __init__(self) -> None:
        self._routes: dict[tuple[str, str], list[Responder]] = {}
        self.seen: list[Seen] = []
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
        self._server.api = self  # type: ignore[attr-defined]
        self._server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}"

    def on(self, method: str, path: str, *replies: Responder) -> None:
        self._routes[(method, path)] = list(replies)

    def requests(self, method: str, path: str) -> list[Seen]:
        return [s for s in self.seen if (s.method, s.path) == (method, path)]

    def answer(self, seen: Seen) -> Reply:
        self.seen.append(seen)
        replies = self._routes.get((seen.method, seen.path))
        if not replies:
            return problem(404, "Not Found", f"no route {seen.method} {seen.path}")
        responder = replies.pop(0) if len(replies) > 1 else replies[0]
        return responder(seen) if callable(responder) else responder

    def start(self) -> None:
        threading.Thread(target=self._server.serve_forever, args=(0.01,), daemon=True).start()

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()


class _Handler(BaseHTTPRequestHandler):
    def _handle(self) -> None:
        parts = urlsplit(self.path)
        length = int(self.headers.get("Content-Length") or 0)
        seen = Seen(
            method=self.command,
            path=parts.path,
            query={k: v[-1] for k, v in parse_qs(parts.query).items()},
            headers={k.lower(): v for k, v in self.headers.items()},
            body=self.rfile.read(length),
        )
        reply = self.server.api.answer(seen)  # type: ignore[attr-defined]
        time.sleep(reply.delay)
        body = json.dumps(reply.json).encode() if reply.json is not None else reply.body
        headers = {"Content-Type": "application/json"} if reply.json is not None else {}
        headers.update(reply.headers)
        try:
            self.send_response(reply.status)
            for name, value in headers.items():
                self.send_header(name, value)
            self.send_header("Content-Length", str(len(body) + (100 if reply.truncate else 0)))
            self.end_headers()
            self.wfile.write(body)
        except (BrokenPipeError, ConnectionResetError):
            pass  # the client gave up (a timeout test)

    do_GET = do_POST = do_DELETE = _handle

    def log_message(self, format: str, *args: Any) -> None:
        pass


def run_json(run_id: str = "run_1", status: str = "queued", step: int = 0, **extra: Any) -> dict[str, Any]:
    return {
        "id": run_id,
        "object": "run",
        "status": status,
        "spec": {"dataset": "digits", "lambda": 0.1},
        "step": step,
        "total_steps": 20,
        "progress": step / 20,
        "metrics": {"loss": 0.5} if step else {},
        "error": None,
        "created_at": "2026-11-26T00:00:00Z",
        "started_at": None,
        "finished_at": None,
        "attempts": 0,
        "evaluation": None,
        "urls": {},
        **extra,
    }
