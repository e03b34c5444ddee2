"""Whose signatures are believed, and where their callbacks go.

Two sources, one interface: a static trust file (JSON list of ``{subscriber_id, key_id,
public_key, uri}``) or a Beckn registry's ``/lookup``. Registry answers are cached until the
earlier of their ``valid_until`` and the configured cache time; when the registry cannot be
reached, a cached key is still used until its own ``valid_until`` (beckn-onix looks keys up on
every request, its users asked for a cache, issue #774). A key past ``valid_until`` is never used.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any, Protocol

import httpx
import structlog
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from slurm_flex.beckn.errors import KeyFileError, SignatureError
from slurm_flex.beckn.signing import public_key_from_b64

log = structlog.get_logger(__name__)


@dataclass(frozen=True)
class TrustEntry:
    subscriber_id: str
    key_id: str
    public_key: Ed25519PublicKey
    uri: str
    valid_until: float | None = None  # epoch; None: no limit given


class Trust(Protocol):
    async def lookup(self, subscriber_id: str, key_id: str) -> TrustEntry: ...

    async def uri_of(self, subscriber_id: str) -> str | None: ...


def _untrusted(subscriber_id: str, key_id: str, why: str = "not in the trust file") -> SignatureError:
    return SignatureError(f"key {subscriber_id}|{key_id} is not trusted: {why}", code="UNTRUSTED_KEY")


class StaticTrust:
    def __init__(self, entries: list[TrustEntry], clock: Callable[[], float] = time.time) -> None:
        self.entries = {(e.subscriber_id, e.key_id): e for e in entries}
        self.clock = clock

    @classmethod
    def from_file(cls, path: Path) -> StaticTrust:
        try:
            doc = json.loads(path.read_text())
        except (OSError, json.JSONDecodeError) as exc:
            raise KeyFileError(f"{path}: cannot read trust file: {exc}") from exc
        if not isinstance(doc, list):
            raise KeyFileError(f"{path}: expected a JSON list of {{subscriber_id, key_id, public_key, uri}}")
        entries = []
        for i, item in enumerate(doc):
            try:
                entries.append(
                    TrustEntry(
                        str(item["subscriber_id"]),
                        str(item["key_id"]),
                        public_key_from_b64(str(item["public_key"])),
                        str(item.get("uri", "")),
                        _epoch(item.get("valid_until")),
                    )
                )
            except (KeyError, TypeError, KeyFileError) as exc:
                raise KeyFileError(f"{path}: entry {i}: {exc!r}") from exc
        return cls(entries)

    async def lookup(self, subscriber_id: str, key_id: str) -> TrustEntry:
        entry = self.entries.get((subscriber_id, key_id))
        if entry is None:
            raise _untrusted(subscriber_id, key_id)
        if entry.valid_until is not None and entry.valid_until < self.clock():
            raise _untrusted(subscriber_id, key_id, "its valid_until has passed")
        return entry

    async def uri_of(self, subscriber_id: str) -> str | None:
        return next((e.uri for e in self.entries.values() if e.subscriber_id == subscriber_id and e.uri), None)


def _epoch(value: Any) -> float | None:
    if value in (None, ""):
        return None
    if isinstance(value, (int, float)):
        return float(value)
    return datetime.fromisoformat(str(value).replace("Z", "+00:00")).timestamp()


class RegistryTrust:
    """Keys from a registry's ``/lookup`` (Beckn 1.1 registry API: POST ``{subscriber_id,
    unique_key_id}``, answered with subscriptions carrying ``signing_public_key``,
    ``subscriber_url``, ``valid_until``)."""

    def __init__(
        self,
        url: str,
        cache_seconds: int,
        client: httpx.AsyncClient | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.url = url.rstrip("/")
        self.cache_seconds = cache_seconds
        self.client = client or httpx.AsyncClient(timeout=5.0)
        self.clock = clock
        self._cache: dict[tuple[str, str], tuple[float, TrustEntry]] = {}
        self.lookups = 0  # registry round trips (tests check the cache with it)

    async def lookup(self, subscriber_id: str, key_id: str) -> TrustEntry:
        now = self.clock()
        cached = self._cache.get((subscriber_id, key_id))
        if cached is not None and cached[0] > now:
            return cached[1]
        try:
            entry = await self._fetch(subscriber_id, key_id)
        except (httpx.HTTPError, ValueError, KeyError, TypeError) as exc:
            if cached is not None and (cached[1].valid_until is None or cached[1].valid_until > now):
                log.warning("registry_unreachable_using_cache", subscriber=subscriber_id, error=str(exc))
                return cached[1]
            raise _untrusted(subscriber_id, key_id, f"registry lookup failed: {exc}") from exc
        if entry is None:
            self._cache.pop((subscriber_id, key_id), None)
            raise _untrusted(subscriber_id, key_id, "the registry does not know it")
        if entry.valid_until is not None and entry.valid_until < now:
            raise _untrusted(subscriber_id, key_id, "its valid_until has passed")
        until = now + self.cache_seconds
        if entry.valid_until is not None:
            until = min(until, entry.valid_until)
        self._cache[(subscriber_id, key_id)] = (until, entry)
        return entry

    async def _fetch(self, subscriber_id: str, key_id: str) -> TrustEntry | None:
        self.lookups += 1
        resp = await self.client.post(
            f"{self.url}/lookup", json={"subscriber_id": subscriber_id, "unique_key_id": key_id}
        )
        resp.raise_for_status()
        for sub in resp.json():
            if sub.get("subscriber_id") == subscriber_id and sub.get("unique_key_id", sub.get("key_id")) == key_id:
                if sub.get("status", "SUBSCRIBED") != "SUBSCRIBED":
                    return None
                return TrustEntry(
                    subscriber_id,
                    key_id,
                    public_key_from_b64(sub["signing_public_key"]),
                    str(sub.get("subscriber_url", "")),
                    _epoch(sub.get("valid_until")),
                )
        return None

    async def uri_of(self, subscriber_id: str) -> str | None:
        return next((e.uri for _, e in self._cache.values() if e.subscriber_id == subscriber_id and e.uri), None)
