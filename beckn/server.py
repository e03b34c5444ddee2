"""The Beckn endpoint (``slurmflex beckn serve``): Starlette on uvicorn.

Every POST goes through the same gate, in this order, and is refused at the first failure with a
signed NACK that names the canonical error code (nothing is changed by a refused message):
body size -> signature header -> key trusted -> signature (times, digest) -> JSON -> schema ->
sender is the signer -> callback URI is the signer's registered one -> replay/idempotency ->
the action's handler. Accepted messages get a signed ACK (``Signature`` response header, 4 lines
with the request's signature); the real answer goes through the durable outbox.

The endpoint needs nothing from the daemon but its state dir: quotes come from the planning
input the daemon last wrote (beckn.inputs), confirmed contracts are left in the shared store for
the daemon to carry out (beckn.activation).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
import uuid
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import structlog
from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from slurm_flex.beckn import contract as shapes
from slurm_flex.beckn.errors import BecknError, ConflictError, NotFoundError, SchemaError, SignatureError
from slurm_flex.beckn.flexibility import Delivery, flex_slots
from slurm_flex.beckn.inputs import FlexInput, read_flex_input
from slurm_flex.beckn.outbox import Outbox
from slurm_flex.beckn.quote import quote_need, with_commitments
from slurm_flex.beckn.replay import ReplayCache
from slurm_flex.beckn.report import delivery_report
from slurm_flex.beckn.schemas import known_actions, validate
from slurm_flex.beckn.signing import SignatureHeader, Signer, body_digest, parse_header, verify
from slurm_flex.beckn.store import ABSORB, BecknStore, Contract
from slurm_flex.beckn.trust import Trust, TrustEntry
from slurm_flex.grid.series import floor_slot, iso_utc
from slurm_flex.ledger import events
from slurm_flex.planner.policy import Policy

log = structlog.get_logger(__name__)

# Beckn 1.1 names of the same actions.
ALIASES = {"search": "discover", "rating": "rate", "on_search": "on_discover", "on_rating": "on_rate"}
# Our specific reasons -> the canonical v2 ErrorCode the NACK carries.
CANONICAL = {
    "SIGNATURE_MISSING": "AUT_SIGNATURE_MISSING",
    "SIGNATURE_MALFORMED": "AUT_SIGNATURE_INVALID",
    "SIGNATURE_INVALID": "AUT_SIGNATURE_INVALID",
    "SIGNATURE_ALGORITHM": "AUT_SIGNATURE_INVALID",
    "SIGNATURE_CREATED": "AUT_SIGNATURE_INVALID",
    "SIGNATURE_EXPIRED": "AUT_SIGNATURE_INVALID",
    "UNTRUSTED_KEY": "AUT_KEY_NOT_FOUND",
    "DUPLICATE_MESSAGE_ID": "AUT_REPLAY_DETECTED",
    "SCHEMA_INVALID": "SCH_SCHEMA_VALIDATION_FAILED",
    "UNKNOWN_ACTION": "CTX_ACTION_MISMATCH",
}
# Quotes stale beyond this many daemon intervals are not given (the plan may have moved on).
STALE_INTERVALS = 3


@dataclass
class Endpoint:
    """Everything a request is handled with; built once by :func:`build_app`."""

    signer: Signer
    trust: Trust
    replay: ReplayCache
    store: BecknStore
    state_dir: Path
    policy: Policy
    public_url: str
    network_id: str
    skew_s: int
    max_body: int
    validity_s: int
    offer_validity_s: int
    callback_max_s: int
    price_per_kwh: float
    currency: str
    resume_margin_s: int
    horizon_slots: int
    input_max_age_s: float
    ledger_append: Callable[[list[events.Entry]], None] | None = None
    clock: Callable[[], float] = time.time

    def sign_response(self, body: bytes, request_signature: str | None) -> str:
        now = int(self.clock())
        return self.signer.sign(body, now, now + self.validity_s, request_signature).value()

    def log(self, entry: events.Entry) -> None:
        if self.ledger_append is not None:
            try:
                self.ledger_append([entry])
            except Exception as exc:  # the ledger failing must not stop the exchange
                log.error("ledger_failed", error=str(exc))


class _TooLarge(BecknError):
    code = "NET_OVERLOADED"
    status = 413


async def _read_limited(request: Request, limit: int) -> bytes:
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise _TooLarge(f"body of {declared} bytes is over the {limit}-byte limit")
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise _TooLarge(f"body is over the {limit}-byte limit")
        chunks.append(chunk)
    return b"".join(chunks)


def _ack_body(message_id: str, error: BecknError | None) -> bytes:
    msg: dict[str, Any] = {"status": "ACK" if error is None else "NACK", "messageId": message_id}
    if error is not None:
        code = CANONICAL.get(error.code, error.code)
        msg["error"] = {
            "code": code,
            "message": str(error)[:500],
            **({"details": {"reason": error.code}} if code != error.code else {}),
        }
    return json.dumps({"message": msg}, separators=(",", ":")).encode()


def _give_up_at(ctx: dict[str, Any], now: float, default_s: int) -> float:
    """Retries stop at the request's ttl where it has one, else after the configured limit."""
    ttl = ctx.get("ttl")
    if isinstance(ttl, str):
        try:
            return now + shapes.parse_duration_s(ttl)
        except BecknError:
            pass
    return now + default_s


