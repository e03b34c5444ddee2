"""Planning instances and solutions: the public contract of ``slurmflex plan --instance``.

An instance is a horizon of equal slots (carbon, price, free capacity, optional power cap) and a
set of jobs, each with nodes, power, a duration in slots and a window of allowed start slots::

    {"slot_minutes": 30, "start": "2026-11-21T08:00:00Z", "carbon_price_gbp_per_tonne": 100,
     "slots": [{"carbon_g_per_kwh": 180, "price_gbp_per_mwh": 72.5, "capacity_nodes": 64,
                "power_cap_kw": null}, ...],
     "jobs": [{"id": "1001", "nodes": 2, "power_kw": 1.1, "duration_slots": 4,
               "release_slot": 0, "deadline_slot": 40}, ...]}

A job may start at slot s with release_slot <= s <= deadline_slot - duration_slots and then runs
in slots s .. s+duration_slots-1. The objective, in GBP, is the sum over running job-slots of
power_kw * slot_hours * (price/1000 + carbon_g * carbon_price / 1e6).
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import numpy.typing as npt

from slurm_flex.errors import PlanningError
from slurm_flex.grid.series import iso_utc, parse_iso_utc

FloatArray = npt.NDArray[np.float64]


def fit_slots(values: npt.ArrayLike | None, n: int, fill: float) -> FloatArray:
    """A per-slot array cut, or padded with ``fill``, to ``n`` slots (a copy; None: all ``fill``)."""
    out = np.full(n, fill, dtype=np.float64)
    if values is not None:
        given = np.asarray(values, dtype=np.float64)
        k = min(n, given.size)
        out[:k] = given[:k]
    return out


IntArray = npt.NDArray[np.int64]


@dataclass(frozen=True)
class Instance:
    """A planning problem. Arrays are per slot (length T) and per job (length J)."""

    slot_minutes: int
    start: int
    carbon_price_gbp_per_tonne: float
    carbon: FloatArray
    price: FloatArray
    capacity_nodes: FloatArray
    power_cap_kw: FloatArray
    job_ids: tuple[str, ...]
    nodes: FloatArray
    power_kw: FloatArray
    duration: IntArray
    release: IntArray
    deadline: IntArray

    @property
    def n_slots(self) -> int:
        return int(self.carbon.shape[0])

    @property
    def n_jobs(self) -> int:
        return len(self.job_ids)

    @property
    def slot_hours(self) -> float:
        return self.slot_minutes / 60.0

    def weights(self) -> FloatArray:
        """GBP per kWh in each slot: price plus priced carbon. Missing price counts as 0;
        missing carbon makes the slot unusable (inf)."""
        price = np.nan_to_num(self.price, nan=0.0)
        w = price / 1000.0 + self.carbon * self.carbon_price_gbp_per_tonne / 1e6
        return np.where(np.isfinite(self.carbon), w, np.inf)

    @property
    def latest_start(self) -> IntArray:
        return self.deadline - self.duration


@dataclass(frozen=True)
class LateReason:
    """Why a job is late: the slots of its window where the capacity left by the jobs that are
    not late is too small for it, which resource binds there, and how it was shown that no plan
    meets every deadline (or that it was not)."""

    binding_slots: tuple[int, ...]
    resource: str  # "nodes", "power", "nodes and power", or "window" (its window is too short)
    detail: str

    def to_json(self) -> dict[str, Any]:
        return {"binding_slots": list(self.binding_slots), "resource": self.resource, "detail": self.detail}

    def __str__(self) -> str:
        if not self.binding_slots:
            return self.detail
        return f"{self.resource} full in slots {_ranges(self.binding_slots)}; {self.detail}"


def _ranges(slots: tuple[int, ...]) -> str:
    """ "3-5, 9" for (3, 4, 5, 9)."""
    parts: list[str] = []
    first = prev = slots[0]
    for s in (*slots[1:], None):
        if s is not None and s == prev + 1:
            prev = s
            continue
        parts.append(str(first) if first == prev else f"{first}-{prev}")
        if s is not None:
            first = prev = s
    return ", ".join(parts)


@dataclass(frozen=True)
class Solution:
    """A plan. ``late`` jobs start at release and are left out of the capacity count (every
    other job fits within capacity); ``late_reasons`` says why each is late. The lower bound is
    the LP or Lagrangian bound on any plan (with late jobs: any plan leaving them late)."""

    starts: Mapping[str, int]
    late: tuple[str, ...]
    energy_kwh: float
    carbon_kg: float
    cost_gbp: float
    objective_gbp: float
    lower_bound_gbp: float | None
    solve_seconds: float
    method: str = ""
    late_reasons: Mapping[str, LateReason] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return {
            "starts": dict(self.starts),
            "late": list(self.late),
            "late_reasons": {k: v.to_json() for k, v in self.late_reasons.items()},
            "energy_kwh": round(self.energy_kwh, 6),
            "carbon_kg": round(self.carbon_kg, 6),
            "cost_gbp": round(self.cost_gbp, 6),
            "objective_gbp": round(self.objective_gbp, 6),
            "lower_bound_gbp": None if self.lower_bound_gbp is None else round(self.lower_bound_gbp, 6),
            "solve_seconds": round(self.solve_seconds, 6),
            "method": self.method,
        }


def _parse_start(value: Any) -> int:
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return int(value)
    if isinstance(value, str):
        try:
            return parse_iso_utc(value)
        except ValueError as exc:
            raise PlanningError(f"start: {exc}") from exc
    raise PlanningError(f"start: expected an ISO time or epoch, got {value!r}")


def _field(item: Mapping[str, Any], key: str, where: str, *, optional: bool = False) -> float:
    value = item.get(key)
    if value is None:
        if optional:
            return math.nan
        raise PlanningError(f"{where}: missing {key!r}")
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise PlanningError(f"{where}: {key} must be a number, got {value!r}")
    return float(value)


def instance_from_json(doc: Mapping[str, Any]) -> Instance:
    """Validate and convert a JSON instance; every error names the item and key."""
    if not isinstance(doc, Mapping):
        raise PlanningError("instance: expected a JSON object")
    slot_minutes = doc.get("slot_minutes", 30)
    if not isinstance(slot_minutes, int) or slot_minutes <= 0:
        raise PlanningError(f"slot_minutes: expected a positive integer, got {slot_minutes!r}")
    slots = doc.get("slots")
    jobs = doc.get("jobs")
    if not isinstance(slots, list) or not slots:
        raise PlanningError("slots: expected a non-empty list")
    if not isinstance(jobs, list):
        raise PlanningError("jobs: expected a list")
    carbon_price = doc.get("carbon_price_gbp_per_tonne", 0.0)
    if isinstance(carbon_price, bool) or not isinstance(carbon_price, (int, float)) or carbon_price < 0:
        raise PlanningError(f"carbon_price_gbp_per_tonne: expected a number >= 0, got {carbon_price!r}")
    carbon, price, cap, pcap = [], [], [], []
    for i, s in enumerate(slots):
        where = f"slots[{i}]"
        if not isinstance(s, Mapping):
            raise PlanningError(f"{where}: expected an object")
        c = _field(s, "carbon_g_per_kwh", where)
        if c < 0:
            raise PlanningError(f"{where}: carbon_g_per_kwh must be >= 0")
        carbon.append(c)
        price.append(_field(s, "price_gbp_per_mwh", where, optional=True))
        k = _field(s, "capacity_nodes", where, optional=True)
        cap.append(math.inf if math.isnan(k) else k)
        p = _field(s, "power_cap_kw", where, optional=True)
        pcap.append(math.inf if math.isnan(p) else p)
    ids, nodes, power, dur, rel, dl = [], [], [], [], [], []
    seen: set[str] = set()
    n_slots = len(slots)
    for i, j in enumerate(jobs):
        where = f"jobs[{i}]"
        if not isinstance(j, Mapping):
            raise PlanningError(f"{where}: expected an object")
        job_id = str(j.get("id", ""))
        if not job_id:
            raise PlanningError(f"{where}: missing 'id'")
        if job_id in seen:
            raise PlanningError(f"{where}: duplicate id {job_id!r}")
        seen.add(job_id)
        where = f"jobs[{i}] (id {job_id})"
        d = int(_field(j, "duration_slots", where))
        r = int(_field(j, "release_slot", where))
        e = int(_field(j, "deadline_slot", where))
        n = _field(j, "nodes", where)
        pw = _field(j, "power_kw", where)
        if d < 1:
            raise PlanningError(f"{where}: duration_slots must be >= 1")
        if n < 0 or pw < 0:
            raise PlanningError(f"{where}: nodes and power_kw must be >= 0")
        if r < 0 or r >= n_slots:
            raise PlanningError(f"{where}: release_slot {r} outside 0..{n_slots - 1}")
        if r + d > n_slots:
            raise PlanningError(f"{where}: starting at release_slot {r} it runs past the horizon ({n_slots} slots)")
        # A deadline past the horizon only means "no constraint inside it".
        e = min(e, n_slots)
        ids.append(job_id)
        nodes.append(n)
        power.append(pw)
        dur.append(d)
        rel.append(r)
        dl.append(e)
    return Instance(
        slot_minutes=slot_minutes,
        start=_parse_start(doc.get("start", 0)),
        carbon_price_gbp_per_tonne=float(carbon_price),
        carbon=np.asarray(carbon, dtype=np.float64),
        price=np.asarray(price, dtype=np.float64),
        capacity_nodes=np.asarray(cap, dtype=np.float64),
        power_cap_kw=np.asarray(pcap, dtype=np.float64),
        job_ids=tuple(ids),
        nodes=np.asarray(nodes, dtype=np.float64),
        power_kw=np.asarray(power, dtype=np.float64),
        duration=np.asarray(dur, dtype=np.int64),
        release=np.asarray(rel, dtype=np.int64),
        deadline=np.asarray(dl, dtype=np.int64),
    )


def _json_number(x: float) -> float | None:
    return None if not math.isfinite(x) else float(x)


def instance_to_json(inst: Instance) -> dict[str, Any]:
    return {
        "slot_minutes": inst.slot_minutes,
        "start": iso_utc(inst.start),
        "carbon_price_gbp_per_tonne": inst.carbon_price_gbp_per_tonne,
        "slots": [
            {
                "carbon_g_per_kwh": _json_number(c),
                "price_gbp_per_mwh": _json_number(p),
                "capacity_nodes": _json_number(k),
                "power_cap_kw": _json_number(pc),
            }
            for c, p, k, pc in zip(inst.carbon, inst.price, inst.capacity_nodes, inst.power_cap_kw, strict=True)
        ],
        "jobs": [
            {
                "id": jid,
                "nodes": float(n),
                "power_kw": float(pw),
                "duration_slots": int(d),
                "release_slot": int(r),
                "deadline_slot": int(e),
            }
            for jid, n, pw, d, r, e in zip(
                inst.job_ids, inst.nodes, inst.power_kw, inst.duration, inst.release, inst.deadline, strict=True
            )
        ],
    }


def load_instance(text: str) -> Instance:
    try:
        doc = json.loads(text)
    except json.JSONDecodeError as exc:
        raise PlanningError(f"instance is not valid JSON: {exc.msg} at line {exc.lineno}") from exc
    return instance_from_json(doc)
