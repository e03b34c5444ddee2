"""A grid operator playing the utility (the buyer) over loopback, with its own key:
``slurmflex beckn grid-agent``. It runs a small callback endpoint (verifying every callback's
signature, answering with a signed ACK) and drives discover -> select -> init -> confirm ->
status against the cluster's endpoint, printing delivered vs committed kW per interval from
``on_status`` and the final unsolicited ``on_update``. Used by the demo and the tests."""

from __future__ import annotations

import contextlib
import copy
import json
import sys
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import uvicorn
from starlette.applications import Starlette
from starlette.background import BackgroundTask
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from slurm_flex.beckn import contract as shapes
from slurm_flex.beckn.errors import BecknError
from slurm_flex.beckn.signing import Signer, body_digest, parse_header, verify
from slurm_flex.beckn.trust import Trust
from slurm_flex.grid.series import iso_utc


@dataclass
class Inbox:
    """Callbacks received, in order, and the signatures of the requests we sent (a solicited
    callback's 4-line signature must name the one it answers)."""

    items: list[dict[str, Any]] = field(default_factory=list)
    sent: dict[str, str] = field(default_factory=dict)
    refused: list[str] = field(default_factory=list)
    cond: threading.Condition = field(default_factory=threading.Condition)
    # Requests signed by another process of the same operator (the tests' client): a JSON-lines
    # file of {messageId, signature}, read when a callback names a request not sent from here.
    sent_log: Any = None

    def request_signature(self, message_id: str) -> str | None:
        if message_id not in self.sent and self.sent_log is not None and self.sent_log.exists():
            for line in self.sent_log.read_text().splitlines():
                if line:
                    row = json.loads(line)
                    self.sent.setdefault(row["messageId"], row["signature"])
        return self.sent.get(message_id)

    def wait(self, pred: Callable[[dict[str, Any]], bool], timeout: float) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        with self.cond:
            while True:
                for item in self.items:
                    if pred(item):
                        return item
                left = deadline - time.monotonic()
                if left <= 0:
                    raise TimeoutError("no matching callback")
                self.cond.wait(left)


def _record_inbox(inbox: Inbox, sink: Path) -> None:
    """Append each message the inbox receives to ``sink`` as a JSON line, forever (a thread of
    the agent's peer modes: the tests read the file)."""
    seen = 0
    while True:
        with inbox.cond:
            inbox.cond.wait(0.5)
            new = inbox.items[seen:]
            seen = len(inbox.items)
        with sink.open("a") as fh:
            for item in new:
                fh.write(json.dumps(item) + "\n")


def receiver_app(signer: Signer, trust: Trust, inbox: Inbox, skew_s: int = 60) -> Starlette:
    async def post(request: Request) -> Response:
        raw = await request.body()
        header = None
        try:
            header = parse_header(request.headers.get("authorization"))
            entry = await trust.lookup(header.subscriber_id, header.unique_key_id)
            doc = json.loads(raw)
            req_sig = inbox.request_signature(doc["context"]["messageId"]) if header.four_lines else None
            verify(header, entry.public_key, raw, time.time(), skew_s=skew_s, request_signature=req_sig)
            status, error = "ACK", None
        except (BecknError, ValueError, KeyError, TypeError) as exc:
            doc, status, error = None, "NACK", str(exc)
            inbox.refused.append(error)
        mid = doc["context"]["messageId"] if doc else ""
        body = json.dumps(
            {
                "message": {
                    "status": status,
                    "messageId": mid,
                    **({"error": {"code": "AUT_SIGNATURE_INVALID", "message": error}} if error else {}),
                }
            },
            separators=(",", ":"),
        ).encode()
        now = int(time.time())
        sig = signer.sign(body, now, now + 300, header.signature if header else None).value()
        if doc is not None:
            with inbox.cond:
                inbox.items.append(
                    {**doc, "_signature_lines": 4 if header and header.four_lines else 3, "_digest": body_digest(raw)}
                )
                inbox.cond.notify_all()
        return Response(
            body, status_code=200 if status == "ACK" else 401, media_type="application/json", headers={"Signature": sig}
        )

    return Starlette(routes=[Route("/{action:path}", post, methods=["POST"])])


