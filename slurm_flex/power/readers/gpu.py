"""NVIDIA GPU power, from ``nvidia-smi`` CSV queries or from NVML (``pynvml``) when importable.

``nvidia-smi --query-gpu=index,name,power.draw,power.limit --format=csv,noheader,nounits``
prints one line per GPU. A value the GPU or driver cannot give is printed as ``[N/A]``,
``[Not Supported]`` (``N/A`` without brackets on some driver versions, and with units
``123.45 W`` when ``nounits`` is left out); such GPUs get no sample rather than 0 W.
"""

from __future__ import annotations

import importlib
from collections.abc import Sequence
from dataclasses import dataclass
from types import ModuleType

import structlog

from slurm_flex.power.readers.command import RunFn, run_command
from slurm_flex.power.readers.errors import PowerParseError, PowerReadError, PowerUnsupportedError
from slurm_flex.power.sample import PowerSample

log = structlog.get_logger(__name__)

QUERY_FIELDS: tuple[str, ...] = ("index", "name", "power.draw", "power.limit")

# What nvidia-smi prints in place of a value it cannot give: bracketed in most outputs, a bare
# "N/A" in some (seen with nounits, e.g. tests/fixtures/power/nvidia-smi-nounits-gpu-utils-83.csv).
_MISSING = {
    "n/a",
    "[n/a]",
    "[not supported]",
    "not supported",
    "[unknown error]",
    "[gpu is lost]",
    "[insufficient permissions]",
}
# Whole-output failures: the driver or a GPU is gone.
_FAILURES = (
    "nvidia-smi has failed",
    "no devices were found",
    "gpu has fallen off the bus",
    "unable to determine the device",
)


@dataclass(frozen=True)
class GpuPower:
    index: int
    name: str
    draw_watts: float | None
    limit_watts: float | None


def nvidia_smi_argv(binary: str = "nvidia-smi", fields: Sequence[str] = QUERY_FIELDS) -> list[str]:
    return [binary, f"--query-gpu={','.join(fields)}", "--format=csv,noheader,nounits"]


def _number(cell: str, what: str) -> float | None:
    value = cell.strip()
    if value.lower() in _MISSING:
        return None
    for unit in (" W", " %", " MiB", " MHz"):
        value = value.removesuffix(unit)
    try:
        return float(value)
    except ValueError as exc:
        raise PowerParseError(f"nvidia-smi: {what} is {cell.strip()!r}, not a number") from exc


def parse_nvidia_smi_csv(text: str, fields: Sequence[str] = QUERY_FIELDS) -> list[GpuPower]:
    """Parse ``nvidia-smi --query-gpu=<fields> --format=csv,noheader[,nounits]`` output.

    ``fields`` is the query's field list (it must contain ``power.draw``); without ``index``
    GPUs are numbered in output order, which is nvidia-smi's index order.
    """
    if "power.draw" not in fields:
        raise PowerParseError("nvidia-smi: the query has no power.draw field")
    lowered = text.lower()
    for failure in _FAILURES:
        if failure in lowered:
            line = next(ln for ln in text.splitlines() if failure in ln.lower())
            raise PowerReadError(f"nvidia-smi: {line.strip()}")
    gpus: list[GpuPower] = []
    for lineno, line in enumerate(ln for ln in text.splitlines() if ln.strip()):
        cells = [c.strip() for c in line.split(",")]
        if len(cells) != len(fields):
            raise PowerParseError(
                f"nvidia-smi line {lineno + 1}: {len(cells)} values for {len(fields)} fields: {line[:120]!r}"
            )
        row = dict(zip(fields, cells, strict=True))
        index_value = _number(row["index"], "index") if "index" in row else None
        gpus.append(
            GpuPower(
                index=int(index_value) if index_value is not None else len(gpus),
                name=row.get("name", row.get("gpu_name", "")),
                draw_watts=_number(row["power.draw"], "power.draw"),
                limit_watts=_number(row["power.limit"], "power.limit") if "power.limit" in row else None,
            )
        )
    return gpus


def gpu_samples(gpus: Sequence[GpuPower], node: str, now: float, source: str) -> list[PowerSample]:
    """Samples for the GPUs that reported a draw; raises when GPUs exist but none did."""
    samples = [
        PowerSample(source=source, component=f"gpu-{g.index}", watts=g.draw_watts, at=now, node=node)
        for g in gpus
        if g.draw_watts is not None and g.draw_watts >= 0
    ]
    if gpus and not samples:
        names = ", ".join(f"{g.index}:{g.name}" for g in gpus)
        raise PowerUnsupportedError(f"{source}: no GPU reports power.draw ({names})")
    return samples


class NvidiaSmiReader:
    """GPU power through one ``nvidia-smi`` CSV query per read."""

    name = "nvidia-smi"

    def __init__(
        self, node: str, *, binary: str = "nvidia-smi", run: RunFn = run_command, timeout: float = 10.0
    ) -> None:
        self.node = node
        self.argv = nvidia_smi_argv(binary)
        self._run = run
        self.timeout = timeout

    def read(self, now: float) -> list[PowerSample]:
        text = self._run(self.argv, self.timeout)
        return gpu_samples(parse_nvidia_smi_csv(text), self.node, now, "nvidia-smi")


def load_pynvml() -> ModuleType | None:
    """The ``pynvml`` module (package nvidia-ml-py), or None when it is not installed."""
    try:
        return importlib.import_module("pynvml")
    except ImportError:
        return None


class NvmlReader:
    """GPU power through NVML, in-process (no fork/exec per read). ``nvml`` is the ``pynvml``
    module or a stand-in with the same functions; it is optional, not an install requirement."""

    name = "nvml"

    def __init__(self, node: str, nvml: ModuleType | None = None) -> None:
        self.node = node
        self._nvml = nvml if nvml is not None else load_pynvml()
        self._initialised = False

    def read(self, now: float) -> list[PowerSample]:
        nvml = self._nvml
        if nvml is None:
            raise PowerUnsupportedError("nvml: pynvml is not installed (pip install nvidia-ml-py)")
        try:
            if not self._initialised:
                nvml.nvmlInit()
                self._initialised = True
            gpus: list[GpuPower] = []
            for index in range(int(nvml.nvmlDeviceGetCount())):
                handle = nvml.nvmlDeviceGetHandleByIndex(index)
                name = nvml.nvmlDeviceGetName(handle)
                try:
                    draw: float | None = float(nvml.nvmlDeviceGetPowerUsage(handle)) / 1000.0  # milliwatts
                except nvml.NVMLError as exc:
                    log.debug("nvml_power_unavailable", gpu=index, error=str(exc))
                    draw = None
                gpus.append(GpuPower(index, name.decode() if isinstance(name, bytes) else str(name), draw, None))
        except PowerReadError:
            raise
        except Exception as exc:  # NVMLError and its many subclasses: driver missing, GPU lost
            self._initialised = False
            raise PowerReadError(f"nvml: {exc}") from exc
        return gpu_samples(gpus, self.node, now, "nvml")
