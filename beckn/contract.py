"""DEG demand-flex contract shapes (Beckn v2 ``message.contract``), read and built.

The buyer's need is ``commitments[0].resources[0].resourceAttributes`` (a ``DemandFlexNeed``:
CAPACITY_REQUESTED, PRICE, SHORTFALL_PENALTY per PT30M interval); the seller's offer per
interval is ``commitments[0].commitmentAttributes`` (a ``TimeSeries`` with CAPACITY_OFFERED);
delivery is ``performance[].performanceAttributes`` (a ``DemandFlexPerformance`` with BASELINE
and USAGE per meter and interval). The cluster is always the seller; as a BPP it quotes from
its flexibility, as a BAP it answers a utility's published need.
"""

from __future__ import annotations

import copy
import re
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from slurm_flex.beckn.errors import BecknError
from slurm_flex.beckn.store import ABSORB, SHED
from slurm_flex.grid.series import SLOT_SECONDS, iso_utc

CTX = "https://schema.nfh.global/"
TIME_SERIES_CTX = f"{CTX}BecknTimeSeries/v1.0/context.jsonld"
PERFORMANCE_CTX = f"{CTX}DemandFlexPerformance/v2.0/context.jsonld"
NEED_CTX = f"{CTX}DemandFlexNeed/v2.0/context.jsonld"
OFFER_CTX = f"{CTX}DemandFlexBuyOffer/v2.0/context.jsonld"
CONTRACT_CTX = f"{CTX}DEGContract/v2.0/context.jsonld"
POLICY_URL = (
    "https://raw.githubusercontent.com/beckn/DEG/refs/heads/main/specification/policies/demand-flex-contractpolicy.rego"
)


@dataclass(frozen=True)
class Need:
    resource_id: str
    window_start: int
    interval_s: int  # PT30M in the devkit; shorter intervals that divide a half-hour are accepted
    requested: tuple[float, ...]
    price: tuple[float, ...]
    penalty: tuple[float, ...]
    baseline_method: dict[str, Any]
    currency: str
    buyer_id: str | None
    offered: tuple[float, ...] | None  # CAPACITY_OFFERED the buyer echoes (init/confirm), if any
    # SHED (draw less) or ABSORB (draw more): DEG carries it in the sign of PRICE, a negative
    # price paying for increased consumption; capacities stay positive kW either way.
    direction: str = SHED


def direction_of(price: Sequence[float]) -> str:
    """ABSORB when every interval's PRICE is negative, SHED when none is; a need mixing the two
    is refused (one contract is carried out as one ceiling or one floor, not both)."""
    negative = [p < 0 for p in price]
    if any(negative) and not all(negative):
        raise BecknError(
            "the need mixes reduction (PRICE >= 0) and increase (PRICE < 0) intervals: send them as two contracts",
            code="BIZ_FULFILLMENT_UNAVAILABLE",
        )
    return ABSORB if negative and all(negative) else SHED


def parse_duration_s(text: str) -> int:
    m = re.fullmatch(r"PT(?:(\d+)H)?(?:(\d+)M)?(?:(\d+)S)?", text or "")
    if m is None or not any(m.groups()):
        raise BecknError(f"duration {text!r} is not PT#H#M#S", code="SCH_INVALID_FORMAT")
    h, mi, s = (int(x or 0) for x in m.groups())
    return h * 3600 + mi * 60 + s


def parse_time(text: str) -> int:
    try:
        return int(datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp())
    except (ValueError, AttributeError) as exc:
        raise BecknError(f"time {text!r} is not ISO 8601", code="SCH_INVALID_FORMAT") from exc


def _column(series: dict[str, Any], name: str) -> list[float] | None:
    intervals = sorted(series.get("intervals", []), key=lambda i: i.get("id", 0))
    if not any(p.get("type") == name for i in intervals for p in i.get("payloads", [])):
        return None
    out = []
    for i in intervals:
        vals = [p.get("values", [0])[0] for p in i.get("payloads", []) if p.get("type") == name]
        out.append(float(vals[0]) if vals else 0.0)
    return out


