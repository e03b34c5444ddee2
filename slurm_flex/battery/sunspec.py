"""The battery's controller over Modbus TCP, by the SunSpec information model (pymodbus).

The map starts with "SunS" (0x5375 0x6E53) at the base address (40000 by the standard; 0 and
50000 are also tried), then models follow as (ID, L, L data registers) until ID 0xFFFF:
model 1 (common: manufacturer, model, serial), optionally an inverter (101/102/103: operating
state ``St``, alarm bits ``Evt1``) and model 124, *Basic Storage Controls*, whose data
registers are, by offset::

     0 WChaMax      W, max charge rate: the reference of every percentage below
     1 WChaGra      % WChaMax/s, max charge ramp         2 WDisChaGra  % WChaMax/s, discharge ramp
     3 StorCtl_Mod  bit 0 CHARGE limit on, bit 1 DISCHARGE limit on
     5 MinRsvPct    % reserve                            6 ChaState    % state of charge
     9 ChaSt        1 OFF 2 EMPTY 3 DISCHARGING 4 CHARGING 5 FULL 6 HOLDING 7 TESTING
    10 OutWRte      % WChaMax, discharge limit           11 InWRte     % WChaMax, charge limit
    13 InOutWRte_RvrtTms  s, back to the device's own mode after this long without a command
    15 ChaGriSet    0 PV, 1 GRID (may charge from the grid)
    16 WChaMax_SF  17 WChaDisChaGra_SF  19 MinRsvPct_SF  20 ChaState_SF  23 InOutWRte_SF

A command sets both limits on (StorCtl_Mod = 3) with the window the battery's power must stay
in: charging at c kW is InWRte = c and OutWRte = -c (a negative discharge limit forces charge),
discharging at d kW is OutWRte = d and InWRte = -d, holding is both 0; with ChaGriSet = GRID and
the revert timer set, so that a daemon that stops does not leave a stale setpoint behind. (A
negative limit narrowing the other direction's range is how hybrid inverters such as Fronius
GEN24 implement model 124; both percentages are taken of WChaMax, the only rating the model
carries. A device with other conventions needs its own mapping here.)

:class:`SunSpecStorage` is the one adapter with side effects; the decoding is pure. Every
failure is a :class:`BatteryError` raised from its cause.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from types import TracebackType

from pymodbus.client import ModbusTcpClient
from pymodbus.exceptions import ModbusException

from slurm_flex.battery.errors import BatteryFaultError, BatteryProtocolError, BatteryUnavailableError

SUNS = (0x5375, 0x6E53)
BASE_ADDRESSES = (40000, 0, 50000)
END_MODEL = 0xFFFF
COMMON = 1
STORAGE = 124
INVERTERS = (101, 102, 103)
MAX_MODELS = 64  # a map longer than this is not walked further

# Model 124 offsets (from its first data register).
W_CHA_MAX, W_CHA_GRA, W_DIS_CHA_GRA, STOR_CTL_MOD = 0, 1, 2, 3
MIN_RSV_PCT, CHA_STATE, CHA_ST, OUT_W_RTE, IN_W_RTE = 5, 6, 9, 10, 11
RVRT_TMS, CHA_GRI_SET = 13, 15
W_CHA_MAX_SF, GRA_SF, MIN_RSV_PCT_SF, CHA_STATE_SF, IN_OUT_W_RTE_SF = 16, 17, 19, 20, 23
STORAGE_LENGTH = 24
CHARGE_BIT, DISCHARGE_BIT = 1, 2
GRID = 1
CHA_ST_NAMES = {1: "OFF", 2: "EMPTY", 3: "DISCHARGING", 4: "CHARGING", 5: "FULL", 6: "HOLDING", 7: "TESTING"}
CHA_ST_OFF = 1
# Inverter models 101-103: operating state and alarm bits.
INV_ST, INV_EVT1 = 36, 38
INV_FAULT = 7
EVT1_NAMES = (
    "GROUND_FAULT",
    "DC_OVER_VOLT",
    "AC_DISCONNECT",
    "DC_DISCONNECT",
    "GRID_DISCONNECT",
    "CABINET_OPEN",
    "MANUAL_SHUTDOWN",
    "OVER_TEMP",
    "OVER_FREQUENCY",
    "UNDER_FREQUENCY",
    "AC_OVER_VOLT",
    "AC_UNDER_VOLT",
    "BLOWN_STRING_FUSE",
    "UNDER_TEMP",
    "MEMORY_LOSS",
    "HW_TEST_FAILURE",
)
# SunSpec "not implemented" values.
NI_UINT16, NI_INT16, NI_UINT32 = 0xFFFF, -0x8000, 0xFFFFFFFF


def int16(raw: int) -> int:
    return raw - 0x10000 if raw & 0x8000 else raw


def uint16(value: int) -> int:
    return value & 0xFFFF


def scaled(raw: int, sf: int, signed: bool = False) -> float | None:
    """A point times 10**sf (None: not implemented)."""
    value = int16(raw) if signed else raw
    if (signed and value == NI_INT16) or (not signed and raw == NI_UINT16) or int16(sf) == NI_INT16:
        return None
    return value * 10.0 ** int16(sf)


def text(registers: Sequence[int]) -> str:
    """A SunSpec string point (two characters a register, NUL padded)."""
    raw = b"".join(r.to_bytes(2, "big") for r in registers)
    return raw.split(b"\0", 1)[0].decode("ascii", "replace").strip()


def alarms(evt1: int) -> list[str]:
    """The names of the alarm bits set in an inverter's Evt1 (none when not implemented)."""
    if evt1 == NI_UINT32:
        return []
    named = [name for bit, name in enumerate(EVT1_NAMES) if evt1 >> bit & 1]
    rest = evt1 & ~((1 << len(EVT1_NAMES)) - 1)
    return named + ([f"0x{rest:08x}"] if rest else [])


