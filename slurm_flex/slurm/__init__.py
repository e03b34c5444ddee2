"""Slurm adapter: one command seam (runner), pure parsers, pluggable backends, and a fake Slurm
behind the same backend interface for tests (:mod:`slurm_flex.slurm.fake`)."""

from slurm_flex.slurm.backend import BACKENDS, CommandBackend, SlurmBackend, UpdateReport, make_backend
from slurm_flex.slurm.parsers import SlurmJob, SlurmNode, parse_sinfo_json, parse_squeue_json
from slurm_flex.slurm.runner import CommandResult, SlurmRunner

__all__ = [
    "BACKENDS",
    "CommandBackend",
    "CommandResult",
    "SlurmBackend",
    "SlurmJob",
    "SlurmNode",
    "SlurmRunner",
    "UpdateReport",
    "make_backend",
    "parse_sinfo_json",
    "parse_squeue_json",
]