def parse_need(contract: dict[str, Any]) -> Need:
    """The buyer's need from a contract; a shape the cluster cannot serve is a NACK that says why."""
    try:
        commitment = contract["commitments"][0]
        resource = commitment["resources"][0]
    except (KeyError, IndexError, TypeError) as exc:
        raise BecknError("contract has no commitments[0].resources[0]", code="SCH_REQUIRED_FIELD_MISSING") from exc
    need = resource.get("resourceAttributes") or {}
    if need.get("@type") != "DemandFlexNeed":
        raise BecknError("resources[0].resourceAttributes is not a DemandFlexNeed", code="SCH_TYPE_NOT_SUPPORTED")
    period = need.get("intervalPeriod", {})
    interval_s = parse_duration_s(period.get("duration", ""))
    if interval_s <= 0 or SLOT_SECONDS % interval_s:
        raise BecknError(
            "interval duration must divide 30 minutes (PT30M, PT15M, PT5M, ...)", code="SCH_INVALID_FORMAT"
        )
    start = parse_time(period.get("start", ""))
    if start % interval_s:
        raise BecknError("intervalPeriod.start must be on an interval boundary", code="SCH_INVALID_FORMAT")
    ids = [i.get("id") for i in need.get("intervals", [])]
    if sorted(ids) != list(range(len(ids))):
        raise BecknError("interval ids must run 0, 1, 2, ...", code="SCH_INVALID_FORMAT")
    requested = _column(need, "CAPACITY_REQUESTED")
    if requested is None or any(r < 0 for r in requested):
        raise BecknError(
            "CAPACITY_REQUESTED missing or negative (an increase is asked for with a negative PRICE)",
            code="SCH_INVALID_FORMAT",
        )
    price = _column(need, "PRICE") or [0.0] * len(requested)
    penalty = _column(need, "SHORTFALL_PENALTY") or [0.0] * len(requested)
    buyer: dict[str, Any] = {}
    for entry in (commitment.get("offer", {}).get("offerAttributes", {}) or {}).get("inputs", []):
        if entry.get("role") == "buyer":
            buyer = entry
    inputs = buyer.get("inputs", {}) if isinstance(buyer.get("inputs"), dict) else {}
    offered_series = commitment.get("commitmentAttributes")
    offered = _column(offered_series, "CAPACITY_OFFERED") if isinstance(offered_series, dict) else None
    return Need(
        resource_id=str(resource.get("id", "")),
        window_start=start,
        interval_s=interval_s,
        requested=tuple(requested),
        price=tuple(price),
        penalty=tuple(penalty),
        baseline_method=dict(inputs.get("baselineMethodology") or {}),
        currency=str(inputs.get("currency", "")),
        buyer_id=buyer.get("participantId"),
        offered=None if offered is None else tuple(offered),
        direction=direction_of(price),
    )


def _iso_duration(seconds: int) -> str:
    return f"PT{seconds // 60}M" if seconds % 60 == 0 else f"PT{seconds}S"


def offered_series(window_start: int, offered: Sequence[float], interval_s: int = SLOT_SECONDS) -> dict[str, Any]:
    return {
        "@context": TIME_SERIES_CTX,
        "@type": "TimeSeries",
        "intervalPeriod": {"start": iso_utc(window_start), "duration": _iso_duration(interval_s)},
        "payloadDescriptors": [
            {
                "objectType": "EVENT_PAYLOAD_DESCRIPTOR",
                "payloadType": "CAPACITY_OFFERED",
                "units": "KW",
                "insertedBy": "seller",
            }
        ],
        "intervals": [
            {"id": i, "payloads": [{"type": "CAPACITY_OFFERED", "values": [round(v, 3)]}]}
            for i, v in enumerate(offered)
        ],
    }