@dataclass(frozen=True)
class StorageStatus:
    """What the battery's controller reports."""

    soc: float  # state of charge, fraction
    w_cha_max: float  # W: the reference of the rate percentages
    charge_status: str  # ChaSt by name
    control_mode: int  # StorCtl_Mod
    in_rate_pct: float | None  # InWRte
    out_rate_pct: float | None  # OutWRte
    charge_ramp_pct_s: float | None  # WChaGra
    discharge_ramp_pct_s: float | None  # WDisChaGra
    min_reserve_pct: float | None
    manufacturer: str
    model: str
    serial: str

    @property
    def net_kw(self) -> float | None:
        """The power the limits force when they pin it (positive charging), else None."""
        if self.control_mode != CHARGE_BIT | DISCHARGE_BIT or self.in_rate_pct is None or self.out_rate_pct is None:
            return None
        if self.in_rate_pct + self.out_rate_pct > 1e-6:  # a window, not a setpoint
            return None
        return self.in_rate_pct / 100.0 * self.w_cha_max / 1000.0


def rate_registers(kw: float, w_cha_max: float, sf: int) -> tuple[int, int]:
    """(OutWRte, InWRte) raw values pinning the battery to ``kw`` (positive charges)."""
    if w_cha_max <= 0:
        raise BatteryProtocolError(f"WChaMax is {w_cha_max} W: rates cannot be set as a share of it")
    pct = kw * 1000.0 / w_cha_max * 100.0
    raw = round(pct / 10.0**sf)
    if not -0x7FFF <= raw <= 0x7FFF:
        raise BatteryProtocolError(f"{kw:.1f} kW is {pct:.0f} % of WChaMax: beyond InWRte's range")
    return uint16(-raw), uint16(raw)


