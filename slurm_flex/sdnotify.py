"""systemd's service notification protocol (sd_notify): READY, RELOADING, STOPPING, STATUS and
the watchdog keep-alive, sent as datagrams to $NOTIFY_SOCKET.

Outside systemd (no NOTIFY_SOCKET) every call is a no-op, so the daemon runs the same anywhere.
The protocol is a handful of ``KEY=value`` lines on an AF_UNIX datagram socket (see
sd_notify(3)); a leading ``@`` in the path names an abstract socket.
"""

from __future__ import annotations

import os
import socket
from collections.abc import Mapping

import structlog

log = structlog.get_logger(__name__)


class Notifier:
    def __init__(self, environ: Mapping[str, str] | None = None) -> None:
        env = os.environ if environ is None else environ
        path = env.get("NOTIFY_SOCKET", "")
        self.address: str | bytes | None = None
        if path:
            self.address = b"\0" + path[1:].encode() if path.startswith("@") else path
        usec = env.get("WATCHDOG_USEC", "")
        pid = env.get("WATCHDOG_PID", "")
        # The watchdog applies to us only when systemd says so (WATCHDOG_PID, if set, is ours).
        mine = not pid or pid == str(os.getpid())
        self.watchdog_seconds: float | None = int(usec) / 1e6 if usec.isdigit() and int(usec) > 0 and mine else None

    @property
    def enabled(self) -> bool:
        return self.address is not None

    def notify(self, **fields: str | int) -> bool:
        """Send ``KEY=value`` lines (keys upper-cased); False when not under systemd or on error."""
        if self.address is None:
            return False
        message = "\n".join(f"{k.upper()}={v}" for k, v in fields.items()).encode()
        try:
            with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
                sock.sendto(message, self.address)
            return True
        except OSError as exc:
            log.warning("sd_notify_failed", error=str(exc))
            return False

    def ready(self, status: str = "") -> bool:
        return self.notify(ready=1, status=status) if status else self.notify(ready=1)

    def watchdog(self) -> bool:
        return self.notify(watchdog=1) if self.watchdog_seconds else False

    def status(self, text: str) -> bool:
        return self.notify(status=text)

    def reloading(self) -> bool:
        return self.notify(reloading=1)

    def stopping(self) -> bool:
        return self.notify(stopping=1)
