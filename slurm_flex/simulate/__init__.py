"""Simulation: real workload traces replayed against real grid data, as submitted and with
slurm-flex, through the same planner the daemon uses."""

from slurm_flex.simulate.engine import SimConfig, SimResult, simulate, slack_deadlines
from slurm_flex.simulate.signals import SimSignals, load_signals
from slurm_flex.simulate.traces import Trace, read_trace

__all__ = [
    "SimConfig",
    "SimResult",
    "SimSignals",
    "Trace",
    "load_signals",
    "read_trace",
    "simulate",
    "slack_deadlines",
]