def build_app(ep: Endpoint, outbox: Outbox) -> Starlette:
    async def health(_: Request) -> Response:
        flex = read_flex_input(ep.state_dir)
        age = None if flex is None else round(ep.clock() - flex.written_at, 1)
        return JSONResponse(
            {"status": "ok", "subscriber_id": ep.signer.subscriber_id, "plan_age_s": age, "outbox": outbox.stats()}
        )

    async def post(request: Request) -> Response:
        t0 = time.perf_counter()
        path_action = request.path_params["action"]
        action = ALIASES.get(path_action, path_action)
        header: SignatureHeader | None = None
        message_id = ""
        sender = ""
        raw = b""
        claimed = False
        try:
            if action not in known_actions():
                raise SchemaError(f"no such Beckn action {path_action!r}", code="UNKNOWN_ACTION", status=404)
            raw = await _read_limited(request, ep.max_body)
            header = parse_header(request.headers.get("authorization"))
            entry = await ep.trust.lookup(header.subscriber_id, header.unique_key_id)
            doc: Any = None
            request_sig = None
            if header.four_lines:  # a solicited callback answering one of our requests
                doc = _json(raw)
                request_sig = ep.store.our_signature(str((doc.get("context") or {}).get("messageId", "")))
                if request_sig is None:
                    raise SignatureError("4-line signature answers no request of ours", code="SIGNATURE_INVALID")
            verify(header, entry.public_key, raw, ep.clock(), skew_s=ep.skew_s, request_signature=request_sig)
            if doc is None:
                doc = _json(raw)
            ctx = doc.get("context") if isinstance(doc, dict) else None
            if isinstance(ctx, dict):
                message_id = str(ctx.get("messageId", ""))
                # A 1.1 action name is served as its v2 equivalent.
                if ctx.get("action") == path_action and path_action in ALIASES:
                    ctx["action"] = action
            validate(action, doc)
            sender = _check_sender(action, doc["context"], entry)
            if not action.startswith("on_"):
                registered = await ep.trust.uri_of(entry.subscriber_id)
                given = str(doc["context"].get("bapUri", ""))
                # Callbacks go only to the URI the counterparty registered: none registered, none sent.
                if not registered or given.rstrip("/") != registered.rstrip("/"):
                    raise BecknError(
                        f"bapUri {given!r} is not {entry.subscriber_id}'s registered URI",
                        code="CTX_INVALID_FIELD",
                        status=403,
                    )
            seen = ep.replay.claim(sender, message_id, body_digest(raw), action, header.expires, ep.clock())
            if seen is not None and seen.response is not None:
                # A retry of a message already handled: the same answer, nothing done twice.
                body = seen.response
                return Response(
                    body,
                    status_code=seen.status or 200,
                    media_type="application/json",
                    headers={"Signature": ep.sign_response(body, header.signature)},
                )
            claimed = True
            await run_in_threadpool(_handle, ep, outbox, action, doc, entry, header)
            body = _ack_body(message_id, None)
            ep.replay.answer(sender, message_id, 200, body)
            ep.log(events.beckn_message("in", action, message_id, raw, header.signature, True))
            log.info(
                "beckn_in",
                action=action,
                sender=sender,
                message_id=message_id,
                ack=True,
                ms=round((time.perf_counter() - t0) * 1000, 2),
            )
            return Response(
                body,
                status_code=200,
                media_type="application/json",
                headers={"Signature": ep.sign_response(body, header.signature)},
            )
        except BecknError as exc:
            if claimed:
                ep.replay.forget(sender, message_id)  # refused: it changed nothing, a corrected resend is welcome
            body = _ack_body(message_id, exc)
            req_sig = header.signature if header is not None else None
            headers = {"Signature": ep.sign_response(body, req_sig)}
            if exc.status == 401:
                headers["WWW-Authenticate"] = (
                    f'Signature realm="{ep.signer.subscriber_id}",headers="(created) (expires) digest"'
                )
            ep.log(events.beckn_message("in", action, message_id, raw, req_sig, False, f"{exc.code}: {exc}"[:300]))
            log.info("beckn_nack", action=path_action, code=exc.code, error=str(exc)[:300])
            return Response(body, status_code=exc.status, media_type="application/json", headers=headers)

    @contextlib.asynccontextmanager
    async def lifespan(_: Starlette) -> AsyncIterator[None]:
        task = asyncio.create_task(_background(ep, outbox))
        try:
            yield
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
            await outbox.close()

    return Starlette(
        routes=[Route("/health", health, methods=["GET"]), Route("/{action:path}", post, methods=["POST"])],
        lifespan=lifespan,
    )


