"""The cluster as aggregator (BAP, the devkit's seller role): discover a utility's published
need, answer it with the capacity per interval the queue can deliver (the same flexibility
function and planner check the provider role quotes with), select -> init -> confirm, keep the
confirmed contract in the store for the daemon to carry out, and report performance to the
utility with an ``update`` when the event is over (the endpoint's background task sends it).

Requests are signed and sent from here; their callbacks arrive at the endpoint
(``slurmflex beckn serve``), which verifies their 4-line signatures against the requests
recorded here and keeps them in the store's inbox, where this flow picks them up."""

from __future__ import annotations

import copy
import json
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any

import httpx

from slurm_flex.beckn import contract as shapes
from slurm_flex.beckn.errors import BecknError, ConflictError
from slurm_flex.beckn.inputs import read_flex_input
from slurm_flex.beckn.quote import quote_need
from slurm_flex.beckn.signing import Signer
from slurm_flex.beckn.store import BecknStore, Contract
from slurm_flex.grid.series import iso_utc
from slurm_flex.planner.policy import Policy


@dataclass
class Aggregator:
    signer: Signer
    store: BecknStore
    state_dir: Any
    policy: Policy
    public_url: str
    network_id: str
    margin_s: int
    validity_s: int = 300
    client: httpx.Client | None = None

    def request(self, url: str, bpp_id: str, action: str, message: dict[str, Any], tx: str) -> str:
        ctx = shapes.context(
            action,
            request=None,
            bap_id=self.signer.subscriber_id,
            bap_uri=self.public_url,
            bpp_id=bpp_id,
            bpp_uri=url,
            transaction_id=tx,
            network_id=self.network_id,
            schema_context=shapes.SCHEMA_CONTEXT,
        )
        ctx["ttl"] = "PT5M"
        body = json.dumps({"context": ctx, "message": message}, separators=(",", ":")).encode()
        now = int(time.time())
        header = self.signer.sign(body, now, now + self.validity_s)
        # Recorded before it is sent: the callback may arrive before the ACK does.
        self.store.record_request(url, action, ctx["messageId"], body, header.signature)
        client = self.client or httpx.Client(timeout=30)
        resp = client.post(f"{url.rstrip('/')}/{action}", content=body, headers={"Authorization": header.value()})
        ack = (
            resp.json().get("message", {})
            if resp.headers.get("content-type", "").startswith("application/json")
            else {}
        )
        if resp.status_code != 200 or ack.get("status") != "ACK":
            raise BecknError(
                f"{action} refused by {bpp_id}: HTTP {resp.status_code} {resp.text[:300]}", code="NET_CALLBACK_FAILED"
            )
        return str(ctx["messageId"])

    def wait(self, action: str, message_id: str, timeout: float) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            doc = self.store.inbox_find(action, message_id)
            if doc is not None:
                return doc
            time.sleep(0.1)
        raise BecknError(
            f"no {action} for {message_id} within {timeout:.0f} s (is `slurmflex beckn serve` running?)",
            code="NET_TIMEOUT",
        )

    def answer_need(self, url: str, bpp_id: str, timeout: float, out: Callable[[dict[str, Any]], None]) -> Contract:
        tx = str(uuid.uuid4())
        mid = self.request(
            url,
            bpp_id,
            "discover",
            {
                "intent": {
                    "filters": {
                        "type": "jsonpath",
                        "expression": "$..resources[?(@.resourceAttributes['@type']=='DemandFlexNeed')]",
                    }
                }
            },
            tx,
        )
        catalogs = self.wait("on_discover", mid, timeout)["message"].get("catalogs", [])
        contract = _contract_from_catalog(catalogs)
        need = shapes.parse_need(contract)
        out({"step": "on_discover", "need_kw": list(need.requested), "start": iso_utc(need.window_start)})
        offered, delivery_reason, d = self._offer(need)
        for action in ("select", "init"):
            quoted = shapes.quoted(
                contract,
                seller_id=self.signer.subscriber_id,
                contract_id=None,
                window_start=need.window_start,
                offered=offered,
                status="DRAFT",
                reason=delivery_reason,
                valid_until=None,
                interval_s=need.interval_s,
            )
            mid = self.request(url, bpp_id, action, {"contract": quoted}, tx)
            contract = self.wait(f"on_{action}", mid, timeout)["message"]["contract"]
            out({"step": f"on_{action}", "offered_kw": list(offered)})
        # Only what the queue can still deliver is confirmed.
        offered_now, reason_now, d = self._offer(need)
        if any(o > n + 1e-6 for o, n in zip(offered, offered_now, strict=True)):
            raise ConflictError(
                f"the queue can no longer deliver the offer: {reason_now}", code="BIZ_QUANTITY_UNAVAILABLE"
            )
        mid = self.request(url, bpp_id, "confirm", {"contract": contract}, tx)
        confirmed = self.wait("on_confirm", mid, timeout)["message"]["contract"]
        cid = str(confirmed.get("id") or tx)
        stored = Contract(
            id=cid,
            transaction_id=tx,
            counterparty=bpp_id,
            callback_uri=url,
            status="ACTIVE",
            window_start=need.window_start,
            interval_s=need.interval_s,
            requested=need.requested,
            offered=offered,
            baseline=d.baseline_kw,
            pending_cap=d.pending_cap_kw,
            suspend=d.suspend,
            price=need.price[0] if need.price else 0.0,
            penalty=need.penalty[0] if need.penalty else 0.0,
            currency=need.currency,
            baseline_method=need.baseline_method,
            quote_expires=time.time(),
            reason=delivery_reason,
            doc=confirmed,
            role="bap",
            direction=need.direction,
        )
        self.store.put_contract(stored)
        out(
            {
                "step": "on_confirm",
                "contract": cid,
                "status": confirmed.get("status", {}).get("code"),
                "offered_kw": list(offered),
            }
        )
        return stored

    def _offer(self, need: shapes.Need) -> tuple[tuple[float, ...], str, Any]:
        flex = read_flex_input(self.state_dir)
        if flex is None:
            raise ConflictError(
                "no plan yet: the daemon has not written its planning input", code="BIZ_QUANTITY_UNAVAILABLE"
            )
        now = int(time.time())
        flex = replace(flex, snapshot=replace(flex.snapshot, now=max(flex.snapshot.now, now)))
        # Against the plan with the contracts already confirmed (either role) carried out.
        d, offered, reason = quote_need(flex, need, self.policy, self.margin_s, self.store.active(now))
        return offered, reason, d