def utility_app(signer: Signer, trust: Trust, need: dict[str, Any], inbox: Inbox, my_url: str) -> Starlette:
    """The utility as BPP (the devkit's roles): publishes ``need`` (a buyer contract from
    :func:`contract.need_contract`) in ``on_discover``, answers select/init/confirm/update with
    their callbacks (4-line signatures naming the request's), and records every request it gets,
    including the aggregator's performance report."""
    commitment = need["commitments"][0]
    offer = copy.deepcopy(commitment["offer"])
    offer["offerAttributes"]["contractAttributes"] = need["contractAttributes"]
    catalog = {
        "id": f"{signer.subscriber_id}-needs",
        "descriptor": {"name": "Demand flexibility needed"},
        "provider": {"id": signer.subscriber_id, "descriptor": {"name": signer.subscriber_id}},
        "bppId": signer.subscriber_id,
        "bppUri": my_url,
        "resources": [commitment["resources"][0]],
        "offers": [offer],
    }
    client = httpx.Client(timeout=10)

    def callback(doc: dict[str, Any], request_sig: str) -> None:
        ctx = doc["context"]
        action = ctx["action"]
        msg: dict[str, Any]
        if action == "discover":
            msg = {"catalogs": [catalog]}
        else:
            contract = copy.deepcopy(doc["message"].get("contract", {}))
            if action == "confirm":
                contract["id"] = contract.get("id") or str(uuid.uuid4())
                contract["status"] = {"code": "ACTIVE"}
                contract["commitments"][0]["status"] = {"descriptor": {"code": "ACTIVE"}}
            msg = {"contract": contract}
        out_ctx = {**ctx, "action": f"on_{action}", "bppId": signer.subscriber_id, "bppUri": my_url}
        body = json.dumps({"context": out_ctx, "message": msg}, separators=(",", ":")).encode()
        now = int(time.time())
        header = signer.sign(body, now, now + 300, request_sig)
        client.post(f"{ctx['bapUri'].rstrip('/')}/on_{action}", content=body, headers={"Authorization": header.value()})

    async def post(request: Request) -> Response:
        raw = await request.body()
        try:
            header = parse_header(request.headers.get("authorization"))
            entry = await trust.lookup(header.subscriber_id, header.unique_key_id)
            verify(header, entry.public_key, raw, time.time())
            doc = json.loads(raw)
        except (BecknError, ValueError) as exc:
            inbox.refused.append(str(exc))
            return Response(b'{"message":{"status":"NACK"}}', status_code=401, media_type="application/json")
        with inbox.cond:
            inbox.items.append({**doc, "_signature_lines": 4 if header.four_lines else 3})
            inbox.cond.notify_all()
        body = json.dumps(
            {"message": {"status": "ACK", "messageId": doc["context"]["messageId"]}}, separators=(",", ":")
        ).encode()
        now = int(time.time())
        sig = signer.sign(body, now, now + 300, header.signature).value()
        task = None
        if doc["context"]["action"] in ("discover", "select", "init", "confirm", "update", "status"):
            task = BackgroundTask(callback, doc, header.signature)
        return Response(body, media_type="application/json", headers={"Signature": sig}, background=task)

    return Starlette(routes=[Route("/{action:path}", post, methods=["POST"])])


class Receiver:
    """The receiver app on a thread of this process (uvicorn), for the agent's own use."""

    def __init__(self, app: Starlette, host: str, port: int) -> None:
        self.server = uvicorn.Server(uvicorn.Config(app, host=host, port=port, log_level="warning", access_log=False))
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    def __enter__(self) -> Receiver:
        self.thread.start()
        deadline = time.monotonic() + 10
        while not self.server.started and time.monotonic() < deadline:
            time.sleep(0.02)
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.should_exit = True
        self.thread.join(5)