def _json(raw: bytes) -> Any:
    try:
        doc = json.loads(raw)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise SchemaError(f"body is not JSON: {exc}", code="SCH_INVALID_JSON") from exc
    if not isinstance(doc, dict):
        raise SchemaError("body is not a JSON object", code="SCH_INVALID_JSON")
    return doc


def _check_sender(action: str, ctx: dict[str, Any], entry: TrustEntry) -> str:
    """The party a message claims to come from must be the one that signed it."""
    field = "bppId" if action.startswith("on_") else "bapId"
    claimed = ctx.get(field)
    if claimed != entry.subscriber_id:
        raise SignatureError(
            f"context.{field} {claimed!r} is not the signer {entry.subscriber_id!r}", code="SIGNATURE_INVALID"
        )
    return entry.subscriber_id


# -- handlers (run in a worker thread: they plan) ------------------------------------------------


def _flex_input(ep: Endpoint) -> FlexInput:
    flex = read_flex_input(ep.state_dir)
    if flex is None:
        raise ConflictError(
            "no plan yet: the daemon has not written its planning input", code="BIZ_QUANTITY_UNAVAILABLE"
        )
    if ep.clock() - flex.written_at > ep.input_max_age_s:
        raise ConflictError(
            f"the last plan is {ep.clock() - flex.written_at:.0f} s old: not quoting on it",
            code="BIZ_QUANTITY_UNAVAILABLE",
        )
    # Plan from now, not from when the daemon last ran.
    now = int(ep.clock())
    return replace(flex, snapshot=replace(flex.snapshot, now=max(flex.snapshot.now, now)))


def _quote(ep: Endpoint, need: shapes.Need, exclude: str | None = None) -> tuple[Delivery, tuple[float, ...], str]:
    """The offer per interval, against the plan with every other confirmed contract (all but
    ``exclude``, the one being re-quoted) carried out."""
    now = ep.clock()
    if need.window_start + need.interval_s * len(need.requested) <= now:
        return _nothing(need, "the window is over")
    flex = _flex_input(ep)
    if floor_slot(need.window_start) < floor_slot(now):
        return _nothing(need, "the window has started")
    return quote_need(flex, need, ep.policy, ep.resume_margin_s, ep.store.active(now), exclude)


def _nothing(need: shapes.Need, why: str) -> tuple[Delivery, tuple[float, ...], str]:
    n = len(need.requested)
    zero = (0.0,) * n
    return Delivery(0, need.requested, zero, (), (), (), why, direction=need.direction), zero, why