def quoted(
    contract: dict[str, Any],
    *,
    seller_id: str,
    contract_id: str | None,
    window_start: int,
    offered: Sequence[float],
    status: str,
    reason: str,
    valid_until: float | None,
    interval_s: int = SLOT_SECONDS,
) -> dict[str, Any]:
    """The buyer's contract with our offer filled in: seller id, CAPACITY_OFFERED per interval,
    status; a descriptor says when (and why) less than requested is offered."""
    out = copy.deepcopy(contract)
    if contract_id is not None:
        out["id"] = contract_id
    out["status"] = {"code": status}
    commitment = out["commitments"][0]
    commitment["status"] = {
        "descriptor": {
            "code": "ACTIVE" if status == "ACTIVE" else "CLOSED" if status in ("CANCELLED", "COMPLETE") else "DRAFT"
        }
    }
    commitment["commitmentAttributes"] = offered_series(window_start, offered, interval_s)
    offer = commitment.setdefault(
        "offer", {"id": f"offer-{contract_id or 'draft'}", "resourceIds": [commitment["resources"][0]["id"]]}
    )
    attrs = offer.setdefault("offerAttributes", {"@context": OFFER_CTX, "@type": "DemandFlexBuyOffer", "inputs": []})
    inputs = attrs.setdefault("inputs", [])
    seller = next((i for i in inputs if i.get("role") == "seller"), None)
    if seller is None:
        seller = {"role": "seller", "participantId": seller_id, "inputs": {}}
        inputs.append(seller)
    seller["participantId"] = seller_id
    if not isinstance(seller.get("inputs"), dict):
        seller["inputs"] = {}
    seller["inputs"].setdefault("participatingMeters", [f"{seller_id}:site-meter"])
    text = reason or "full delivery of the requested capacity in every interval, every job deadline kept"
    if valid_until is not None and status == "DRAFT":
        text += f"; quote valid until {iso_utc(int(valid_until))}"
    out["descriptor"] = {"name": "HPC demand flexibility (slurm-flex)", "shortDesc": text[:500]}
    return out


def performance(
    contract_id: str,
    meter_id: str,
    window_start: int,
    baseline: Sequence[float],
    usage: Sequence[float | None],
    status: str,
    methodology: str,
    interval_s: int = SLOT_SECONDS,
) -> dict[str, Any]:
    """A DemandFlexPerformance record: BASELINE and USAGE per interval for one meter."""
    intervals = []
    for i, (b, u) in enumerate(zip(baseline, usage, strict=True)):
        payloads = [{"type": "BASELINE", "values": [round(b, 3)]}]
        if u is not None:
            payloads.append({"type": "USAGE", "values": [round(u, 3)]})
        intervals.append({"id": i, "payloads": payloads})
    return {
        "id": f"perf-{contract_id}-{status.lower()}",
        "status": {"code": status, "name": status.replace("_", " ").title()},
        "commitmentIds": ["commitment-0"],
        "performanceAttributes": {
            "@context": PERFORMANCE_CTX,
            "@type": "DemandFlexPerformance",
            "eventId": contract_id,
            "methodology": methodology,
            "meters": [
                {
                    "meterId": meter_id,
                    "telemetry": {
                        "@context": TIME_SERIES_CTX,
                        "@type": "TimeSeries",
                        "intervalPeriod": {"start": iso_utc(window_start), "duration": _iso_duration(interval_s)},
                        "payloadDescriptors": [
                            {"objectType": "REPORT_PAYLOAD_DESCRIPTOR", "payloadType": "BASELINE", "units": "KW"},
                            {"objectType": "REPORT_PAYLOAD_DESCRIPTOR", "payloadType": "USAGE", "units": "KW"},
                        ],
                        "intervals": intervals,
                    },
                }
            ],
        },
    }


