"""A SunSpec battery on Modbus TCP for the battery tests, run as a separate process on
loopback: pymodbus's own server (its SimDevice datastore) holding the SunSpec map, common model
1, a three-phase inverter (model 103, for its state and alarm registers) and storage model 124,
with a battery model behind it whose state of charge follows the commanded rates.

    python -m tests.sunspec_battery PORT [--capacity-kwh 2] [--max-kw 1] [--soc 50]
        [--efficiency 0.9] [--speedup 3600] [--fault none|alarm|off] [--base 40000]

``--speedup``: simulated seconds per real second (the SoC moves that much faster). The
power follows the window StorCtl_Mod and InWRte/OutWRte set (see slurm_flex.battery.sunspec):
it is 0 when the window holds 0, else the window's nearest edge; it reverts to 0 (the device's
own mode) InOutWRte_RvrtTms simulated seconds after the last command. It prints "ready PORT"
once it listens.
"""

from __future__ import annotations

import argparse
import asyncio
import math
import sys
import time

from pymodbus.server import ModbusTcpServer
from pymodbus.simulator import DataType, SimData, SimDevice

from slurm_flex.battery import sunspec as ss

CHA_STATE_SF = -1  # ChaState in 0.1 %
RATE_SF = -2  # InWRte/OutWRte in 0.01 %


def _text(value: str, registers: int) -> list[int]:
    raw = value.encode("ascii")[: 2 * registers].ljust(2 * registers, b"\0")
    return [int.from_bytes(raw[i : i + 2], "big") for i in range(0, len(raw), 2)]


class BatteryModel:
    """The registers and the physics behind them."""

    def __init__(self, args: argparse.Namespace) -> None:
        self.base = args.base
        self.capacity_kwh = args.capacity_kwh
        self.max_w = args.max_kw * 1000.0
        self.eta = math.sqrt(args.efficiency)
        self.soc = args.soc / 100.0
        self.speedup = args.speedup
        self.last = time.monotonic()
        self.last_command = self.last
        common = [ss.COMMON, 66, *_text("slurm-flex", 16), *_text("sunspec-battery-sim", 16)]
        common += [*_text("", 8), *_text("1.0", 8), *_text("SIM-0001", 16), args.unit, 0x8000]
        inverter = [0xFFFF] * 50
        inverter[ss.INV_ST] = 4  # MPPT: running
        inverter[ss.INV_EVT1 : ss.INV_EVT1 + 2] = [0, 1 << 7] if args.fault == "alarm" else [0, 0]  # OVER_TEMP
        storage = [0xFFFF] * 24
        for offset, value in {
            ss.W_CHA_MAX: round(self.max_w),
            ss.W_CHA_GRA: 100,
            ss.W_DIS_CHA_GRA: 100,
            ss.STOR_CTL_MOD: 0,
            ss.MIN_RSV_PCT: 0,
            ss.CHA_ST: ss.CHA_ST_OFF if args.fault == "off" else 6,
            ss.OUT_W_RTE: 0,
            ss.IN_W_RTE: 0,
            ss.RVRT_TMS: 0,
            ss.CHA_GRI_SET: 0,
            ss.W_CHA_MAX_SF: 0,
            ss.GRA_SF: 0,
            ss.MIN_RSV_PCT_SF: 0,
            ss.CHA_STATE_SF: ss.uint16(CHA_STATE_SF),
            ss.IN_OUT_W_RTE_SF: ss.uint16(RATE_SF),
        }.items():
            storage[offset] = value
        self.registers = [*ss.SUNS, *common, 103, 50, *inverter, ss.STORAGE, 24, *storage, ss.END_MODEL, 0]
        self.storage_at = 2 + len(common) + 2 + 50 + 2  # offset of model 124's data from base
        self._publish()

    def reg(self, registers: list[int], offset: int) -> int:
        return registers[self.storage_at + offset]

    def power_w(self, registers: list[int]) -> float:
        """The battery's power now (positive charging) from the command registers."""
        if self.reg(registers, ss.STOR_CTL_MOD) != ss.CHARGE_BIT | ss.DISCHARGE_BIT:
            return 0.0
        pct = 10.0**RATE_SF
        upper = ss.int16(self.reg(registers, ss.IN_W_RTE)) * pct / 100 * self.max_w
        lower = -ss.int16(self.reg(registers, ss.OUT_W_RTE)) * pct / 100 * self.max_w
        return min(max(0.0, lower), upper)

    def advance(self, registers: list[int]) -> None:
        """Integrate the state of charge since the last access; a command past its revert time
        held only until then."""
        now = time.monotonic()
        seconds = (now - self.last) * self.speedup
        w = self.power_w(registers)
        revert = self.reg(registers, ss.RVRT_TMS)
        if revert:
            seconds = min(seconds, max(0.0, revert - (self.last - self.last_command) * self.speedup))
            if (now - self.last_command) * self.speedup > revert:
                registers[self.storage_at + ss.STOR_CTL_MOD] = 0
        self.last = now
        delta_kwh = (w * self.eta if w > 0 else w / self.eta) / 1000.0 * seconds / 3600.0
        self.soc = min(1.0, max(0.0, self.soc + delta_kwh / self.capacity_kwh))
        self.registers = registers
        self._publish(self.power_w(registers))

    def _publish(self, w: float = 0.0) -> None:
        at = self.storage_at
        self.registers[at + ss.CHA_STATE] = round(self.soc * 100 / 10.0**CHA_STATE_SF)
        if self.registers[at + ss.CHA_ST] != ss.CHA_ST_OFF:
            state = 4 if w > 0 else 3 if w < 0 else 6
            state = 5 if self.soc >= 1.0 and w >= 0 else 2 if self.soc <= 0.0 and w <= 0 else state
            self.registers[at + ss.CHA_ST] = state

    async def action(
        self,
        function_code: int,
        start_address: int,
        address: int,
        count: int,
        registers: list[int],
        set_values: list[int] | list[bool] | None,
    ) -> None:
        self.advance(registers)
        if set_values is not None:
            self.last_command = time.monotonic()


async def serve(args: argparse.Namespace) -> None:
    model = BatteryModel(args)
    device = SimDevice(
        id=0,
        simdata=[SimData(address=args.base, values=list(model.registers), datatype=DataType.REGISTERS)],
        action=model.action,
    )
    server = ModbusTcpServer(device, address=("127.0.0.1", args.port))
    await server.serve_forever(background=True)
    print(f"ready {args.port}", flush=True)
    await server.serving


def main(argv: list[str]) -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("port", type=int)
    parser.add_argument("--capacity-kwh", type=float, default=2.0)
    parser.add_argument("--max-kw", type=float, default=1.0)
    parser.add_argument("--soc", type=float, default=50.0)
    parser.add_argument("--efficiency", type=float, default=0.9)
    parser.add_argument("--speedup", type=float, default=3600.0)
    parser.add_argument("--fault", choices=("none", "alarm", "off"), default="none")
    parser.add_argument("--base", type=int, default=40000)
    parser.add_argument("--unit", type=int, default=1)
    asyncio.run(serve(parser.parse_args(argv)))


if __name__ == "__main__":
    main(sys.argv[1:])
