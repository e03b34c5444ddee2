"""The daemon's endpoint for node agents: ``POST /v1/power`` with the shared bearer token.

Thin on purpose: it checks the token and the body size, parses the push with
:func:`slurm_flex.power.wire.parse_push` and queues the samples; the cycle drains the queue
(:class:`slurm_flex.power.ledger.PowerLedger`). A full queue answers 503 so agents keep their
samples and try again, rather than the daemon growing without bound.
"""

from __future__ import annotations

import hmac
import json
import queue
import threading
import time
from collections.abc import Mapping
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from slurm_flex.power.sample import PowerSample
from slurm_flex.power.wire import PUSH_PATH, PushError, parse_push

MAX_BODY_BYTES = 1 << 20


class PowerIngest:
    """The agents' endpoint and the queue between it and the cycle."""

    def __init__(self, listen: str, token: str, max_queued: int = 200_000) -> None:
        host, _, port = listen.rpartition(":")
        self._token = token.encode()
        self._queue: queue.Queue[list[PowerSample]] = queue.Queue(maxsize=max(1, max_queued // 10))
        self.rejected = 0
        self._server = _IngestServer((host or "0.0.0.0", int(port)), _ingest_handler(self))
        self._thread = threading.Thread(target=self._server.serve_forever, name="power-ingest", daemon=True)

    @property
    def port(self) -> int:
        return int(self._server.server_address[1])

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()

    def authorised(self, header: str | None) -> bool:
        if not header or not header.startswith("Bearer "):
            return False
        return hmac.compare_digest(header[7:].strip().encode(), self._token)

    def offer(self, samples: list[PowerSample]) -> bool:
        try:
            self._queue.put_nowait(samples)
        except queue.Full:
            return False
        return True

    def drain(self) -> list[PowerSample]:
        out: list[PowerSample] = []
        while True:
            try:
                out.extend(self._queue.get_nowait())
            except queue.Empty:
                return out


class _IngestServer(ThreadingHTTPServer):
    # A thousand agents connect within the same second or two: the default backlog (5) resets them.
    request_queue_size = 1024
    daemon_threads = True


def _ingest_handler(ingest: PowerIngest) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"  # keep-alive: an agent reuses its connection every interval

        def _answer(self, status: int, doc: Mapping[str, Any]) -> None:
            body = json.dumps(doc).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def do_POST(self) -> None:
            if self.path.rstrip("/") != PUSH_PATH:
                self._answer(404, {"error": f"unknown path; agents POST to {PUSH_PATH}"})
                return
            if not ingest.authorised(self.headers.get("Authorization")):
                ingest.rejected += 1
                self._answer(401, {"error": "missing or wrong bearer token"})
                return
            length = int(self.headers.get("Content-Length") or 0)
            if not 0 < length <= MAX_BODY_BYTES:
                self._answer(413 if length else 411, {"error": f"body must be 1..{MAX_BODY_BYTES} bytes"})
                return
            try:
                samples = parse_push(json.loads(self.rfile.read(length)), time.time())
            except (ValueError, PushError) as exc:
                ingest.rejected += 1
                self._answer(400, {"error": str(exc)})
                return
            if not ingest.offer(samples):
                self._answer(503, {"error": "daemon is behind; keep the samples and retry"})
                return
            self._answer(202, {"accepted": len(samples)})

        def log_message(self, format: str, *args: Any) -> None:
            pass  # rejections are counted; the cycle logs what it ingested

    return Handler
