"""Run-time prediction from each user's recent jobs, for planning (never for deadlines).

Time limits are poor estimates of run time: on the traces in ../shared, jobs use 18 % (CEA
Curie) to 65 % (KTH SP2) of the node-seconds they ask for. Planning with them overstates how full
the machine will be, so a plan defers less than it could and a job is judged over a window far
longer than it runs. Tsafrir, Etsion and Feitelson ("Backfilling using system-generated
predictions rather than user runtime estimates", IEEE TPDS 2007) found the mean of the same
user's last two run times, capped at the time limit, as good as far more elaborate predictors.
Deadlines stay guarded by time limits (planner.risk), so a wrong prediction costs saving, not a
deadline.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Hashable

# Run times kept per user: Tsafrir's predictor averages the last two.
RECENT_RUNS = 2


class RuntimeHistory:
    """Finished run times per user, most recent last; fed as jobs end."""

    def __init__(self) -> None:
        self._runs: dict[Hashable, deque[float]] = {}

    def add(self, user: Hashable, seconds: float) -> None:
        if seconds <= 0:
            return
        runs = self._runs.get(user)
        if runs is None:
            runs = self._runs[user] = deque(maxlen=RECENT_RUNS)
        runs.append(float(seconds))

    def predict(self, user: Hashable, limit_s: float) -> float | None:
        """The mean of the user's last two run times capped at ``limit_s``; None without history
        (the caller plans with the time limit)."""
        runs = self._runs.get(user)
        if not runs:
            return None
        return min(float(limit_s), sum(runs) / len(runs))

    def __len__(self) -> int:
        return len(self._runs)
