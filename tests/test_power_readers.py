"""Node power readers: RAPL/amd_energy over fake sysfs trees, IPMI/nvidia-smi/Slurm parsers over
recorded real outputs (tests/fixtures/power/PROVENANCE.md), the subprocess seam, the site meter
(real script, real HTTP server) and collect/node_watts."""

from __future__ import annotations

import json
import os
import shutil
import socket
import stat
import subprocess
import types
from collections.abc import Iterator, Sequence
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from slurm_flex.errors import SlurmFlexError
from slurm_flex.power.readers import (
    PowerCommandError,
    PowerParseError,
    PowerPermissionError,
    PowerReadError,
    PowerUnsupportedError,
    collect,
)
from slurm_flex.power.readers.command import run_command
from slurm_flex.power.readers.gpu import NvidiaSmiReader, NvmlReader, load_pynvml, parse_nvidia_smi_csv
from slurm_flex.power.readers.ipmi import (
    IpmiLan,
    IpmiReader,
    ipmi_dcmi_argv,
    ipmitool_argv,
    parse_ipmi_dcmi,
    parse_ipmitool_dcmi,
)
from slurm_flex.power.readers.meter import CommandMeter, HttpMeter, parse_meter_reading
from slurm_flex.power.readers.rapl import RaplReader, energy_delta_uj, watts_from_energy
from slurm_flex.power.readers.slurm_energy import (
    SlurmEnergyReader,
    node_energy_from_text,
    parse_node_energy,
    parse_node_energy_text,
)
from slurm_flex.power.sample import PowerReader, PowerSample, node_watts
from tests.conftest import Cluster
from tests.grid_replay import ReplayServer, Reply

FIX = Path(__file__).resolve().parent / "fixtures" / "power"
REPO = Path(__file__).resolve().parent.parent
MAX_RANGE = 262143328850  # a real max_energy_range_uj (Intel server package)


def fixture_text(name: str) -> str:
    return (FIX / name).read_text()


# -- fake sysfs ---------------------------------------------------------------------------------


def write_zone(root: Path, entry: str, name: str, energy: int, max_range: int | None = MAX_RANGE) -> Path:
    zdir = root / "sys" / "class" / "powercap" / entry
    zdir.mkdir(parents=True, exist_ok=True)
    (zdir / "name").write_text(f"{name}\n")
    (zdir / "energy_uj").write_text(f"{energy}\n")
    if max_range is not None:
        (zdir / "max_energy_range_uj").write_text(f"{max_range}\n")
    return zdir


def set_energy(root: Path, entry: str, energy: int) -> None:
    (root / "sys" / "class" / "powercap" / entry / "energy_uj").write_text(f"{energy}\n")


class FakeClock:
    def __init__(self, t: float = 1000.0) -> None:
        self.t = t

    def __call__(self) -> float:
        return self.t


def two_socket_server(root: Path) -> None:
    """Intel server layout: package-N with a dram sub-zone each, and a core sub-zone on 0."""
    write_zone(root, "intel-rapl", "intel-rapl-control-type-is-not-a-zone", 0)
    write_zone(root, "intel-rapl:0", "package-0", 1_000_000)
    write_zone(root, "intel-rapl:0:0", "dram", 500_000)
    write_zone(root, "intel-rapl:0:1", "core", 700_000)
    write_zone(root, "intel-rapl:1", "package-1", 2_000_000)
    write_zone(root, "intel-rapl:1:0", "dram", 600_000)
    write_zone(root, "intel-rapl-mmio:0", "package-0", 9_000_000)  # MMIO duplicate of package-0


def by_component(samples: Sequence[PowerSample]) -> dict[str, PowerSample]:
    return {s.component: s for s in samples}


def test_rapl_first_read_is_baseline_then_watts_per_zone(tmp_path: Path) -> None:
    two_socket_server(tmp_path)
    clock = FakeClock()
    reader = RaplReader("n1", tmp_path, clock=clock)
    assert isinstance(reader, PowerReader)
    assert reader.read(now=1.0) == []
    clock.t += 2.0
    set_energy(tmp_path, "intel-rapl:0", 1_000_000 + 300_000_000)  # 300 J in 2 s
    set_energy(tmp_path, "intel-rapl:0:0", 500_000 + 40_000_000)
    set_energy(tmp_path, "intel-rapl:0:1", 700_000 + 200_000_000)
    set_energy(tmp_path, "intel-rapl:1", 2_000_000 + 100_000_000)
    set_energy(tmp_path, "intel-rapl:1:0", 600_000 + 20_000_000)
    samples = by_component(reader.read(now=2.0))
    assert set(samples) == {"package-0", "dram-0", "core-0", "package-1", "dram-1"}
    assert samples["package-0"].watts == pytest.approx(150.0)
    assert samples["dram-0"].watts == pytest.approx(20.0)
    assert samples["core-0"].watts == pytest.approx(100.0)
    assert samples["package-1"].watts == pytest.approx(50.0)
    assert samples["dram-1"].watts == pytest.approx(10.0)
    # core is inside package-0; DRAM is not inside the package domain, so it counts.
    assert not samples["core-0"].top_level
    assert all(samples[c].top_level for c in ("package-0", "dram-0", "package-1", "dram-1"))
    assert {s.source for s in samples.values()} == {"rapl"}
    assert node_watts(list(samples.values())) == {"n1": pytest.approx(230.0)}


