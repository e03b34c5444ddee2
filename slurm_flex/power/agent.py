"""``slurmflex node-agent``: sample this node's power readers and push them to the daemon.

Every ``interval_seconds`` it reads the configured readers (RAPL, GPUs, the BMC), and POSTs the
samples to the daemon's ``[measure] listen`` endpoint with the shared token. Samples that cannot
be delivered stay in a bounded buffer and go with the next push, so a daemon restart loses
nothing; beyond ``buffer_samples`` the oldest are dropped (and counted).
"""

from __future__ import annotations

import shutil
import socket
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence

import requests
import structlog

from slurm_flex.config import AgentConfig
from slurm_flex.errors import SlurmFlexError
from slurm_flex.power.readers.collect import collect
from slurm_flex.power.readers.gpu import NvidiaSmiReader, NvmlReader, load_pynvml
from slurm_flex.power.readers.ipmi import IpmiReader
from slurm_flex.power.readers.rapl import RaplReader
from slurm_flex.power.sample import PowerReader, PowerSample
from slurm_flex.power.wire import MAX_SAMPLES_PER_PUSH, PUSH_PATH, to_wire

log = structlog.get_logger(__name__)


class PushFailed(SlurmFlexError):
    """The daemon did not take a push (the samples stay buffered)."""


def node_name(config: AgentConfig) -> str:
    return config.node or socket.gethostname().split(".", 1)[0]


def readers_from(
    config: AgentConfig, node: str, which: Callable[[str], str | None] = shutil.which
) -> list[PowerReader]:
    """The readers this node's config asks for; "auto" GPUs only when NVML or nvidia-smi exist."""
    readers: list[PowerReader] = []
    if config.rapl:
        readers.append(RaplReader(node, config.root))
    if config.nvidia == "nvml" or (config.nvidia == "auto" and load_pynvml() is not None):
        readers.append(NvmlReader(node))
    elif config.nvidia == "smi" or (config.nvidia == "auto" and which("nvidia-smi")):
        readers.append(NvidiaSmiReader(node, timeout=config.command_timeout_seconds))
    if config.ipmi != "none":
        readers.append(IpmiReader(node, tool=config.ipmi, timeout=config.command_timeout_seconds))
    return readers


class NodeAgent:
    def __init__(
        self,
        node: str,
        readers: Sequence[PowerReader],
        push_url: str,
        token: str,
        *,
        buffer_samples: int = 10000,
        timeout_seconds: float = 5.0,
        session: requests.Session | None = None,
    ) -> None:
        self.node = node
        self.readers = list(readers)
        self.url = push_url.rstrip("/") + PUSH_PATH
        self._headers = {"Authorization": f"Bearer {token}"}
        self.buffer: deque[PowerSample] = deque(maxlen=buffer_samples)
        self.dropped = 0
        self.timeout = timeout_seconds
        self._session = session or requests.Session()
        self._stop = threading.Event()

    def sample(self, now: float) -> int:
        """Read every reader once into the buffer; returns how many samples it got."""
        result = collect(self.readers, now)
        overflow = max(0, len(self.buffer) + len(result.samples) - (self.buffer.maxlen or 0))
        self.dropped += overflow
        self.buffer.extend(result.samples)
        return len(result.samples)

    def push(self) -> int:
        """Send the buffer in batches; what the daemon took leaves the buffer. Raises
        :class:`PushFailed` (the rest stays) when it cannot deliver."""
        sent = 0
        while self.buffer:
            batch = [self.buffer[i] for i in range(min(MAX_SAMPLES_PER_PUSH, len(self.buffer)))]
            body = {"node": self.node, "samples": [to_wire(s) for s in batch]}
            try:
                response = self._session.post(self.url, json=body, headers=self._headers, timeout=self.timeout)
            except requests.RequestException as exc:
                raise PushFailed(f"cannot reach the daemon at {self.url}: {type(exc).__name__}") from exc
            if response.status_code == 400:  # the daemon refuses this batch for good: drop it, say why
                log.error("push_refused", error=response.text[:300], samples=len(batch))
                self.dropped += len(batch)
            elif response.status_code != 202:
                raise PushFailed(f"daemon answered HTTP {response.status_code}: {response.text[:200]}")
            else:
                sent += len(batch)
            for _ in batch:
                self.buffer.popleft()
        return sent

    def run(self, interval: float, cycles: int | None = None, clock: Callable[[], float] = time.time) -> None:
        done = 0
        while not self._stop.is_set() and (cycles is None or done < cycles):
            started = time.monotonic()
            got = self.sample(clock())
            try:
                sent = self.push()
                log.info("pushed", samples=got, sent=sent, dropped=self.dropped)
            except PushFailed as exc:
                log.warning("push_failed", error=str(exc), buffered=len(self.buffer), dropped=self.dropped)
            done += 1
            if cycles is None or done < cycles:
                self._stop.wait(max(0.0, interval - (time.monotonic() - started)))

    def stop(self) -> None:
        self._stop.set()