def _handle(
    ep: Endpoint, outbox: Outbox, action: str, doc: dict[str, Any], entry: TrustEntry, header: SignatureHeader
) -> None:
    ctx = doc["context"]
    msg = doc["message"]
    if action.startswith("on_"):
        ep.store.record_inbox(entry.subscriber_id, action, str(ctx.get("transactionId", "")), json.dumps(doc))
        return
    handler = HANDLERS.get(action)
    if handler is None:
        raise BecknError(f"{action} is not offered by this participant", code="NET_NOT_IMPLEMENTED", status=501)
    reply = handler(ep, ctx, msg, entry)
    if reply is None:
        return
    callback_action, message = reply
    body_ctx = shapes.context(
        callback_action,
        request=ctx,
        bap_id=ctx["bapId"],
        bap_uri=ctx["bapUri"],
        bpp_id=ep.signer.subscriber_id,
        bpp_uri=ep.public_url,
        transaction_id=str(ctx.get("transactionId", uuid.uuid4())),
        network_id=str(ctx.get("networkId", ep.network_id)),
        schema_context=ctx.get("schemaContext") or shapes.SCHEMA_CONTEXT,
    )
    body = json.dumps({"context": body_ctx, "message": message}, separators=(",", ":")).encode()
    outbox.enqueue(
        ctx["bapUri"],
        callback_action,
        body_ctx["messageId"],
        body,
        header.signature,
        _give_up_at(ctx, ep.clock(), ep.callback_max_s),
    )


Reply = tuple[str, dict[str, Any]] | None


def _discover(ep: Endpoint, ctx: dict[str, Any], msg: dict[str, Any], entry: TrustEntry) -> Reply:
    # What is offered is what the confirmed contracts leave.
    committed, flex = with_commitments(_flex_input(ep), ep.policy, ep.store.active(ep.clock()), ep.horizon_slots)
    slots = flex_slots(
        flex.snapshot,
        flex.forecast,
        ep.policy,
        flex.running,
        ep.horizon_slots,
        ep.price_per_kwh,
        ep.resume_margin_s,
        committed,
    )
    me = ep.signer.subscriber_id
    series = {
        "@context": shapes.TIME_SERIES_CTX,
        "@type": "TimeSeries",
        "intervalPeriod": {"start": iso_utc(slots[0].start), "duration": "PT30M"},
        "payloadDescriptors": [
            {"objectType": "EVENT_PAYLOAD_DESCRIPTOR", "payloadType": t, "units": u, "insertedBy": "seller"}
            for t, u in (("CAPACITY_SHED", "KW"), ("CAPACITY_ABSORB", "KW"), ("PRICE", f"{ep.currency}_PER_KWH"))
        ],
        "intervals": [
            {
                "id": i,
                "payloads": [
                    {"type": "CAPACITY_SHED", "values": [s.shed_kw]},
                    {"type": "CAPACITY_ABSORB", "values": [s.absorb_kw]},
                    {"type": "PRICE", "values": [s.price_per_kwh]},
                ],
            }
            for i, s in enumerate(slots)
        ],
    }
    catalog = {
        "id": f"{me}-flex",
        "descriptor": {
            "name": "HPC cluster demand flexibility",
            "shortDesc": "Deferrable and suspendable Slurm batch work, every job deadline kept",
        },
        "provider": {"id": me, "descriptor": {"name": me}},
        "bppId": me,
        "bppUri": ep.public_url,
        "resources": [
            {
                "id": f"{me}-flex",
                "descriptor": {"name": "kW reduction or increase per half-hour"},
                "resourceAttributes": series,
            }
        ],
    }
    return "on_discover", {"catalogs": [catalog]}