def test_rapl_wraparound_uses_max_energy_range(tmp_path: Path) -> None:
    write_zone(tmp_path, "intel-rapl:0", "package-0", MAX_RANGE - 50_000_000)
    clock = FakeClock()
    reader = RaplReader("n1", tmp_path, clock=clock)
    reader.read(0)
    clock.t += 1.0
    set_energy(tmp_path, "intel-rapl:0", 70_000_000)  # wrapped: 50 J + 70 J in 1 s
    [sample] = reader.read(1)
    assert sample.watts == pytest.approx(120.0)


def test_rapl_counter_going_back_without_range_is_no_reading(tmp_path: Path) -> None:
    write_zone(tmp_path, "intel-rapl:0", "package-0", 90_000_000, max_range=None)
    clock = FakeClock()
    reader = RaplReader("n1", tmp_path, clock=clock)
    reader.read(0)
    clock.t += 1.0
    set_energy(tmp_path, "intel-rapl:0", 10_000_000)
    assert reader.read(1) == []
    clock.t += 1.0
    set_energy(tmp_path, "intel-rapl:0", 15_000_000)  # the reset became the new baseline
    assert [s.watts for s in reader.read(2)] == [pytest.approx(5.0)]


@given(
    max_range=st.integers(min_value=1, max_value=2**40),
    data=st.data(),
    seconds=st.floats(min_value=1e-3, max_value=1e4, allow_nan=False, allow_infinity=False),
)
def test_wraparound_property(max_range: int, data: st.DataObject, seconds: float) -> None:
    previous = data.draw(st.integers(min_value=0, max_value=max_range - 1))
    current = data.draw(st.integers(min_value=0, max_value=max_range - 1))
    delta = energy_delta_uj(previous, current, max_range)
    assert delta is not None
    assert 0 <= delta < max_range
    assert delta == (current - previous) % max_range
    watts = watts_from_energy(delta, seconds)
    assert watts >= 0
    assert watts == pytest.approx(delta / 1e6 / seconds)


def test_rapl_vanished_and_new_zones(tmp_path: Path) -> None:
    two_socket_server(tmp_path)
    clock = FakeClock()
    reader = RaplReader("n1", tmp_path, clock=clock)
    reader.read(0)
    shutil.rmtree(tmp_path / "sys/class/powercap/intel-rapl:1")
    shutil.rmtree(tmp_path / "sys/class/powercap/intel-rapl:1:0")
    write_zone(tmp_path, "intel-rapl:2", "package-2", 5_000_000)
    clock.t += 1.0
    set_energy(tmp_path, "intel-rapl:0", 1_000_000 + 80_000_000)
    samples = by_component(reader.read(1))
    assert "package-1" not in samples and "dram-1" not in samples  # gone, not an error
    assert "package-2" not in samples  # new: baseline only
    assert samples["package-0"].watts == pytest.approx(80.0)
    clock.t += 1.0
    set_energy(tmp_path, "intel-rapl:2", 5_000_000 + 33_000_000)
    assert by_component(reader.read(2))["package-2"].watts == pytest.approx(33.0)


def test_rapl_zone_vanishing_between_listing_and_reading(tmp_path: Path) -> None:
    write_zone(tmp_path, "intel-rapl:0", "package-0", 1)
    write_zone(tmp_path, "intel-rapl:1", "package-1", 1)

    def read_text(path: Path) -> str:
        if path.name == "energy_uj" and path.parent.name == "intel-rapl:1":
            raise FileNotFoundError(2, "No such file or directory", str(path))
        return path.read_text()

    clock = FakeClock()
    reader = RaplReader("n1", tmp_path, clock=clock, read_text=read_text)
    reader.read(0)
    clock.t += 1
    set_energy(tmp_path, "intel-rapl:0", 2_000_001)
    assert [s.component for s in reader.read(1)] == ["package-0"]


def test_rapl_permission_error_names_file_and_fix(tmp_path: Path) -> None:
    # Tests run as root, for whom mode 0400 is no barrier: inject the EACCES a non-root daemon
    # gets from energy_uj on Linux >= 5.10.
    write_zone(tmp_path, "intel-rapl:0", "package-0", 1)

    def read_text(path: Path) -> str:
        if path.name == "energy_uj":
            raise PermissionError(13, "Permission denied", str(path))
        return path.read_text()

    reader = RaplReader("n1", tmp_path, read_text=read_text)
    with pytest.raises(PowerPermissionError) as info:
        reader.read(0)
    message = str(info.value)
    assert str(tmp_path / "sys/class/powercap/intel-rapl:0/energy_uj") in message
    assert "root" in message and "udev" in message
    assert isinstance(info.value.__cause__, PermissionError)


