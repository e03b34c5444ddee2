"""The SunSpec client (slurm_flex.battery.sunspec) against pymodbus's own server in a separate
process on loopback (tests.sunspec_battery), holding a battery whose state of charge follows the
commanded rates; and the daemon's handling of a battery that does not answer or reports a
fault (dropped from the plan with one log line, planning goes on)."""

from __future__ import annotations

import time

import numpy as np
import pytest
import structlog

from slurm_flex.battery.config import BatteryConfig
from slurm_flex.battery.dispatch import dispatch
from slurm_flex.battery.errors import (
    BatteryError,
    BatteryFaultError,
    BatteryProtocolError,
    BatteryUnavailableError,
)
from slurm_flex.battery.planning import BatteryPlan
from slurm_flex.battery.sunspec import StorageStatus, SunSpecStorage, alarms, rate_registers, scaled, text
from slurm_flex.daemon.battery import BatteryControl
from slurm_flex.errors import SlurmFlexError
from slurm_flex.grid.series import SLOT_SECONDS
from tests.sunspec_fixtures import free_port, sunspec_battery

SLOT0 = 1_800_000_000 - 1_800_000_000 % SLOT_SECONDS


def soc_after(storage: SunSpecStorage, start: float, moved: float, wait_s: float = 30) -> float:
    """Poll the battery until its state of charge has moved by at least ``moved`` (either way)
    from ``start``; returns it (the last read if it never did)."""
    soc = start
    until = time.monotonic() + wait_s
    while time.monotonic() < until:
        soc = storage.read().soc
        if abs(soc - start) >= moved:
            break
        time.sleep(0.05)
    return soc


def test_reads_the_storage_model_and_soc_follows_the_commanded_rates() -> None:
    with sunspec_battery("--soc", "50", "--speedup", "360") as port, SunSpecStorage("127.0.0.1", port) as storage:
        models = storage.models()
        assert set(models) == {1, 103, 124}
        status = storage.read()
        assert status.soc == pytest.approx(0.5)
        assert status.w_cha_max == 1000 and status.charge_status == "HOLDING"
        assert (status.manufacturer, status.serial) == ("slurm-flex", "SIM-0001")
        storage.set_rate(0.5, revert_seconds=60000)  # charge at 0.5 kW
        status = storage.read()
        assert status.control_mode == 3 and status.net_kw == pytest.approx(0.5)
        assert status.in_rate_pct == pytest.approx(50) and status.out_rate_pct == pytest.approx(-50)
        charged = soc_after(storage, 0.5, 0.02)
        assert charged >= 0.5 + 0.02
        assert storage.read().charge_status == "CHARGING"
        storage.set_rate(-1.0, revert_seconds=60000)  # discharge at 1 kW
        assert storage.read().net_kw == pytest.approx(-1.0)
        assert soc_after(storage, charged, 0.02) <= charged - 0.02
        storage.set_rate(0.0, revert_seconds=60000)
        held = storage.read()
        assert held.net_kw == 0 and held.charge_status == "HOLDING"


def test_the_map_is_found_at_another_base_address() -> None:
    with sunspec_battery("--base", "50000") as port, SunSpecStorage("127.0.0.1", port) as storage:
        assert storage.read().soc == pytest.approx(0.5)


def test_no_sunspec_map_is_a_protocol_error() -> None:
    with (
        sunspec_battery("--base", "30000") as port,
        SunSpecStorage("127.0.0.1", port) as storage,
        pytest.raises(BatteryProtocolError, match="SunS"),
    ):
        storage.read()


@pytest.mark.parametrize(("fault", "match"), [("alarm", "OVER_TEMP"), ("off", "OFF")])
def test_a_fault_is_reported(fault: str, match: str) -> None:
    with sunspec_battery("--fault", fault) as port, SunSpecStorage("127.0.0.1", port) as storage:
        with pytest.raises(BatteryFaultError, match=match) as err:
            storage.read()
        assert isinstance(err.value, SlurmFlexError)


def test_a_battery_that_does_not_answer_is_unavailable_from_its_cause() -> None:
    port = free_port()  # nobody listens
    with SunSpecStorage("127.0.0.1", port, timeout_seconds=0.5) as storage, pytest.raises(BatteryUnavailableError):
        storage.read()