def _select_or_init(callback: str) -> Callable[[Endpoint, dict[str, Any], dict[str, Any], TrustEntry], Reply]:
    def handler(ep: Endpoint, ctx: dict[str, Any], msg: dict[str, Any], entry: TrustEntry) -> Reply:
        doc = msg["contract"]
        need = shapes.parse_need(doc)
        existing = ep.store.by_transaction(entry.subscriber_id, str(ctx.get("transactionId", "")))
        if existing is not None and existing.status != "DRAFT":
            raise ConflictError(f"transaction already {existing.status}", code="BIZ_ALREADY_CONFIRMED")
        delivery, offered, reason = _quote(ep, need, existing.id if existing is not None else None)
        contract_id = existing.id if existing is not None else str(uuid.uuid4())
        expires = ep.clock() + ep.offer_validity_s
        out = shapes.quoted(
            doc,
            seller_id=ep.signer.subscriber_id,
            contract_id=None,
            window_start=need.window_start,
            offered=offered,
            status="DRAFT",
            reason=reason,
            valid_until=expires,
            interval_s=need.interval_s,
        )
        ep.store.put_contract(
            _contract(contract_id, ctx, entry, need, offered, delivery, "DRAFT", expires, reason, out, ep)
        )
        return callback, {"contract": out}

    return handler


def _contract(
    contract_id: str,
    ctx: dict[str, Any],
    entry: TrustEntry,
    need: shapes.Need,
    offered: tuple[float, ...],
    d: Delivery,
    status: str,
    expires: float,
    reason: str,
    doc: dict[str, Any],
    ep: Endpoint,
) -> Contract:
    return Contract(
        id=contract_id,
        transaction_id=str(ctx.get("transactionId", "")),
        counterparty=entry.subscriber_id,
        callback_uri=str(ctx.get("bapUri", "")),
        status=status,
        window_start=need.window_start,
        interval_s=need.interval_s,
        requested=need.requested,
        offered=offered,
        baseline=d.baseline_kw,
        pending_cap=d.pending_cap_kw,
        suspend=d.suspend,
        price=need.price[0] if need.price else ep.price_per_kwh,
        penalty=need.penalty[0] if need.penalty else 0.0,
        currency=need.currency or ep.currency,
        baseline_method=need.baseline_method,
        quote_expires=expires,
        reason=reason,
        doc=doc,
        direction=need.direction,
    )


def _confirm(ep: Endpoint, ctx: dict[str, Any], msg: dict[str, Any], entry: TrustEntry) -> Reply:
    doc = msg["contract"]
    existing = ep.store.by_transaction(entry.subscriber_id, str(ctx.get("transactionId", "")))
    if existing is None:
        raise NotFoundError("no quote for this transaction: select/init first", code="BIZ_ORDER_NOT_FOUND")
    if existing.status == "ACTIVE":
        raise ConflictError("already confirmed", code="BIZ_ALREADY_CONFIRMED")
    if existing.status != "DRAFT":
        raise ConflictError(f"contract is {existing.status}", code="BIZ_INVALID_STATE_TRANSITION")
    if ep.clock() > existing.quote_expires:
        raise ConflictError("the quote has expired: select or init again", code="BIZ_QUOTE_EXPIRED_OR_CHANGED")
    need = shapes.parse_need(doc)
    if need.direction != existing.direction:
        raise ConflictError(
            f"the quote was for {'an increase' if existing.direction == ABSORB else 'a reduction'}: "
            "PRICE changed sign since",
            code="BIZ_QUOTE_EXPIRED_OR_CHANGED",
        )
    committed = need.offered if need.offered is not None else existing.offered
    if len(committed) != len(existing.offered) or any(
        c > o + 1e-6 for c, o in zip(committed, existing.offered, strict=True)
    ):
        raise ConflictError("CAPACITY_OFFERED is more than was quoted", code="BIZ_QUOTE_EXPIRED_OR_CHANGED")
    # The queue may have changed since the quote: confirm only what can still be delivered.
    delivery, offered_now, reason = _quote(ep, need, existing.id)
    if any(c > o + 1e-6 for c, o in zip(committed, offered_now, strict=True)):
        raise ConflictError(
            f"the queue can no longer deliver the quoted capacity: {reason}", code="BIZ_QUANTITY_UNAVAILABLE"
        )
    out = shapes.quoted(
        doc,
        seller_id=ep.signer.subscriber_id,
        contract_id=existing.id,
        window_start=need.window_start,
        offered=committed,
        status="ACTIVE",
        reason=existing.reason,
        valid_until=None,
        interval_s=need.interval_s,
    )
    c = _contract(
        existing.id,
        ctx,
        entry,
        need,
        tuple(committed),
        delivery,
        "ACTIVE",
        existing.quote_expires,
        existing.reason,
        out,
        ep,
    )
    ep.store.put_contract(c)
    ep.log(
        (
            "beckn.contract",
            {
                "contract": c.id,
                "status": "ACTIVE",
                "window_start": c.window_start,
                "interval_s": c.interval_s,
                "offered_kw": list(c.offered),
                "direction": c.direction,
                "suspend": list(c.suspend),
                "counterparty": c.counterparty,
            },
        )
    )
    return "on_confirm", {"contract": out}