def test_rapl_without_zones_is_unsupported(tmp_path: Path) -> None:
    with pytest.raises(PowerUnsupportedError, match="no RAPL zones"):
        RaplReader("n1", tmp_path).read(0)


def test_rapl_garbage_counter_is_a_parse_error(tmp_path: Path) -> None:
    zdir = write_zone(tmp_path, "intel-rapl:0", "package-0", 1)
    (zdir / "energy_uj").write_text("not-a-number\n")
    with pytest.raises(PowerParseError, match="energy_uj"):
        RaplReader("n1", tmp_path).read(0)


def test_psys_alone_is_top_level(tmp_path: Path) -> None:
    write_zone(tmp_path, "intel-rapl:0", "package-0", 0)
    write_zone(tmp_path, "intel-rapl:0:0", "core", 0)
    write_zone(tmp_path, "intel-rapl:1", "psys", 0)
    clock = FakeClock()
    reader = RaplReader("laptop", tmp_path, clock=clock)
    reader.read(0)
    clock.t += 1
    for entry, joules in (("intel-rapl:0", 8), ("intel-rapl:0:0", 5), ("intel-rapl:1", 12)):
        set_energy(tmp_path, entry, joules * 1_000_000)
    samples = reader.read(1)
    assert {s.component: s.top_level for s in samples} == {"package-0": False, "core-0": False, "psys": True}
    assert node_watts(samples) == {"laptop": pytest.approx(12.0)}


def test_amd_rapl_zones_are_read(tmp_path: Path) -> None:
    write_zone(tmp_path, "amd-rapl:0", "package-0", 0)
    write_zone(tmp_path, "amd-rapl:0:0", "core", 0)
    clock = FakeClock()
    reader = RaplReader("epyc", tmp_path, clock=clock)
    reader.read(0)
    clock.t += 0.5
    set_energy(tmp_path, "amd-rapl:0", 100_000_000)
    assert by_component(reader.read(1))["package-0"].watts == pytest.approx(200.0)


def write_amd_energy(root: Path, energies: dict[str, int]) -> Path:
    other = root / "sys/class/hwmon/hwmon0"
    other.mkdir(parents=True)
    (other / "name").write_text("coretemp\n")
    hdir = root / "sys/class/hwmon/hwmon3"
    hdir.mkdir(parents=True)
    (hdir / "name").write_text("amd_energy\n")
    for i, (label, energy) in enumerate(energies.items(), start=1):
        (hdir / f"energy{i}_label").write_text(f"{label}\n")
        (hdir / f"energy{i}_input").write_text(f"{energy}\n")
    return hdir


def test_amd_energy_hwmon(tmp_path: Path) -> None:
    hdir = write_amd_energy(tmp_path, {"Ecore000": 0, "Ecore001": 0, "Esocket0": 0, "Esocket1": 0})
    clock = FakeClock()
    reader = RaplReader("rome", tmp_path, clock=clock)
    reader.read(0)
    clock.t += 2
    for i, joules in enumerate((10, 12, 180, 140), start=1):
        (hdir / f"energy{i}_input").write_text(f"{joules * 1_000_000}\n")
    samples = by_component(reader.read(1))
    assert samples["package-0"].watts == pytest.approx(90.0)
    assert samples["package-1"].watts == pytest.approx(70.0)
    assert samples["core-0"].watts == pytest.approx(5.0) and not samples["core-0"].top_level
    assert {s.source for s in samples.values()} == {"amd_energy"}
    assert node_watts(list(samples.values())) == {"rome": pytest.approx(160.0)}


def test_powercap_wins_over_amd_energy(tmp_path: Path) -> None:
    write_amd_energy(tmp_path, {"Esocket0": 0})
    write_zone(tmp_path, "intel-rapl:0", "package-0", 0)
    assert [z.source for z in RaplReader("n", tmp_path).zones()] == ["rapl"]


def test_measure_reads_twice(tmp_path: Path) -> None:
    write_zone(tmp_path, "intel-rapl:0", "package-0", 0)
    clock = FakeClock()

    def sleep(seconds: float) -> None:
        clock.t += seconds
        set_energy(tmp_path, "intel-rapl:0", int(42 * seconds * 1_000_000))

    [sample] = RaplReader("n1", tmp_path, clock=clock, sleep=sleep).measure(0.25, now=100.0)
    assert sample.watts == pytest.approx(42.0)
    assert sample.at == 100.25