class SunSpecStorage:
    """A SunSpec storage device over Modbus TCP: read its state, set its rate. Use as a context
    manager (or call :meth:`close`)."""

    def __init__(
        self,
        host: str,
        port: int = 502,
        unit_id: int = 1,
        base_address: int = 40000,
        timeout_seconds: float = 3.0,
    ) -> None:
        self.where = f"{host}:{port} unit {unit_id}"
        self.unit_id = unit_id
        self.bases = (base_address, *(b for b in BASE_ADDRESSES if b != base_address))
        self.client = ModbusTcpClient(host, port=port, timeout=timeout_seconds, retries=1, reconnect_delay=0)
        self._models: dict[int, tuple[int, int]] | None = None

    def __enter__(self) -> SunSpecStorage:
        return self

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        self.close()

    def close(self) -> None:
        self.client.close()  # type: ignore[no-untyped-call]

    # -- Modbus ---------------------------------------------------------------------------
    def _read(self, address: int, count: int) -> list[int]:
        try:
            if not self.client.connected and not self.client.connect():  # type: ignore[no-untyped-call]
                raise BatteryUnavailableError(f"battery {self.where}: cannot connect")
            rr = self.client.read_holding_registers(address, count=count, device_id=self.unit_id)
        except ModbusException as exc:
            raise BatteryUnavailableError(f"battery {self.where}: no answer reading {address}: {exc}") from exc
        except OSError as exc:
            raise BatteryUnavailableError(f"battery {self.where}: {exc}") from exc
        if rr.isError():
            raise BatteryUnavailableError(f"battery {self.where}: Modbus error reading {address}+{count}: {rr}")
        registers = list(rr.registers)
        if len(registers) < count:
            raise BatteryProtocolError(f"battery {self.where}: {len(registers)} registers at {address}, asked {count}")
        return registers[:count]

    def _write(self, address: int, values: Sequence[int]) -> None:
        try:
            if not self.client.connected and not self.client.connect():  # type: ignore[no-untyped-call]
                raise BatteryUnavailableError(f"battery {self.where}: cannot connect")
            rr = self.client.write_registers(address, list(values), device_id=self.unit_id)
        except ModbusException as exc:
            raise BatteryUnavailableError(f"battery {self.where}: no answer writing {address}: {exc}") from exc
        except OSError as exc:
            raise BatteryUnavailableError(f"battery {self.where}: {exc}") from exc
        if rr.isError():
            raise BatteryUnavailableError(f"battery {self.where}: Modbus error writing {address}: {rr}")

    # -- SunSpec --------------------------------------------------------------------------
    def models(self) -> dict[int, tuple[int, int]]:
        """Model id -> (address of its first data register, its length), the first of each."""
        if self._models is not None:
            return self._models
        tried: list[str] = []
        for base in self.bases:
            try:
                marker = self._read(base, 2)
            except BatteryUnavailableError as exc:
                if "Modbus error" not in str(exc):
                    raise
                tried.append(f"{base}: {exc}")
                continue
            if tuple(marker) != SUNS:
                tried.append(f"{base}: {marker[0]:#06x} {marker[1]:#06x}")
                continue
            found: dict[int, tuple[int, int]] = {}
            address = base + 2
            for _ in range(MAX_MODELS):
                model_id, length = self._read(address, 2)
                if model_id == END_MODEL:
                    break
                found.setdefault(model_id, (address + 2, length))
                address += 2 + length
            self._models = found
            return found
        raise BatteryProtocolError(f"battery {self.where}: no SunSpec marker 'SunS' ({'; '.join(tried)})")

    def _storage(self) -> tuple[int, list[int]]:
        models = self.models()
        if STORAGE not in models:
            raise BatteryProtocolError(
                f"battery {self.where}: no storage model 124 (models: {', '.join(map(str, sorted(models)))})"
            )
        address, length = models[STORAGE]
        if length < STORAGE_LENGTH:
            raise BatteryProtocolError(f"battery {self.where}: storage model 124 has {length} registers, not 24")
        return address, self._read(address, STORAGE_LENGTH)

    def _common(self) -> tuple[str, str, str]:
        models = self.models()
        if COMMON not in models:
            return "", "", ""
        address, length = models[COMMON]
        regs = self._read(address, min(length, 64))
        return text(regs[0:16]), text(regs[16:32]), text(regs[48:64])

    def _fault(self) -> str:
        """Why the inverter is faulted ("" if it is not, or there is no inverter model)."""
        models = self.models()
        inverter = next((m for m in INVERTERS if m in models), None)
        if inverter is None:
            return ""
        address, _ = models[inverter]
        regs = self._read(address + INV_ST, 4)
        state, evt1 = regs[0], regs[2] << 16 | regs[3]
        problems = (["operating state FAULT"] if state == INV_FAULT else []) + alarms(evt1)
        return ", ".join(problems)

    def read(self) -> StorageStatus:
        """The device's state; :class:`BatteryFaultError` if it reports a fault."""
        fault = self._fault()
        if fault:
            raise BatteryFaultError(f"battery {self.where} reports a fault: {fault}")
        _, regs = self._storage()
        soc = scaled(regs[CHA_STATE], regs[CHA_STATE_SF])
        w_max = scaled(regs[W_CHA_MAX], regs[W_CHA_MAX_SF])
        if soc is None or not 0 <= soc <= 100 or w_max is None:
            raise BatteryProtocolError(f"battery {self.where}: ChaState {regs[CHA_STATE]} / WChaMax {regs[W_CHA_MAX]}")
        if regs[CHA_ST] == CHA_ST_OFF:
            raise BatteryFaultError(f"battery {self.where}: storage status OFF")
        manufacturer, model, serial = self._common()
        rate_sf = regs[IN_OUT_W_RTE_SF]
        return StorageStatus(
            soc=soc / 100.0,
            w_cha_max=w_max,
            charge_status=CHA_ST_NAMES.get(regs[CHA_ST], str(regs[CHA_ST])),
            control_mode=regs[STOR_CTL_MOD],
            in_rate_pct=scaled(regs[IN_W_RTE], rate_sf, signed=True),
            out_rate_pct=scaled(regs[OUT_W_RTE], rate_sf, signed=True),
            charge_ramp_pct_s=scaled(regs[W_CHA_GRA], regs[GRA_SF]),
            discharge_ramp_pct_s=scaled(regs[W_DIS_CHA_GRA], regs[GRA_SF]),
            min_reserve_pct=scaled(regs[MIN_RSV_PCT], regs[MIN_RSV_PCT_SF]),
            manufacturer=manufacturer,
            model=model,
            serial=serial,
        )

    def set_rate(self, kw: float, revert_seconds: int = 900) -> None:
        """Pin the battery's power to ``kw`` (positive charges, negative discharges, 0 holds)
        until the next command or ``revert_seconds`` (0: no revert timer)."""
        if not math.isfinite(kw):
            raise BatteryProtocolError(f"battery {self.where}: setpoint {kw}")
        address, regs = self._storage()
        w_max = scaled(regs[W_CHA_MAX], regs[W_CHA_MAX_SF])
        sf = int16(regs[IN_OUT_W_RTE_SF])
        if w_max is None or sf == NI_INT16:
            raise BatteryProtocolError(f"battery {self.where}: WChaMax or InOutWRte_SF not implemented")
        out_raw, in_raw = rate_registers(kw, w_max, sf)
        self._write(address + OUT_W_RTE, [out_raw, in_raw])
        self._write(address + RVRT_TMS, [min(revert_seconds, 0xFFFE)])
        self._write(address + CHA_GRI_SET, [GRID])
        self._write(address + STOR_CTL_MOD, [CHARGE_BIT | DISCHARGE_BIT])
