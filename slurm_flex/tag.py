"""The versioned tag the submit hook writes into a job's ``admin_comment``.

Format (one space-free token, so it can share admin_comment with a site's own text)::

    slurmflex:v1;power_w=350;basis=req;begin=0;grace=1795250900;deadline=0;slack=0;flex=deadline;why=

``power_w``  estimated watts per job (per array task); ``basis`` how it was obtained (``req``:
from the requested resources; later ``meas``: refined from measured power). ``begin`` the user's
own ``--begin`` (epoch, 0 = none): the earliest start slurm-flex may ever choose. ``grace`` the
epoch until which the hook postponed the job so the daemon can plan it first (0 = none).
``deadline`` as far as the hook could tell (0 = none or unknown; the daemon reads Slurm's own).
``slack`` the longest the job may wait past its earliest start (0 = only the deadline limits it).
``flex`` how the job is flexible (``deadline``, ``keyword``, ``policy``) or ``no``, and for ``no``
``why`` (``none``, ``optout``, ``exempt``, ``interactive``, ``hetjob``, ``invalid``). Unknown keys
are kept, so newer hooks and daemons can add fields without breaking older readers.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field

TAG_PREFIX = "slurmflex:v"
TAG_VERSION = 1
_TAG_TOKEN = re.compile(r"slurmflex:v(?P<version>\d+)(?P<fields>(?:;[A-Za-z_][A-Za-z0-9_]*=[^;\s]*)*)")


@dataclass(frozen=True)
class HookTag:
    version: int
    power_w: float | None = None
    basis: str = ""
    begin: int | None = None
    grace: int | None = None
    deadline: int | None = None
    slack: int | None = None
    flex: str = ""
    why: str = ""
    extra: Mapping[str, str] = field(default_factory=dict)

    @property
    def opted_out(self) -> bool:
        """The hook ruled this job out (opt-out, exempt, interactive, heterogeneous, invalid).

        ``why=none`` is not a ruling: the hook merely saw no flexibility, and a deadline it could
        not see (a command-line --deadline on Slurm 22.05) still makes the job flexible."""
        return self.flex == "no" and self.why not in ("", "none")


def _int_or_none(text: str | None) -> int | None:
    if text is None:
        return None
    try:
        value = int(float(text))
    except ValueError:
        return None
    return value or None


def parse_tag(admin_comment: str) -> HookTag | None:
    """The slurm-flex tag inside ``admin_comment``, or None if there is none."""
    m = _TAG_TOKEN.search(admin_comment or "")
    if not m:
        return None
    fields: dict[str, str] = {}
    for part in m.group("fields").split(";"):
        if "=" in part:
            key, value = part.split("=", 1)
            fields[key] = value
    power_text = fields.pop("power_w", None)
    try:
        power = float(power_text) if power_text is not None else None
    except ValueError:
        power = None
    return HookTag(
        version=int(m.group("version")),
        power_w=power if power is None or power >= 0 else None,
        basis=fields.pop("basis", ""),
        begin=_int_or_none(fields.pop("begin", None)),
        grace=_int_or_none(fields.pop("grace", None)),
        deadline=_int_or_none(fields.pop("deadline", None)),
        slack=_int_or_none(fields.pop("slack", None)),
        flex=fields.pop("flex", ""),
        why=fields.pop("why", ""),
        extra=fields,
    )


def format_tag(tag: HookTag) -> str:
    parts = [f"{TAG_PREFIX}{tag.version}"]
    if tag.power_w is not None:
        parts.append(f"power_w={round(tag.power_w)}")
    if tag.basis:
        parts.append(f"basis={tag.basis}")
    parts.append(f"begin={tag.begin or 0}")
    parts.append(f"grace={tag.grace or 0}")
    parts.append(f"deadline={tag.deadline or 0}")
    parts.append(f"slack={tag.slack or 0}")
    if tag.flex:
        parts.append(f"flex={tag.flex}")
        parts.append(f"why={tag.why}")
    parts.extend(f"{k}={v}" for k, v in sorted(tag.extra.items()))
    return ";".join(parts)