def test_pure_decoding() -> None:
    assert scaled(0x01F4, 0xFFFF) == pytest.approx(50.0)  # 500 x 10^-1
    assert scaled(0xFFFF, 0) is None and scaled(0x8000, 0, signed=True) is None
    assert scaled(0xFF38, 0xFFFE, signed=True) == pytest.approx(-2.0)  # -200 x 10^-2
    assert text([0x5375, 0x6E53, 0]) == "SunS"
    assert alarms(1 << 7 | 1) == ["GROUND_FAULT", "OVER_TEMP"] and alarms(0xFFFFFFFF) == []
    out, in_ = rate_registers(0.25, 1000.0, -2)  # 25 % in 0.01 %
    assert (in_, out) == (2500, (-2500) & 0xFFFF)
    with pytest.raises(BatteryProtocolError):
        rate_registers(500.0, 1000.0, -2)  # 50000 % does not fit an int16


def _control(port: int) -> BatteryControl:
    return BatteryControl(
        BatteryConfig(enabled=True, port=port, capacity_kwh=2, max_charge_kw=1, max_discharge_kw=1, timeout_seconds=0.5)
    )


@pytest.mark.parametrize("case", ["silent", "alarm", "off"])
def test_a_failing_battery_is_dropped_with_one_log_line(case: str) -> None:
    def read(port: int) -> tuple[object, int, list[dict[str, object]]]:
        with structlog.testing.capture_logs() as logs:
            battery, failures = _control(port).read()
        return battery, failures, logs

    if case == "silent":
        battery, failures, logs = read(free_port())
    else:
        with sunspec_battery("--fault", case) as port:
            battery, failures, logs = read(port)
    assert battery is None and failures == 1
    dropped = [e for e in logs if e["event"] == "battery_dropped"]
    assert len(dropped) == 1 and len(logs) == 1
    assert dropped[0]["log_level"] == "warning" and dropped[0]["kind"] in {
        c.__name__ for c in (BatteryUnavailableError, BatteryFaultError)
    }


def test_a_healthy_battery_is_read_into_the_plan() -> None:
    with sunspec_battery("--soc", "80") as port:
        control = _control(port)
        battery, failures = control.read()
        control.close()
    assert failures == 0 and battery is not None
    assert battery.soc == pytest.approx(0.8) and battery.capacity_kwh == 2
    assert control.summary["ok"] and "sunspec-battery-sim" in control.summary["device"]


def test_errors_are_rooted_in_slurmflexerror() -> None:
    for cls in (BatteryUnavailableError, BatteryProtocolError, BatteryFaultError):
        assert issubclass(cls, BatteryError) and issubclass(cls, SlurmFlexError)


class BrokenLink:
    """A controller whose reads or writes fail in ways the SunSpec client does not foresee."""

    def __init__(self, on: str) -> None:
        self.on = on
        self.closed = False

    def read(self) -> StorageStatus:
        if self.on == "read":
            raise RuntimeError("driver crashed")
        return StorageStatus(0.5, 1000.0, "HOLDING", 0, 0.0, 0.0, None, None, None, "x", "y", "z")

    def set_rate(self, kw: float, revert_seconds: int = 900) -> None:
        raise BatteryUnavailableError("no answer")

    def close(self) -> None:
        self.closed = True


def test_unforeseen_errors_are_soft_failures_too() -> None:
    config = BatteryConfig(enabled=True, capacity_kwh=2, max_charge_kw=1, max_discharge_kw=1)
    link = BrokenLink("read")
    with structlog.testing.capture_logs() as logs:
        battery, failures = BatteryControl(config, lambda _: link).read()
    assert battery is None and failures == 1 and link.closed
    assert [e["event"] for e in logs] == ["battery_dropped"] and logs[0]["kind"] == "RuntimeError"
    # a command that fails: counted, logged, the link closed
    link = BrokenLink("write")
    control = BatteryControl(config, lambda _: link)
    battery, failures = control.read()
    assert battery is not None and failures == 0
    b = battery.with_soc(0.5)
    schedule = dispatch(b, np.full(4, 1.0), np.array([0.1, 0.3, 0.1, 0.3]))
    with structlog.testing.capture_logs() as logs:
        failed = control.command(BatteryPlan(SLOT0, schedule, None, np.zeros(4)), SLOT0, "enforce")
    assert failed == 1 and link.closed and [e["event"] for e in logs] == ["battery_command_failed"]
    assert control.summary["commanded"] is False