def _own(ep: Endpoint, msg: dict[str, Any], entry: TrustEntry) -> Contract:
    cid = str((msg.get("contract") or {}).get("id", ""))
    c = ep.store.contract(cid)
    if c is None or c.counterparty != entry.subscriber_id:
        raise NotFoundError(f"no contract {cid!r} with {entry.subscriber_id}", code="BIZ_ORDER_NOT_FOUND")
    return c


def _status(ep: Endpoint, ctx: dict[str, Any], msg: dict[str, Any], entry: TrustEntry) -> Reply:
    c = _own(ep, msg, entry)
    return "on_status", {"contract": with_performance(ep, c)}


def with_performance(ep: Endpoint, c: Contract) -> dict[str, Any]:
    out: dict[str, Any] = json.loads(json.dumps(c.doc))
    report = delivery_report(ep.store, c, ep.clock(), ep.signer.subscriber_id)
    # The plan's counterfactual first; the buyer's named method (e.g. 5of10) beside it when
    # the site's power records reach back far enough.
    out["performance"] = [report.performance] + ([report.named_performance] if report.named_performance else [])
    out["status"] = {"code": c.status}
    return out


def _update(ep: Endpoint, ctx: dict[str, Any], msg: dict[str, Any], entry: TrustEntry) -> Reply:
    c = _own(ep, msg, entry)
    if c.status not in ("ACTIVE", "DRAFT"):
        raise ConflictError(f"contract is {c.status}", code="BIZ_INVALID_STATE_TRANSITION")
    doc = msg["contract"]
    need = shapes.parse_need(doc)
    wanted = need.offered if need.offered is not None else need.requested
    if need.window_start != c.window_start or need.interval_s != c.interval_s:
        raise ConflictError("an update may change quantities, not the window", code="BIZ_UPDATE_INCONSISTENT")
    if need.direction != c.direction:
        raise ConflictError("an update may not turn a reduction into an increase", code="BIZ_UPDATE_INCONSISTENT")
    grows = len(wanted) != len(c.offered) or any(w > o + 1e-6 for w, o in zip(wanted, c.offered, strict=True))
    delivery, offered_now, reason = _quote(ep, replace(need, requested=tuple(wanted)), c.id)
    if grows and any(w > o + 1e-6 for w, o in zip(wanted, offered_now, strict=True)):
        raise ConflictError(f"cannot deliver the larger quantity: {reason}", code="BIZ_QUANTITY_UNAVAILABLE")
    out = shapes.quoted(
        doc,
        seller_id=ep.signer.subscriber_id,
        contract_id=c.id,
        window_start=c.window_start,
        offered=wanted,
        status=c.status,
        reason=reason,
        valid_until=None,
        interval_s=c.interval_s,
    )
    ep.store.put_contract(
        _contract(c.id, ctx, entry, need, tuple(wanted), delivery, c.status, c.quote_expires, reason, out, ep)
    )
    return "on_update", {"contract": out}


def _cancel(ep: Endpoint, ctx: dict[str, Any], msg: dict[str, Any], entry: TrustEntry) -> Reply:
    c = _own(ep, msg, entry)
    if c.status == "CANCELLED":
        raise ConflictError("already cancelled", code="BIZ_ALREADY_CANCELLED")
    if c.status == "COMPLETE":
        raise ConflictError("the event is over", code="POL_CANCELLATION_NOT_ALLOWED")
    # Suspended jobs are resumed and deferred work released by the daemon's next cycle.
    doc = dict(c.doc)
    doc["status"] = {"code": "CANCELLED"}
    ep.store.put_contract(replace(c, status="CANCELLED", doc=doc))
    ep.log(("beckn.contract", {"contract": c.id, "status": "CANCELLED"}))
    return "on_cancel", {"contract": doc}