# -- IPMI ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "current", "average", "active"),
    [
        ("ipmitool-dcmi-activated-rabe-zabbix-101.txt", 197, 190, True),
        ("ipmitool-dcmi-activated-lovoo-18.txt", 215, 176, True),
        ("ipmitool-dcmi-deactivated-openbmc-3257.txt", 319, 319, False),
    ],
)
def test_parse_ipmitool_recorded(name: str, current: float, average: float, active: bool) -> None:
    reading = parse_ipmitool_dcmi(fixture_text(name))
    assert (reading.current, reading.average, reading.active) == (current, average, active)


@pytest.mark.parametrize(
    ("name", "current", "maximum"),
    [("ipmi-dcmi-active-chameleon.txt", 226, 650), ("ipmi-dcmi-active-ceems.txt", 332, 504)],
)
def test_parse_freeipmi_recorded(name: str, current: float, maximum: float) -> None:
    reading = parse_ipmi_dcmi(fixture_text(name))
    assert (reading.current, reading.maximum, reading.active) == (current, maximum, True)


def canned(output: str) -> tuple[list[list[str]], object]:
    calls: list[list[str]] = []

    def run(argv: Sequence[str], timeout: float) -> str:
        calls.append(list(argv))
        return output

    return calls, run


def failing(output: str, returncode: int = 1) -> object:
    def run(argv: Sequence[str], timeout: float) -> str:
        raise PowerCommandError(argv, f"exited {returncode}", returncode=returncode, output=output)

    return run


def test_ipmi_reader_local_ipmitool() -> None:
    calls, run = canned(fixture_text("ipmitool-dcmi-activated-rabe-zabbix-101.txt"))
    [sample] = IpmiReader("n7", run=run).read(now=5.0)  # type: ignore[arg-type]
    assert sample == PowerSample(source="ipmi", component="system", watts=197.0, at=5.0, node="n7")
    assert calls == [["ipmitool", "dcmi", "power", "reading"]]


def test_ipmi_reader_freeipmi() -> None:
    calls, run = canned(fixture_text("ipmi-dcmi-active-chameleon.txt"))
    [sample] = IpmiReader("n7", tool="freeipmi", run=run).read(now=5.0)  # type: ignore[arg-type]
    assert sample.watts == 226.0
    assert calls == [["ipmi-dcmi", "--get-system-power-statistics"]]


def test_ipmi_lan_argv_never_carries_the_password(tmp_path: Path) -> None:
    pw = tmp_path / "bmc.pw"
    lan = IpmiLan("10.1.2.3", "monitor", password_file=pw, freeipmi_config=tmp_path / "freeipmi.conf", port=6230)
    assert ipmitool_argv(lan) == [
        "ipmitool", "-I", "lanplus", "-H", "10.1.2.3", "-p", "6230", "-U", "monitor", "-f", str(pw),
        "dcmi", "power", "reading",
    ]  # fmt: skip
    assert ipmi_dcmi_argv(lan) == [
        "ipmi-dcmi", "-h", "10.1.2.3:6230", "-u", "monitor", "--config-file", str(tmp_path / "freeipmi.conf"),
        "-D", "LAN_2_0", "--get-system-power-statistics",
    ]  # fmt: skip
    with pytest.raises(SlurmFlexError, match="password_file"):
        ipmitool_argv(IpmiLan("10.1.2.3", "monitor"))
    with pytest.raises(SlurmFlexError, match="freeipmi_config"):
        ipmi_dcmi_argv(IpmiLan("10.1.2.3", "monitor", password_file=pw))


@pytest.mark.parametrize(
    ("tool", "name", "match"),
    [
        ("ipmitool", "ipmitool-dcmi-deactivated-openbmc-3257.txt", "deactivated"),
        ("ipmitool", "ipmitool-dcmi-deactivated-zero-phosphor-167.txt", "deactivated"),
        ("freeipmi", "ipmi-dcmi-not-available-ceems.txt", "Not Available"),
    ],
)
def test_ipmi_not_measuring_is_unsupported_not_zero(tool: str, name: str, match: str) -> None:
    _, run = canned(fixture_text(name))
    reader = IpmiReader("n1", tool=tool, run=run)  # type: ignore[arg-type]
    with pytest.raises(PowerUnsupportedError, match=match):
        reader.read(0)


def test_ipmi_accept_inactive_for_bmcs_that_never_activate() -> None:
    _, run = canned(fixture_text("ipmitool-dcmi-deactivated-openbmc-3257.txt"))
    [sample] = IpmiReader("n1", run=run, accept_inactive=True).read(0)  # type: ignore[arg-type]
    assert sample.watts == 319.0
    _, run = canned(fixture_text("ipmitool-dcmi-deactivated-zero-phosphor-167.txt"))
    with pytest.raises(PowerUnsupportedError, match="0 W"):
        IpmiReader("n1", run=run, accept_inactive=True).read(0)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("tool", "name", "match"),
    [
        ("ipmitool", "ipmitool-dcmi-invalid-command-ipmisim.txt", r"Invalid command \(c1\)"),
        ("freeipmi", "ipmi-dcmi-unsupported-ipmi-exporter-1.txt", "command invalid or unsupported"),
        ("freeipmi", "ipmi-dcmi-bad-completion-ipmi-exporter-75.txt", "bad completion code"),
    ],
)
def test_bmc_refusals_exit_nonzero_and_become_unsupported(tool: str, name: str, match: str) -> None:
    reader = IpmiReader("n1", tool=tool, run=failing(fixture_text(name)))  # type: ignore[arg-type]
    with pytest.raises(PowerUnsupportedError, match=match) as info:
        reader.read(0)
    assert isinstance(info.value.__cause__, PowerCommandError)


