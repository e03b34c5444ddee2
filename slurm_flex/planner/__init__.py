"""Planning: the slot-instance contract, solvers, and planning of a live queue."""

from slurm_flex.planner.instance import Instance, Solution, instance_from_json, instance_to_json, load_instance
from slurm_flex.planner.policy import Policy
from slurm_flex.planner.queue import FlexJob, Plan, PlannedJob, capacity_profile, plan
from slurm_flex.planner.solve import best_window, evaluate, overload, solve

__all__ = [
    "FlexJob",
    "Instance",
    "Plan",
    "PlannedJob",
    "Policy",
    "Solution",
    "best_window",
    "capacity_profile",
    "evaluate",
    "instance_from_json",
    "instance_to_json",
    "load_instance",
    "overload",
    "plan",
    "solve",
]
