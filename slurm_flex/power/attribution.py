"""Pure maths of measured power: node power to each running job's energy, and finished jobs'
measured against estimated power to the factors that correct the power model.

:func:`attribute` splits node watts over the jobs running there by allocated cores;
:func:`calibrate` folds finished jobs into per user+name, user and account factors;
:class:`Calibration` is what the planner asks for a job's factor.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from slurm_flex.power.store import EnergyIncrement, JobEnergy
from slurm_flex.slurm.parsers import SlurmJob

# A factor is used for planning once this many finished jobs back it; ratios are clipped so
# one broken measurement cannot make a job look free or enormous.
CALIBRATION_MIN_JOBS = 3
CALIBRATION_ALPHA = 0.3
RATIO_LIMITS = (0.2, 5.0)
MIN_MEASURED_SECONDS = 60.0


def attribute(
    jobs: Iterable[SlurmJob],
    watts_by_node: Mapping[str, float],
    seconds: float,
    estimates: Mapping[str, float | None],
) -> list[EnergyIncrement]:
    """Each running job's energy over ``seconds``: on every node it runs on, the node's power
    times its share of the cores allocated there (shared nodes are split by allocated cores;
    a node's idle draw goes to whoever runs on it). A job with any unmeasured node gets nothing
    this interval: a partial figure would read as a job that uses less than it does."""
    running = [j for j in jobs if j.state == "RUNNING" and j.allocation]
    cores_on: dict[str, int] = defaultdict(int)
    for job in running:
        for node, cores in job.allocation:
            cores_on[node] += cores
    out = []
    for job in running:
        if seconds <= 0 or any(node not in watts_by_node for node, _ in job.allocation):
            continue
        watts = sum(watts_by_node[node] * cores / cores_on[node] for node, cores in job.allocation)
        out.append(
            EnergyIncrement(
                job.job_id, job.user, job.account, job.name, estimates.get(job.job_id), watts * seconds, seconds
            )
        )
    return out


def calibration_keys(user: str, account: str, name: str) -> list[tuple[str, str]]:
    """Most specific first: this user's jobs of this name, this user, this account."""
    return [("user+name", f"{user}/{name}"), ("user", user), ("account", account)]


def calibrate(
    factors: Mapping[tuple[str, str], tuple[float, int]], finished: Iterable[JobEnergy]
) -> dict[tuple[str, str], tuple[float, int]]:
    """Factors (measured / estimated power, an exponential average, and how many jobs back it)
    updated with finished jobs that were measured for long enough."""
    out = dict(factors)
    for job in finished:
        mean = job.mean_watts
        if mean is None or not job.estimated_watts or job.measured_seconds < MIN_MEASURED_SECONDS:
            continue
        ratio = min(max(mean / job.estimated_watts, RATIO_LIMITS[0]), RATIO_LIMITS[1])
        for key in calibration_keys(job.user, job.account, job.name):
            old, n = out.get(key, (ratio, 0))
            out[key] = (ratio if n == 0 else old + CALIBRATION_ALPHA * (ratio - old), n + 1)
    return out


@dataclass(frozen=True)
class Calibration:
    """How the planner's power estimate for a job is corrected by measurement."""

    factors: Mapping[tuple[str, str], tuple[float, int]]
    min_jobs: int = CALIBRATION_MIN_JOBS

    def factor(self, user: str, account: str, name: str) -> float:
        for key in calibration_keys(user, account, name):
            found = self.factors.get(key)
            if found is not None and found[1] >= self.min_jobs:
                return found[0]
        return 1.0