def test_ipmi_other_command_failures_stay_command_errors() -> None:
    reader = IpmiReader("n1", run=failing("Error: Unable to establish IPMI v2 / RMCP+ session"))  # type: ignore[arg-type]
    with pytest.raises(PowerCommandError, match="RMCP"):
        reader.read(0)


def test_ipmitool_garbage_is_a_parse_error() -> None:
    with pytest.raises(PowerParseError, match="no 'instantaneous power reading' line"):
        parse_ipmitool_dcmi("something else entirely\n")
    with pytest.raises(PowerParseError, match="not a number of watts"):
        parse_ipmitool_dcmi("    Instantaneous power reading:     lots Watts\n")


# -- the subprocess seam, for real ---------------------------------------------------------------


def script(tmp_path: Path, name: str, body: str) -> Path:
    path = tmp_path / name
    path.write_text(f"#!/bin/sh\n{body}\n")
    path.chmod(path.stat().st_mode | stat.S_IXUSR)
    return path


def test_run_command_returns_stdout(tmp_path: Path) -> None:
    ok = script(tmp_path, "ok", "echo hello; echo ignored >&2")
    assert run_command([str(ok)], timeout=5) == "hello\n"


def test_run_command_missing_binary(tmp_path: Path) -> None:
    with pytest.raises(PowerCommandError, match="not found") as info:
        run_command([str(tmp_path / "no-such-ipmitool"), "dcmi"], timeout=5)
    assert isinstance(info.value.__cause__, FileNotFoundError)
    assert str(tmp_path / "no-such-ipmitool") in str(info.value)


def test_run_command_timeout(tmp_path: Path) -> None:
    slow = script(tmp_path, "slow", "exec sleep 5")
    with pytest.raises(PowerCommandError, match=r"within 0\.2 s") as info:
        run_command([str(slow)], timeout=0.2)
    assert isinstance(info.value.__cause__, subprocess.TimeoutExpired)


def test_run_command_nonzero_keeps_both_streams(tmp_path: Path) -> None:
    bad = script(tmp_path, "bad", "echo out; echo 'Invalid command' >&2; exit 3")
    with pytest.raises(PowerCommandError) as info:
        run_command([str(bad)], timeout=5)
    assert info.value.returncode == 3
    assert "out" in info.value.output and "Invalid command" in info.value.output


def test_ipmi_reader_through_a_real_fake_binary(tmp_path: Path) -> None:
    fake = script(tmp_path, "ipmitool", f"cat {FIX / 'ipmitool-dcmi-activated-lovoo-18.txt'}")
    [sample] = IpmiReader("n1", binary=str(fake)).read(0)
    assert sample.watts == 215.0
    refusing = script(tmp_path, "ipmitool-old", f"cat {FIX / 'ipmitool-dcmi-invalid-command-ipmisim.txt'} >&2; exit 1")
    with pytest.raises(PowerUnsupportedError, match="Invalid command"):
        IpmiReader("n1", binary=str(refusing)).read(0)


# -- ipmi_sim: a simulated BMC on 127.0.0.1 ------------------------------------------------------


def free_udp_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture
def ipmisim(tmp_path: Path) -> Iterator[tuple[int, Path]]:
    # scripts/ipmisim installs openipmi and ipmitool with apt when it can (root, apt-get).
    installable = os.geteuid() == 0 and shutil.which("apt-get") is not None
    if not installable and (shutil.which("ipmi_sim") is None or shutil.which("ipmitool") is None):
        pytest.skip("ipmi_sim (openipmi) or ipmitool not installed, and not root to install them")
    port = free_udp_port()
    env = dict(os.environ, IPMISIM_DIR=str(tmp_path / "ipmisim"), IPMISIM_PORT=str(port))
    up = subprocess.run(
        [str(REPO / "scripts/ipmisim"), "up"], env=env, capture_output=True, text=True, timeout=300, check=False
    )
    try:
        if up.returncode != 0:
            pytest.fail(f"scripts/ipmisim up failed: {up.stderr}", pytrace=False)
        yield port, tmp_path / "ipmisim" / "password"
    finally:
        subprocess.run([str(REPO / "scripts/ipmisim"), "down"], env=env, capture_output=True, timeout=60, check=False)