def _rate(ep: Endpoint, ctx: dict[str, Any], msg: dict[str, Any], entry: TrustEntry) -> Reply:
    return "on_rate", {"received": True}


def _support(ep: Endpoint, ctx: dict[str, Any], msg: dict[str, Any], entry: TrustEntry) -> Reply:
    return "on_support", {
        "support": {"descriptor": {"name": "slurm-flex operators", "shortDesc": "HPC centre operations desk"}}
    }


HANDLERS: dict[str, Callable[[Endpoint, dict[str, Any], dict[str, Any], TrustEntry], Reply]] = {
    "discover": _discover,
    "select": _select_or_init("on_select"),
    "init": _select_or_init("on_init"),
    "confirm": _confirm,
    "status": _status,
    "update": _update,
    "cancel": _cancel,
    "rate": _rate,
    "support": _support,
}


async def _background(ep: Endpoint, outbox: Outbox) -> None:
    """Send due callbacks; push the final delivery report (unsolicited on_update) of each event
    once its window is over. Both survive restarts: their state is in the store."""
    last_prune = 0.0
    while True:
        try:
            await outbox.send_due()
            await run_in_threadpool(_final_reports, ep, outbox)
            if ep.clock() - last_prune > 600:
                last_prune = ep.clock()
                ep.replay.prune(ep.clock() - ep.skew_s)
        except Exception as exc:  # keep serving; the next round tries again
            log.error("background_failed", error=str(exc))
        await asyncio.sleep(0.2)


def _final_reports(ep: Endpoint, outbox: Outbox) -> None:
    now = ep.clock()
    for c in ep.store.active(now):
        # A short grace after the window for the last power samples (at most one interval).
        over = c.status in ("CANCELLED", "COMPLETE") or now >= c.window_end + min(60, c.interval_s)
        if not over or c.final_report_sent:
            continue
        status = "COMPLETE" if c.status == "ACTIVE" else c.status
        final = replace(c, status=status)
        doc = with_performance(ep, final)
        # As the seller we push the report to the buyer: an unsolicited on_update when we are the
        # BPP, an update request to the utility when we answered its need as the BAP.
        me, my_url = ep.signer.subscriber_id, ep.public_url
        bap = c.role == "bap"
        action = "update" if bap else "on_update"
        ctx = shapes.context(
            action,
            request=None,
            bap_id=me if bap else c.counterparty,
            bap_uri=my_url if bap else c.callback_uri,
            bpp_id=c.counterparty if bap else me,
            bpp_uri=c.callback_uri if bap else my_url,
            transaction_id=c.transaction_id,
            network_id=ep.network_id,
            schema_context=(*shapes.SCHEMA_CONTEXT, shapes.PERFORMANCE_CTX),
        )
        body = json.dumps({"context": ctx, "message": {"contract": doc}}, separators=(",", ":")).encode()
        outbox.enqueue(c.callback_uri, action, ctx["messageId"], body, None, now + ep.callback_max_s)
        ep.store.put_contract(replace(final, final_report_sent=True, doc=doc))
        # Delivered: the reduction below the baseline, or for an increase the rise above it.
        sign = -1.0 if c.direction == ABSORB else 1.0
        # One meter per basis (measured, modelled), each holding its intervals.
        rows = sorted(
            (row, meter["meterId"].rsplit(":", 1)[-1])
            for meter in doc["performance"][0]["performanceAttributes"]["meters"]
            for row in meter["telemetry"]["intervals"]
        )
        for row, basis in rows:
            vals = {p["type"]: p["values"][0] for p in row["payloads"]}
            ep.log(
                events.activation(
                    c.id,
                    f"{c.window_start + row['id'] * c.interval_s}",
                    c.offered[row["id"]],
                    None if "USAGE" not in vals else max(0.0, sign * (vals["BASELINE"] - vals["USAGE"])),
                    basis,
                )
            )
