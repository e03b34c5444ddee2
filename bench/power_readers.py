#!/usr/bin/env python3
"""Cost of reading node power, per full read of all local sources.

    .venv/bin/python bench/power_readers.py [--reads N]

Builds a fake sysfs tree (2 packages, each with a DRAM and a core sub-zone) and a fake
``nvidia-smi`` shell script printing 4 GPUs, then times full reads (RAPL + nvidia-smi) and
reports the CPU time per read -- of this process *and* its children, since the fork/exec of
nvidia-smi/ipmitool is most of the cost -- as a share of one core at a 10 s read interval
(target: under 1 %). Also times a fake ``ipmitool`` alone: a real ipmitool adds the BMC's
answer time (tens of ms to seconds, wall clock, mostly waiting) on top of this fork/exec floor.
Figures only; nothing here asserts a time.
"""

from __future__ import annotations

import argparse
import logging
import os
import resource
import stat
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import structlog

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from slurm_flex.power.readers import collect
from slurm_flex.power.readers.gpu import NvidiaSmiReader
from slurm_flex.power.readers.ipmi import IpmiReader
from slurm_flex.power.readers.rapl import RaplReader

FIX = Path(__file__).resolve().parent.parent / "tests" / "fixtures" / "power"
INTERVAL = 10.0


def fake_sysfs(root: Path) -> None:
    base = root / "sys" / "class" / "powercap"
    zones = {
        "intel-rapl:0": "package-0",
        "intel-rapl:0:0": "dram",
        "intel-rapl:0:1": "core",
        "intel-rapl:1": "package-1",
        "intel-rapl:1:0": "dram",
        "intel-rapl:1:1": "core",
    }
    for entry, name in zones.items():
        zdir = base / entry
        zdir.mkdir(parents=True)
        (zdir / "name").write_text(f"{name}\n")
        (zdir / "energy_uj").write_text("123456789\n")
        (zdir / "max_energy_range_uj").write_text("262143328850\n")


def fake_binary(path: Path, fixture: str) -> Path:
    path.write_text(f"#!/bin/sh\ncat {FIX / fixture}\n")
    path.chmod(path.stat().st_mode | stat.S_IXUSR)
    return path


def cpu_seconds() -> float:
    own = resource.getrusage(resource.RUSAGE_SELF)
    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


def measure(label: str, reads: int, once: Callable[[], object]) -> float:
    once()  # warm up (imports, RAPL baseline)
    cpu0, wall0 = cpu_seconds(), time.perf_counter()
    for _ in range(reads):
        once()
    cpu = (cpu_seconds() - cpu0) / reads
    wall = (time.perf_counter() - wall0) / reads
    share = cpu / INTERVAL * 100
    print(
        f"{label:<44} cpu {cpu * 1e3:7.3f} ms/read   wall {wall * 1e3:7.3f} ms/read   "
        f"{share:6.3f} % of one core at a {INTERVAL:g} s interval",
        flush=True,
    )
    return share


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--reads", type=int, default=300)
    args = ap.parse_args()
    # The daemon logs at info; debug lines per command would be most of the cost measured here.
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.INFO))
    with tempfile.TemporaryDirectory(prefix="sfx-power-bench-") as tmp:
        root = Path(tmp)
        fake_sysfs(root)
        smi = fake_binary(root / "nvidia-smi", "nvidia-smi-4gpu-synthetic.csv")
        ipmitool = fake_binary(root / "ipmitool", "ipmitool-dcmi-activated-rabe-zabbix-101.txt")
        clock_tick = iter(range(1, 10**9))
        rapl = RaplReader("bench", root, clock=lambda: float(next(clock_tick)))
        gpus = NvidiaSmiReader("bench", binary=str(smi))
        bmc = IpmiReader("bench", binary=str(ipmitool))
        print(f"fake sysfs: 2 packages + 2 dram + 2 core zones; fake nvidia-smi: 4 GPUs; {args.reads} reads each")
        measure("RAPL only (6 zones, in-process)", args.reads, lambda: rapl.read(time.time()))
        measure("nvidia-smi only (fake /bin/sh script)", args.reads, lambda: gpus.read(time.time()))
        measure("ipmitool only (fake /bin/sh script)", args.reads, lambda: bmc.read(time.time()))
        total = measure("full local read: RAPL + nvidia-smi", args.reads, lambda: collect([rapl, gpus], time.time()))
        verdict = "under" if total < 1.0 else "OVER"
        print(f"full local read is {verdict} the 1 % target ({total:.3f} %)")
        print(
            "not measured here: a real nvidia-smi also initialises NVML on every run and a real ipmitool "
            "waits for the BMC; these figures are the fork/exec + parse floor"
        )
        print(f"python {sys.version.split()[0]}, {os.cpu_count()} cores")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