def test_ipmi_reader_against_simulated_bmc_over_lanplus(ipmisim: tuple[int, Path]) -> None:
    port, password_file = ipmisim
    lan = IpmiLan("127.0.0.1", "admin", password_file=password_file, port=port, cipher_suite=3)
    # The session works (so the argv, password file and cipher suite are right) ...
    argv = [*ipmitool_argv(lan)[:-3], "mc", "info"]
    assert "Device ID" in run_command(argv, timeout=10)
    # ... and the simulated BMC, like real BMCs without DCMI power management, refuses the reading.
    with pytest.raises(PowerUnsupportedError, match=r"Invalid command \(c1\)"):
        IpmiReader("sim", lan=lan, timeout=10).read(0)


# -- GPUs ---------------------------------------------------------------------------------------


def test_parse_nvidia_smi_default_query() -> None:
    gpus = parse_nvidia_smi_csv(fixture_text("nvidia-smi-4gpu-synthetic.csv"))
    assert [(g.index, g.draw_watts, g.limit_watts) for g in gpus] == [
        (0, 312.45, 400.0),
        (1, 298.10, 400.0),
        (2, None, 400.0),
        (3, 61.07, 400.0),
    ]


def test_parse_nvidia_smi_recorded_nounits_bare_na() -> None:
    query = (
        "power.limit,power.min_limit,power.max_limit,memory.total,vbios_version,driver_version,name,gpu_uuid,"
        "power.draw,temperature.gpu,temperature.memory,clocks.current.graphics,clocks.sm,clocks.mem,"
        "utilization.gpu,utilization.memory,fan.speed,pcie.link.width.current,pstate"
    )  # the --query-gpu of the issue the fixture comes from
    fields = query.split(",")
    [gpu] = parse_nvidia_smi_csv(fixture_text("nvidia-smi-nounits-gpu-utils-83.csv"), fields)
    assert (gpu.index, gpu.name, gpu.draw_watts, gpu.limit_watts) == (0, "GeForce RTX 2080", 176.98, 200.0)


def test_nvidia_smi_not_supported_is_an_error_not_zero() -> None:
    query = (
        "gpu_name,utilization.gpu,utilization.memory,temperature.gpu,power.draw,power.limit,fan.speed,pstate,"
        "clocks.current.graphics,clocks.current.memory,power.max_limit,power.default_limit"
    )  # the --query-gpu of the issue the fixture comes from
    fields = query.split(",")
    [gpu] = parse_nvidia_smi_csv(fixture_text("nvidia-smi-not-supported-megaminer-235.csv"), fields)
    assert (gpu.name, gpu.draw_watts, gpu.limit_watts) == ("GeForce GTX 770", None, None)


def test_nvidia_smi_reader() -> None:
    calls, run = canned(fixture_text("nvidia-smi-4gpu-synthetic.csv"))
    samples = NvidiaSmiReader("g1", run=run).read(now=3.0)  # type: ignore[arg-type]
    assert [(s.component, s.watts) for s in samples] == [("gpu-0", 312.45), ("gpu-1", 298.10), ("gpu-3", 61.07)]
    assert calls == [["nvidia-smi", "--query-gpu=index,name,power.draw,power.limit", "--format=csv,noheader,nounits"]]
    _, run = canned("0, Tesla K80, [Not Supported], [Not Supported]\n")
    with pytest.raises(PowerUnsupportedError, match="0:Tesla K80"):
        NvidiaSmiReader("g1", run=run).read(0)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("output", "error"),
    [
        ("NVIDIA-SMI has failed because it couldn't communicate with the NVIDIA driver.\n", PowerReadError),
        ("0, A100, 12.5\n", PowerParseError),
        ("0, A100, lots, 400\n", PowerParseError),
    ],
)
def test_nvidia_smi_failures(output: str, error: type[Exception]) -> None:
    with pytest.raises(error):
        parse_nvidia_smi_csv(output)


def test_nvml_when_installed() -> None:
    nvml = load_pynvml()
    if nvml is None:
        pytest.skip("pynvml is not installed")
    reader = NvmlReader("g1", nvml)
    try:
        samples = reader.read(0)
    except PowerReadError as exc:  # installed but no driver/GPU on this machine
        assert "nvml" in str(exc)
    else:
        assert all(s.component.startswith("gpu-") and s.watts >= 0 for s in samples)


def test_nvml_absent_is_unsupported() -> None:
    reader = NvmlReader("g1")
    if load_pynvml() is not None:
        pytest.skip("pynvml is installed here")
    with pytest.raises(PowerUnsupportedError, match="pynvml"):
        reader.read(0)


# -- Slurm's own energy -------------------------------------------------------------------------


@pytest.mark.parametrize(
    "name", ["scontrol-show-node-json-25.11-hpc-libs.json", "scontrol-show-node-json-24.11.5-devcluster.json"]
)
def test_slurm_json_without_energy_plugin_is_no_reading(name: str) -> None:
    doc = json.loads(fixture_text(name))
    assert len(doc["nodes"]) >= 1
    assert parse_node_energy(doc, now=1.0) == []