class GridAgent:
    def __init__(
        self,
        signer: Signer,
        bpp_id: str,
        bpp_url: str,
        my_url: str,
        inbox: Inbox,
        network_id: str = "nfh.global/testnet-deg",
    ) -> None:
        self.signer = signer
        self.bpp_id = bpp_id
        self.bpp_url = bpp_url.rstrip("/")
        self.my_url = my_url
        self.inbox = inbox
        self.network_id = network_id
        self.client = httpx.Client(timeout=30.0)

    def send(self, action: str, message: dict[str, Any], transaction_id: str) -> tuple[int, dict[str, Any], str]:
        ctx = shapes.context(
            action,
            request=None,
            bap_id=self.signer.subscriber_id,
            bap_uri=self.my_url,
            bpp_id=self.bpp_id,
            bpp_uri=self.bpp_url,
            transaction_id=transaction_id,
            network_id=self.network_id,
            schema_context=shapes.SCHEMA_CONTEXT,
        )
        ctx["ttl"] = "PT5M"
        body = json.dumps({"context": ctx, "message": message}, separators=(",", ":")).encode()
        now = int(time.time())
        header = self.signer.sign(body, now, now + 300)
        self.inbox.sent[ctx["messageId"]] = header.signature
        resp = self.client.post(
            f"{self.bpp_url}/{action}",
            content=body,
            headers={"Authorization": header.value(), "Content-Type": "application/json"},
        )
        return resp.status_code, resp.json(), ctx["messageId"]

    def answer(self, message_id: str, timeout: float = 60) -> dict[str, Any]:
        return self.inbox.wait(lambda d: d["context"]["messageId"] == message_id, timeout)


def delivered_rows(contract: dict[str, Any]) -> list[dict[str, Any]]:
    """Per interval: committed (CAPACITY_OFFERED), baseline, usage and delivered kW."""
    committed = shapes._column(contract["commitments"][0]["commitmentAttributes"], "CAPACITY_OFFERED") or []
    # An increase (negative PRICE) is delivered above the baseline, a reduction below it.
    need = (contract["commitments"][0].get("resources") or [{}])[0].get("resourceAttributes") or {}
    prices = shapes._column(need, "PRICE") or []
    sign = -1.0 if prices and all(p < 0 for p in prices) else 1.0
    perf = (contract.get("performance") or [{}])[0].get("performanceAttributes", {})
    rows = []
    # One meter per basis (measured, modelled), each with its intervals.
    for meter in perf.get("meters") or []:
        telemetry = meter.get("telemetry", {})
        start = shapes.parse_time(telemetry.get("intervalPeriod", {}).get("start", "1970-01-01T00:00:00Z"))
        step = shapes.parse_duration_s(telemetry.get("intervalPeriod", {}).get("duration", "PT30M"))
        for iv in telemetry.get("intervals", []):
            vals = {p["type"]: p["values"][0] for p in iv["payloads"]}
            b, u = vals.get("BASELINE"), vals.get("USAGE")
            rows.append(
                {
                    "interval": iv["id"],
                    "start": iso_utc(start + iv["id"] * step),
                    "committed_kw": committed[iv["id"]] if iv["id"] < len(committed) else None,
                    "baseline_kw": b,
                    "usage_kw": u,
                    "delivered_kw": None if b is None or u is None else round(max(0.0, sign * (b - u)), 3),
                    "basis": meter.get("meterId", "").rsplit(":", 1)[-1],
                }
            )
    return sorted(rows, key=lambda r: int(r["interval"]))


