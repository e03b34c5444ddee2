"""slurm-flex: deadline-aware, grid-aware deferral of flexible Slurm batch jobs."""

__version__ = "0.1.0"
