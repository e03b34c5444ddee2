"""Durable callbacks: every outgoing message is a row in the store before it is sent, sent by
the endpoint's background task with retries and exponential backoff until the counterparty
ACKs or the message's ttl (else the configured limit) runs out, and still there after a
restart. beckn-onix sends a callback once and forgets it (its issue #565 asks for retries).

Solicited callbacks are signed in the 4-line form with the request's signature; requests and
unsolicited pushes in the 3-line form. The counterparty's signed ACK is checked where its key
is known (a SHOULD in NFH-007: a bad one is logged, the exchange stands)."""

from __future__ import annotations

import json
import time
from collections.abc import Callable

import httpx
import structlog

from slurm_flex.beckn.errors import BecknError
from slurm_flex.beckn.signing import Signer, parse_header, verify
from slurm_flex.beckn.store import BecknStore, OutboxItem
from slurm_flex.beckn.trust import Trust
from slurm_flex.ledger import events

log = structlog.get_logger(__name__)

FIRST_RETRY_S = 1.0
MAX_RETRY_S = 60.0


class Outbox:
    def __init__(
        self,
        store: BecknStore,
        signer: Signer,
        trust: Trust,
        validity_s: int,
        client: httpx.AsyncClient | None = None,
        clock: Callable[[], float] = time.time,
        ledger_append: Callable[[list[events.Entry]], None] | None = None,
    ) -> None:
        self.store = store
        self.signer = signer
        self.trust = trust
        self.validity_s = validity_s
        self.client = client or httpx.AsyncClient(timeout=10.0)
        self.clock = clock
        self.ledger_append = ledger_append
        self._sent = 0
        self._failed = 0

    def enqueue(
        self, url: str, action: str, message_id: str, body: bytes, request_signature: str | None, give_up_at: float
    ) -> int:
        return self.store.enqueue(url, action, message_id, body, request_signature, give_up_at)

    def stats(self) -> dict[str, int]:
        return {"sent": self._sent, "failed_attempts": self._failed}

    async def send_due(self) -> None:
        for item in self.store.due(self.clock()):
            if self.clock() > item.give_up_at:
                # Its ttl ran out while we could not send (e.g. the endpoint was down): an answer
                # the counterparty no longer waits for is not sent at all.
                self.store.retry(item.id, self.clock(), "ttl over before it could be sent", give_up=True)
                self._log(item, "", False, "given up: ttl over before it could be sent")
                continue
            await self._send(item)

    async def _send(self, item: OutboxItem) -> None:
        now = int(self.clock())
        header = self.signer.sign(item.body, now, now + self.validity_s, item.request_signature)
        url = item.url.rstrip("/") + "/" + item.action
        try:
            resp = await self.client.post(
                url, content=item.body, headers={"Authorization": header.value(), "Content-Type": "application/json"}
            )
            ack = resp.status_code == 200 and json.loads(resp.content)["message"]["status"] == "ACK"
            error = "" if ack else f"HTTP {resp.status_code}: {resp.text[:200]}"
        except (httpx.HTTPError, ValueError, KeyError, TypeError) as exc:
            resp = None
            ack, error = False, f"{type(exc).__name__}: {exc}"
        if ack and resp is not None:
            await self._check_ack(item, resp, header.signature)
            self.store.sent(item.id, header.signature)
            self._sent += 1
            self._log(item, header.signature, True, "")
            log.info("beckn_out", action=item.action, url=url, message_id=item.message_id, attempts=item.attempts + 1)
            return
        self._failed += 1
        delay = min(MAX_RETRY_S, FIRST_RETRY_S * 2**item.attempts)
        give_up = self.clock() + delay > item.give_up_at
        self.store.retry(item.id, self.clock() + delay, error, give_up)
        if give_up:
            self._log(item, header.signature, False, f"given up: {error}")
        log.warning(
            "beckn_out_failed", action=item.action, url=url, error=error, attempts=item.attempts + 1, give_up=give_up
        )

    async def _check_ack(self, item: OutboxItem, resp: httpx.Response, our_signature: str) -> None:
        value = resp.headers.get("signature")
        try:
            header = parse_header(value)
            entry = await self.trust.lookup(header.subscriber_id, header.unique_key_id)
            verify(header, entry.public_key, resp.content, self.clock(), request_signature=our_signature)
        except BecknError as exc:
            log.warning("beckn_ack_signature_bad", action=item.action, error=str(exc))

    def _log(self, item: OutboxItem, signature: str, ack: bool, why: str) -> None:
        if self.ledger_append is None:
            return
        try:
            self.ledger_append(
                [events.beckn_message("out", item.action, item.message_id, item.body, signature, ack, why)]
            )
        except Exception as exc:  # the ledger failing must not stop delivery
            log.error("ledger_failed", error=str(exc))

    async def close(self) -> None:
        await self.client.aclose()
