"""An on-site battery as a planned resource.

- ``model``: the battery (capacity, charge/discharge limits, round-trip efficiency, state of
  charge bounds, state of charge now), a frozen value;
- ``config``: the ``[battery]`` table;
- ``dispatch``: the LPs (charge/discharge per half-hour under a site ceiling, minimising the
  planner's objective; the discharge the battery can surely deliver over a ceiling);
- ``planning``: jobs and battery in one site plan (a two-stage decision, see its docstring);
- ``sunspec``: the controller over Modbus TCP (SunSpec models 1 and 124, pymodbus);
- ``errors``: what goes wrong with it, rooted in SlurmFlexError.
"""

from slurm_flex.battery.dispatch import Schedule, deliverable, dispatch, grid_weight
from slurm_flex.battery.errors import BatteryError, BatteryFaultError, BatteryProtocolError, BatteryUnavailableError
from slurm_flex.battery.model import Battery

__all__ = [
    "Battery",
    "BatteryError",
    "BatteryFaultError",
    "BatteryProtocolError",
    "BatteryUnavailableError",
    "Schedule",
    "deliverable",
    "dispatch",
    "grid_weight",
]