def test_slurm_json_measured() -> None:
    doc = json.loads(fixture_text("scontrol-show-node-json-synthetic-measured.json"))
    samples = parse_node_energy(doc, now=1.0)
    assert samples == [
        PowerSample(source="slurm", component="node", watts=612.0, at=1795262000.0, node="gpu01"),
        PowerSample(source="slurm", component="node", watts=287.0, at=1795261990.0, node="cpu01"),
    ]  # cpu02 unset, cpu03 NO_VAL


def test_slurm_json_without_nodes_is_a_parse_error() -> None:
    with pytest.raises(PowerParseError, match="nodes"):
        parse_node_energy({"errors": []}, now=1.0)


def test_slurm_22_05_text_without_energy_plugin() -> None:
    text = fixture_text("scontrol-o-show-node-22.05.8-devcluster.txt")
    energies = node_energy_from_text(text)
    assert [e.node for e in energies] == ["node1", "node2", "node3", "node4"]
    assert all(e.current_watts is None and e.average_watts is None for e in energies)
    assert parse_node_energy_text(text, now=1.0) == []


def test_slurm_text_measured_and_unset() -> None:
    text = (
        "NodeName=a1 Arch=x86_64 CapWatts=n/a CurrentWatts=402 AveWatts=377 ExtSensorsJoules=n/s\n"
        "NodeName=a2 Arch=x86_64 CapWatts=n/a CurrentWatts=n/s AveWatts=n/s ExtSensorsJoules=n/s\n"
    )
    assert parse_node_energy_text(text, now=9.0) == [
        PowerSample(source="slurm", component="node", watts=402.0, at=9.0, node="a1")
    ]


def test_slurm_energy_reader_uses_run_seam() -> None:
    calls: list[list[str]] = []

    def run(argv: Sequence[str]) -> str:
        calls.append(list(argv))
        return fixture_text("scontrol-show-node-json-synthetic-measured.json")

    samples = SlurmEnergyReader(run, json_output=True).read(now=1.0)
    assert [s.node for s in samples] == ["gpu01", "cpu01"]
    assert calls == [["scontrol", "show", "node", "--json"]]


@pytest.mark.slurm
def test_slurm_energy_reader_on_the_dev_cluster(cluster: Cluster) -> None:
    def run(argv: Sequence[str]) -> str:
        return cluster.run(*argv).stdout

    reader = SlurmEnergyReader(run)
    energies = reader.energies()
    nodes = set(cluster.run("sinfo", "-h", "-N", "-o", "%N").stdout.split())
    assert {e.node for e in energies} == nodes and nodes
    # No acct_gather_energy plugin on the dev cluster: Slurm prints CurrentWatts=0, which is
    # "no reading", not 0 W.
    assert all(e.current_watts is None for e in energies)
    assert reader.read(now=0.0) == []
    # The JSON form does not exist on Slurm 22.05; if the cluster is newer, it must parse.
    version = cluster.run("scontrol", "--version").stdout
    if "22.05" in version:
        assert cluster.run("scontrol", "show", "node", "--json", check=False).returncode != 0
    else:
        assert SlurmEnergyReader(run, json_output=True).read(now=0.0) == []


# -- site meter ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "unit", "watts"),
    [
        ("1234.5\n", "kW", 1_234_500.0),
        ("870000", "W", 870_000.0),
        ('{"kw": 12.5}', "W", 12_500.0),
        ('{"watts": 4000}', "kW", 4_000.0),
        ("0", "kW", 0.0),
    ],
)
def test_parse_meter_reading(text: str, unit: str, watts: float) -> None:
    assert parse_meter_reading(text, unit, "test") == watts  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("text", "match"),
    [
        ("", "empty"),
        ("nan", "finite"),
        ("inf", "finite"),
        ("-3", "negative"),
        ("250000", "plausible maximum"),  # 250 MW: a W value read as kW
        ('{"kw": "x"}', "not a number"),
        ('{"kw": 1, "w": 1000}', "exactly one"),
        ('{"power": 3}', "exactly one"),
        ("{broken", "invalid JSON"),
        ("12 kW", "not a number"),
    ],
)
def test_meter_rejects(text: str, match: str) -> None:
    with pytest.raises(PowerParseError, match=match):
        parse_meter_reading(text, "kW", "site-meter")


def test_command_meter_runs_a_real_script(tmp_path: Path) -> None:
    meter_script = script(tmp_path, "meter", "echo '{\"kw\": 812.25}'")
    [sample] = CommandMeter([str(meter_script)], site="hpc-a").read(now=7.0)
    assert sample == PowerSample(source="meter", component="site", watts=812_250.0, at=7.0, node="hpc-a")
    broken = script(tmp_path, "broken", "echo 'modbus timeout' >&2; exit 2")
    with pytest.raises(PowerCommandError, match="modbus timeout"):
        CommandMeter([str(broken)]).read(0)


