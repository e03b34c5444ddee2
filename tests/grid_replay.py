"""A real local HTTP server that replays recorded provider responses to the grid clients.

Routes map (method, path, optional query subset) to one reply, or to a list of replies given
in turn on successive calls (the last one repeats). A reply can be delayed (for timeouts),
carry any status and headers (429 with Retry-After, 401, 500), or be cut short of its
Content-Length (a truncated transfer). Every request is recorded so tests can check what the
client asked.
"""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import pytest

FIXTURES = Path(__file__).resolve().parent / "fixtures" / "grid"


@dataclass(frozen=True)
class Reply:
    """One response: ``body`` is bytes or a file to send; ``cut_at`` sends only that many bytes
    of it while announcing the full Content-Length."""

    status: int = 200
    body: bytes | Path = b""
    headers: Mapping[str, str] = field(default_factory=dict)
    delay: float = 0.0
    cut_at: int | None = None

    def payload(self) -> bytes:
        return self.body.read_bytes() if isinstance(self.body, Path) else self.body


def fixture(name: str, *, status: int = 200, delay: float = 0.0, cut_at: int | None = None) -> Reply:
    """A JSON reply with a file from tests/fixtures/grid."""
    headers = {"Content-Type": "application/json"}
    return Reply(status=status, body=FIXTURES / name, headers=headers, delay=delay, cut_at=cut_at)


@dataclass(frozen=True)
class Recorded:
    method: str
    path: str
    query: dict[str, list[str]]
    headers: dict[str, str]

    def param(self, name: str) -> str | None:
        values = self.query.get(name)
        return values[0] if values else None


@dataclass
class _Route:
    method: str
    path: str
    query: dict[str, str]
    replies: list[Reply]
    calls: int = 0

    def matches(self, method: str, path: str, query: dict[str, list[str]]) -> bool:
        return (
            method == self.method
            and path == self.path
            and all(value in query.get(key, []) for key, value in self.query.items())
        )

    def next_reply(self) -> Reply:
        reply = self.replies[min(self.calls, len(self.replies) - 1)]
        self.calls += 1
        return reply


class ReplayServer:
    """Serve registered routes on 127.0.0.1 (an ephemeral port); ``url`` is the base URL."""

    def __init__(self) -> None:
        self._routes: list[_Route] = []
        self._lock = threading.Lock()
        self.requests: list[Recorded] = []
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), _handler_for(self))
        self._server.daemon_threads = True  # a handler still sleeping (timeout test) must not block shutdown
        self._thread = threading.Thread(
            target=self._server.serve_forever, kwargs={"poll_interval": 0.02}, name="grid-replay", daemon=True
        )

    @property
    def url(self) -> str:
        host, port = self._server.server_address[:2]
        return f"http://{host!s}:{port}"

    def start(self) -> ReplayServer:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=5)

    def add(
        self,
        path: str,
        replies: Reply | Sequence[Reply],
        *,
        query: Mapping[str, str] | None = None,
        method: str = "GET",
    ) -> None:
        """Answer ``method path`` (when the query holds every ``query`` pair) with ``replies``
        in turn. Routes with more query conditions are tried first."""
        listed = [replies] if isinstance(replies, Reply) else list(replies)
        if not listed:
            raise ValueError("a route needs at least one reply")
        with self._lock:
            self._routes.append(_Route(method, path, dict(query or {}), listed))
            self._routes.sort(key=lambda r: -len(r.query))  # stable: same specificity keeps order

    def requests_to(self, path: str) -> list[Recorded]:
        with self._lock:
            return [r for r in self.requests if r.path == path]

    def _answer(self, method: str, target: str, headers: dict[str, str]) -> Reply:
        split = urlsplit(target)
        query = parse_qs(split.query, keep_blank_values=True)
        with self._lock:
            self.requests.append(Recorded(method, split.path, query, headers))
            for route in self._routes:
                if route.matches(method, split.path, query):
                    return route.next_reply()
        return Reply(status=404, body=f"no replay route for {method} {target}".encode())


def _handler_for(replay: ReplayServer) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def setup(self) -> None:
            super().setup()
            # Headers and body go out in separate writes; without this, Nagle's algorithm and
            # delayed ACKs add ~40 ms to every reply.
            self.request.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

        def do_GET(self) -> None:
            reply = replay._answer("GET", self.path, {k.lower(): v for k, v in self.headers.items()})
            if reply.delay:
                time.sleep(reply.delay)
            body = reply.payload()
            try:
                self.send_response(reply.status)
                for key, value in reply.headers.items():
                    self.send_header(key, value)
                self.send_header("Content-Length", str(len(body)))
                if reply.cut_at is not None:
                    self.send_header("Connection", "close")
                self.end_headers()
                self.wfile.write(body if reply.cut_at is None else body[: reply.cut_at])
                self.wfile.flush()
            except (BrokenPipeError, ConnectionResetError):
                pass  # the client gave up (timeout tests)
            if reply.cut_at is not None:
                self.close_connection = True

        def log_message(self, format: str, *args: object) -> None:
            pass  # keep test output quiet

    return Handler


@pytest.fixture
def replay_server() -> Iterator[ReplayServer]:
    """A fresh replay server per test, stopped afterwards."""
    server = ReplayServer().start()
    try:
        yield server
    finally:
        server.stop()