def context(
    action: str,
    *,
    request: dict[str, Any] | None,
    bap_id: str,
    bap_uri: str,
    bpp_id: str,
    bpp_uri: str,
    transaction_id: str,
    network_id: str,
    schema_context: Sequence[str] = (),
) -> dict[str, Any]:
    """A v2 context; a solicited callback echoes the request's messageId (the pairing), an
    unsolicited push mints a new one."""
    message_id = request["messageId"] if request is not None else str(uuid.uuid4())
    ctx: dict[str, Any] = {
        "networkId": network_id,
        "version": "2.0.0",
        "action": action,
        "bapId": bap_id,
        "bapUri": bap_uri,
        "bppId": bpp_id,
        "bppUri": bpp_uri,
        "transactionId": transaction_id,
        "messageId": message_id,
        "timestamp": datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")[:-4] + "Z",
    }
    if schema_context:
        ctx["schemaContext"] = list(schema_context)
    return ctx


def need_contract(
    *,
    buyer_id: str,
    resource_id: str,
    window_start: int,
    requested: Sequence[float],
    price: float,
    penalty: float,
    currency: str,
    seller_id: str | None,
    interval_s: int = SLOT_SECONDS,
) -> dict[str, Any]:
    """The contract a grid operator (the buyer) sends in select: its need per interval."""
    return {
        "status": {"code": "DRAFT"},
        "commitments": [
            {
                "id": "commitment-0",
                "status": {"descriptor": {"code": "DRAFT"}},
                "resources": [
                    {
                        "id": resource_id,
                        "descriptor": {"name": "Demand flexibility event"},
                        "quantity": {"unitCode": "kW", "unitQuantity": max(requested, default=0), "@type": "Quantity"},
                        "resourceAttributes": {
                            "@context": NEED_CTX,
                            "@type": "DemandFlexNeed",
                            "intervalPeriod": {"start": iso_utc(window_start), "duration": _iso_duration(interval_s)},
                            "payloadDescriptors": [
                                {
                                    "objectType": "EVENT_PAYLOAD_DESCRIPTOR",
                                    "payloadType": t,
                                    "units": u,
                                    "insertedBy": "buyer",
                                }
                                for t, u in (
                                    ("CAPACITY_REQUESTED", "KW"),
                                    ("PRICE", f"{currency}_PER_KWH"),
                                    ("SHORTFALL_PENALTY", f"{currency}_PER_KWH"),
                                )
                            ],
                            "intervals": [
                                {
                                    "id": i,
                                    "payloads": [
                                        {"type": "CAPACITY_REQUESTED", "values": [r]},
                                        {"type": "PRICE", "values": [price]},
                                        {"type": "SHORTFALL_PENALTY", "values": [penalty]},
                                    ],
                                }
                                for i, r in enumerate(requested)
                            ],
                        },
                    }
                ],
                "offer": {
                    "id": f"offer-{resource_id}",
                    "resourceIds": [resource_id],
                    "offerAttributes": {
                        "@context": OFFER_CTX,
                        "@type": "DemandFlexBuyOffer",
                        "inputs": [
                            {
                                "role": "buyer",
                                "participantId": buyer_id,
                                "inputs": {"currency": currency, "baselineMethodology": {"bestOf": 5, "outOf": 10}},
                            },
                            {"role": "seller", "participantId": seller_id, "inputs": {}},
                        ],
                    },
                },
            }
        ],
        "contractAttributes": {
            "@context": CONTRACT_CTX,
            "@type": "DEGContract",
            "roles": [{"role": "buyer", "participantId": buyer_id}, {"role": "seller", "participantId": seller_id}],
            "policy": {"url": POLICY_URL, "queryPath": "data.deg.contracts.demand_flex"},
        },
        "participants": [{"id": buyer_id}] + ([{"id": seller_id}] if seller_id else []),
    }


SCHEMA_CONTEXT = (NEED_CTX, OFFER_CTX, CONTRACT_CTX, TIME_SERIES_CTX, f"{CTX}Quantity/v2.0/context.jsonld")