def test_http_meter_against_a_real_server() -> None:
    server = ReplayServer().start()
    server.add("/power", [Reply(body=b"1500.5\n"), Reply(body=b'{"kw": -1}'), Reply(status=503, body=b"down")])
    server.add("/slow", Reply(body=b"1", delay=1.0))
    try:
        meter = HttpMeter(f"{server.url}/power", unit="kW", timeout=2)
        assert meter.read(now=1.0)[0].watts == 1_500_500.0
        with pytest.raises(PowerParseError, match="negative"):
            meter.read(1.0)
        with pytest.raises(PowerReadError, match="HTTP 503"):
            meter.read(1.0)
        with pytest.raises(PowerReadError, match=r"no answer within 0\.2 s"):
            HttpMeter(f"{server.url}/slow", timeout=0.2).read(1.0)
        assert len(server.requests_to("/power")) == 3
    finally:
        server.stop()
    with pytest.raises(PowerReadError, match="/power"):
        HttpMeter(f"{server.url}/power", timeout=0.5).read(1.0)  # server gone: connection refused


# -- collect and node_watts ----------------------------------------------------------------------


class Broken:
    name = "broken"

    def read(self, now: float) -> list[PowerSample]:
        raise PowerUnsupportedError("no BMC here")


class Buggy:
    name = "buggy"

    def read(self, now: float) -> list[PowerSample]:
        raise ZeroDivisionError("oops")


class Fixed:
    def __init__(self, name: str, samples: list[PowerSample]) -> None:
        self.name = name
        self._samples = samples

    def read(self, now: float) -> list[PowerSample]:
        return self._samples


def s(node: str, component: str, watts: float, source: str = "x", top_level: bool = True) -> PowerSample:
    return PowerSample(source=source, component=component, watts=watts, at=0.0, node=node, top_level=top_level)


def test_collect_counts_failures_and_never_raises() -> None:
    good = Fixed("good", [s("n1", "package-0", 100)])
    result = collect([Broken(), good, Buggy()], now=0.0)
    assert result.samples == (s("n1", "package-0", 100),)
    assert result.error_count == 2
    assert result.errors[0] == "broken: no BMC here"
    assert result.errors[1].startswith("buggy: unexpected ZeroDivisionError")


def test_node_watts_rules() -> None:
    samples = [
        # n1: RAPL + GPUs, core excluded
        s("n1", "package-0", 100, "rapl"),
        s("n1", "dram-0", 20, "rapl"),
        s("n1", "core-0", 70, "rapl", top_level=False),
        s("n1", "gpu-0", 250, "nvidia-smi"),
        s("n1", "gpu-0", 251, "nvml"),  # the same GPU through a second reader: not added
        # n2: BMC system power already contains CPUs and GPUs
        s("n2", "system", 900, "ipmi"),
        s("n2", "package-0", 150, "rapl"),
        s("n2", "gpu-0", 300, "nvidia-smi"),
        # n3: only Slurm's own figure
        s("n3", "node", 410, "slurm"),
        s("n3", "package-0", 100, "rapl"),
        # the site meter is not a node
        s("site", "site", 1e6, "meter"),
    ]
    assert node_watts(samples) == {"n1": 370.0, "n2": 900.0, "n3": 410.0}


def test_nvml_reads_milliwatts_per_gpu_and_survives_a_gpu_without_power_readings() -> None:
    """Against a stand-in with pynvml's functions (this machine has no NVIDIA driver): NVML
    reports milliwatts; a GPU that cannot report power gives no sample, not 0 W; a lost driver
    is a read error and the next read initialises again."""

    class NVMLError(Exception):
        pass

    calls = {"init": 0}
    draws: dict[int, int | None] = {0: 71_250, 1: None}

    def power(handle: int) -> int:
        value = draws[handle]
        if value is None:
            raise NVMLError("Not Supported")
        return value

    def init() -> None:
        calls["init"] += 1

    def count() -> int:
        if calls.get("lost"):
            raise NVMLError("GPU is lost")
        return len(draws)

    stand_in = types.SimpleNamespace(
        NVMLError=NVMLError,
        nvmlInit=init,
        nvmlDeviceGetCount=count,
        nvmlDeviceGetHandleByIndex=lambda i: i,
        nvmlDeviceGetName=lambda h: b"NVIDIA A100-SXM4-40GB",
        nvmlDeviceGetPowerUsage=power,
    )
    reader = NvmlReader("g1", stand_in)  # type: ignore[arg-type]
    [gpu0] = reader.read(5.0)
    assert (gpu0.component, gpu0.watts, gpu0.source, gpu0.node) == ("gpu-0", 71.25, "nvml", "g1")
    calls["lost"] = 1
    with pytest.raises(PowerReadError, match="GPU is lost"):
        reader.read(6.0)
    del calls["lost"]
    assert len(reader.read(7.0)) == 1 and calls["init"] == 2
