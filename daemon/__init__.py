"""The slurm-flex daemon: cycles that read the queue, plan, and move start times."""