def _contract_from_catalog(catalogs: list[dict[str, Any]]) -> dict[str, Any]:
    """The devkit's select contract from a published need: the need resource, the buyer's offer
    (its inputs) and the contract attributes the offer carries."""
    for cat in catalogs:
        for res in cat.get("resources", []):
            if (res.get("resourceAttributes") or {}).get("@type") != "DemandFlexNeed":
                continue
            offer = next((o for o in cat.get("offers", []) if res.get("id") in o.get("resourceIds", [])), None)
            offer = (
                copy.deepcopy(offer)
                if offer is not None
                else {"id": f"offer-{res.get('id')}", "resourceIds": [res.get("id")]}
            )
            attrs = offer.get("offerAttributes") or {}
            contract_attrs = attrs.pop("contractAttributes", None)
            buyer = next((i.get("participantId") for i in attrs.get("inputs", []) if i.get("role") == "buyer"), None)
            doc: dict[str, Any] = {
                "status": {"code": "DRAFT"},
                "commitments": [
                    {
                        "id": "commitment-0",
                        "status": {"descriptor": {"code": "DRAFT"}},
                        "resources": [res],
                        "offer": {
                            k: v
                            for k, v in offer.items()
                            if k in ("id", "resourceIds", "offerAttributes", "descriptor")
                        },
                    }
                ],
                "participants": [{"id": buyer}] if buyer else [],
            }
            if contract_attrs:
                doc["contractAttributes"] = contract_attrs
            return doc
    raise BecknError("the utility published no DemandFlexNeed", code="BIZ_NO_RESULTS_FOUND")
