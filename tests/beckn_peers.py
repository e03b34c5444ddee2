"""Loopback peers for the Beckn tests, run as separate processes (``python -m tests.beckn_peers
registry PORT FILE``): a registry answering /lookup from a JSON file (edited by the test while it
runs), and a BAP that records the callbacks it gets, verifying each signature."""

from __future__ import annotations

import json
import sys
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path


def registry(port: int, data: Path) -> None:
    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            length = int(self.headers.get("Content-Length", 0))
            query = json.loads(self.rfile.read(length))
            subs = [s for s in json.loads(data.read_text()) if s["subscriber_id"] == query.get("subscriber_id")]
            body = json.dumps(subs).encode()
            with (data.parent / "lookups.log").open("a") as fh:
                fh.write(json.dumps(query) + "\n")
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: object) -> None:
            pass

    ThreadingHTTPServer(("127.0.0.1", port), Handler).serve_forever()


if __name__ == "__main__":
    if sys.argv[1] == "registry":
        registry(int(sys.argv[2]), Path(sys.argv[3]))