def run_activation(
    agent: GridAgent,
    *,
    start: int,
    interval_s: int,
    requested: list[float],
    price: float,
    penalty: float,
    currency: str,
    follow: bool,
    poll_s: float,
    out: Callable[[dict[str, Any]], None],
) -> int:
    """discover -> select -> init -> confirm -> status (until the final on_update when following)."""
    tx = str(uuid.uuid4())
    code, ack, mid = agent.send(
        "discover", {"intent": {"filters": {"type": "jsonpath", "expression": "$[?(@.id)]"}}}, tx
    )
    out({"step": "discover", "http": code, "ack": ack["message"]["status"]})
    if code == 200:
        cat = agent.answer(mid)["message"]["catalogs"][0]["resources"][0]["resourceAttributes"]
        out({"step": "on_discover", "shed_kw_next_slots": (shapes._column(cat, "CAPACITY_SHED") or [])[:8]})
    need = shapes.need_contract(
        buyer_id=agent.signer.subscriber_id,
        resource_id=f"event-{tx[:8]}",
        window_start=start,
        requested=requested,
        price=price,
        penalty=penalty,
        currency=currency,
        seller_id=None,
        interval_s=interval_s,
    )
    contract: dict[str, Any] = need
    for action in ("select", "init"):
        code, ack, mid = agent.send(action, {"contract": contract}, tx)
        if code != 200:
            out({"step": action, "http": code, "nack": ack})
            return 1
        contract = agent.answer(mid)["message"]["contract"]
        out(
            {
                "step": f"on_{action}",
                "offered_kw": shapes._column(contract["commitments"][0]["commitmentAttributes"], "CAPACITY_OFFERED"),
                "note": contract.get("descriptor", {}).get("shortDesc", ""),
            }
        )
    code, ack, mid = agent.send("confirm", {"contract": contract}, tx)
    if code != 200:
        out({"step": "confirm", "http": code, "nack": ack})
        return 1
    contract = agent.answer(mid)["message"]["contract"]
    cid = contract["id"]
    out({"step": "on_confirm", "contract": cid, "status": contract["status"]["code"]})
    if not follow:
        return 0
    end = start + interval_s * len(requested)
    while True:
        final = [
            d
            for d in agent.inbox.items
            if d["context"]["action"] == "on_update" and d["message"]["contract"].get("id") == cid
        ]
        if final:
            out(
                {
                    "step": "final on_update",
                    "status": final[-1]["message"]["contract"]["status"]["code"],
                    "rows": delivered_rows(final[-1]["message"]["contract"]),
                    "callbacks_verified": len(agent.inbox.items),
                    "callbacks_refused": agent.inbox.refused,
                }
            )
            return 0
        code, ack, mid = agent.send("status", {"contract": {"id": cid, "commitments": contract["commitments"]}}, tx)
        if code == 200:
            with contextlib.suppress(TimeoutError):
                st = agent.answer(mid, 30)["message"]["contract"]
                out({"step": "on_status", "now": iso_utc(int(time.time())), "rows": delivered_rows(st)})
        time.sleep(poll_s if time.time() < end + 120 else poll_s * 4)


def print_json(doc: dict[str, Any]) -> None:
    sys.stdout.write(json.dumps(doc) + "\n")
    sys.stdout.flush()


def agent_main(
    *,
    subscriber_id: str,
    key_file: str,
    trust_file: str,
    listen: str,
    bpp_url: str,
    bpp_id: str,
    start: str,
    interval_s: int,
    kw: list[float],
    price: float,
    penalty: float,
    currency: str,
    follow: bool,
    poll_s: float,
    receive_only: str | None,
    publish_need: str | None = None,
) -> int:

    from slurm_flex.beckn.keys import read_private_key
    from slurm_flex.beckn.trust import StaticTrust

    signer = Signer(subscriber_id, "k1", read_private_key(Path(key_file)))
    trust = StaticTrust.from_file(Path(trust_file))
    inbox = Inbox()
    host, _, port = listen.rpartition(":")
    if publish_need is not None:
        # Play the utility: publish a need and record what the aggregator sends (JSON lines).
        if start.startswith("+"):
            t = int(time.time()) + int(start[1:])
            begin_need = t - t % interval_s + (interval_s if t % interval_s else 0)
        else:
            begin_need = shapes.parse_time(start)
        need = shapes.need_contract(
            buyer_id=subscriber_id,
            resource_id="published-need",
            window_start=begin_need,
            requested=kw,
            price=price,
            penalty=penalty,
            currency=currency,
            seller_id=None,
            interval_s=interval_s,
        )
        threading.Thread(target=_record_inbox, args=(inbox, Path(publish_need)), daemon=True).start()
        app = utility_app(signer, trust, need, inbox, f"http://{listen}")
        uvicorn.run(app, host=host, port=int(port), log_level="warning", access_log=False)
        return 0
    if receive_only is not None:
        # Record every callback (one JSON line each) until killed: a peer for the endpoint tests.
        inbox.sent_log = Path(receive_only + ".sent")
        threading.Thread(target=_record_inbox, args=(inbox, Path(receive_only)), daemon=True).start()
        uvicorn.run(
            receiver_app(signer, trust, inbox), host=host, port=int(port), log_level="warning", access_log=False
        )
        return 0
    if start.startswith("+"):
        t = int(time.time()) + int(start[1:])
        begin = t - t % interval_s + (interval_s if t % interval_s else 0)
    else:
        begin = shapes.parse_time(start)
    with Receiver(receiver_app(signer, trust, inbox), host, int(port)):
        agent = GridAgent(signer, bpp_id, bpp_url, f"http://{listen}", inbox)
        return run_activation(
            agent,
            start=begin,
            interval_s=interval_s,
            requested=kw,
            price=price,
            penalty=penalty,
            currency=currency,
            follow=follow,
            poll_s=poll_s,
            out=print_json,
        )
