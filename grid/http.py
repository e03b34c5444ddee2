"""The one HTTP adapter every grid-signal provider client uses.

It turns transport trouble into slurm-flex errors so callers handle one vocabulary:
timeouts, connection failures and HTTP error statuses raise :class:`ProviderError` (429 raises
:class:`ProviderRateLimited` with the provider's Retry-After), and an answer that is not
JSON, or is cut short, raises :class:`ForecastFormatError`. Messages name the provider and
the URL path, never header values, credentials or query strings.
"""

from __future__ import annotations

import json
import math
import re
import time
from collections.abc import Mapping
from datetime import UTC
from email.utils import parsedate_to_datetime
from typing import Any
from urllib.parse import urlsplit

import requests
import urllib3.exceptions
from requests.adapters import HTTPAdapter
from urllib3.util.retry import Retry

from slurm_flex import __version__
from slurm_flex.errors import ForecastFormatError, ProviderError, ProviderRateLimited

DEFAULT_USER_AGENT = f"slurm-flex/{__version__} (+https://github.com/slurm-flex)"
# Server-side hiccups worth asking again; 429 is deliberately absent (we back off instead).
RETRY_STATUSES = frozenset({500, 502, 503, 504})
EXCERPT_CHARS = 200


def parse_retry_after(value: str | None, now: float | None = None) -> float | None:
    """Seconds to wait from a Retry-After header: delta-seconds or an HTTP-date; None if absent
    or unreadable."""
    if value is None or not value.strip():
        return None
    text = value.strip()
    try:
        seconds = float(text)
    except ValueError:
        try:
            when = parsedate_to_datetime(text)
        except (TypeError, ValueError):
            return None
        if when.tzinfo is None:  # "-0000": RFC 9110 dates are GMT anyway
            when = when.replace(tzinfo=UTC)
        seconds = when.timestamp() - (time.time() if now is None else now)
    if not math.isfinite(seconds):
        return None
    return max(seconds, 0.0)


def _timeout_like(exc: BaseException) -> bool:
    # urllib3's NewConnectionError (refused, unresolvable) subclasses ConnectTimeoutError for
    # historical reasons; it is not a timeout.
    if isinstance(exc, urllib3.exceptions.NewConnectionError):
        return False
    return isinstance(exc, (urllib3.exceptions.TimeoutError, TimeoutError))


def _is_timeout(exc: BaseException) -> bool:
    """True when a requests error is, at its root, a timeout (a body-read timeout surfaces as
    a ConnectionError wrapping urllib3's ReadTimeoutError)."""
    if isinstance(exc, requests.ConnectTimeout | requests.ReadTimeout):
        return True
    seen: BaseException | None = exc
    for _ in range(5):  # follow args/__context__ a few levels; the chain is short
        if seen is None:
            return False
        if _timeout_like(seen):
            return True
        inner = seen.args[0] if seen.args and isinstance(seen.args[0], BaseException) else None
        reason = getattr(inner, "reason", None)
        if isinstance(reason, BaseException) and _timeout_like(reason):
            return True
        seen = inner or seen.__context__
    return False


class HttpClient:
    """GET JSON from one provider's base URL, with retries for connection errors and 5xx.

    Retries use exponential backoff (GET only); read timeouts, 429 and other statuses are not
    retried. Redirects are not followed."""

    def __init__(
        self,
        provider: str,
        base_url: str,
        *,
        timeout_seconds: float = 10.0,
        retries: int = 2,
        backoff_seconds: float = 0.5,
        headers: Mapping[str, str] | None = None,
        user_agent: str = DEFAULT_USER_AGENT,
    ) -> None:
        if timeout_seconds <= 0:
            raise ValueError("timeout_seconds must be positive")
        if retries < 0:
            raise ValueError("retries must be >= 0")
        self.provider = provider
        self.base_url = base_url.rstrip("/")
        self.timeout_seconds = timeout_seconds
        retry = Retry(
            total=retries,
            connect=retries,
            # A read timeout already cost timeout_seconds; re-raise it instead of waiting again
            # (the daemon asks again next cycle).
            read=False,
            status=retries,
            other=0,
            allowed_methods=frozenset({"GET"}),
            status_forcelist=RETRY_STATUSES,
            backoff_factor=backoff_seconds,
            # Otherwise urllib3 retries 429 (and sleeps for any Retry-After a server sends).
            respect_retry_after_header=False,
            raise_on_status=False,
        )
        self._session = requests.Session()
        adapter = HTTPAdapter(max_retries=retry)
        self._session.mount("http://", adapter)
        self._session.mount("https://", adapter)
        self._session.headers.update({"User-Agent": user_agent, "Accept": "application/json"})
        self._secret_headers = dict(headers or {})  # may carry a token: blank it out of error excerpts
        self._session.headers.update(self._secret_headers)

    def close(self) -> None:
        self._session.close()

    def __enter__(self) -> HttpClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def get_json(
        self,
        path: str,
        params: Mapping[str, str] | None = None,
        headers: Mapping[str, str] | None = None,
        auth: tuple[str, str] | None = None,
    ) -> Any:
        """The decoded JSON body of ``GET base_url + path``."""
        url = self.base_url + (path if path.startswith("/") else "/" + path)
        where = urlsplit(url).path
        secrets = _secrets([*self._secret_headers.values(), *(headers or {}).values(), *(auth[1:] if auth else ())])
        try:
            response = self._session.get(
                url,
                params=dict(params or {}),
                headers=dict(headers or {}),
                auth=auth,
                timeout=self.timeout_seconds,
                # requests would forward custom token headers (auth-token) to whatever host a
                # redirect names; the APIs we call do not redirect, so treat one as an error.
                allow_redirects=False,
            )
            body = response.content
        except (requests.exceptions.ChunkedEncodingError, requests.exceptions.ContentDecodingError) as exc:
            raise ForecastFormatError(f"{self.provider}: answer to {where} was cut off or garbled") from exc
        except requests.RequestException as exc:
            if _is_timeout(exc):
                raise ProviderError(self.provider, f"{where} timed out after {self.timeout_seconds:g} s") from exc
            host = urlsplit(url).hostname  # not netloc: that could carry user:password
            raise ProviderError(self.provider, f"cannot reach {host}: {type(exc).__name__}") from exc
        if response.is_redirect:
            raise ProviderError(
                self.provider, f"HTTP {response.status_code} redirect from {where} not followed", response.status_code
            )
        try:
            response.raise_for_status()
        except requests.HTTPError as exc:
            status = response.status_code
            if status == 429:
                retry_after = parse_retry_after(response.headers.get("Retry-After"))
                raise ProviderRateLimited(self.provider, retry_after) from exc
            excerpt = _excerpt(body, secrets)
            raise ProviderError(self.provider, f"HTTP {status} from {where}: {excerpt}", status=status) from exc
        try:
            return json.loads(body)
        except ValueError as exc:  # JSONDecodeError and UnicodeDecodeError
            raise ForecastFormatError(
                f"{self.provider}: answer to {where} is not valid JSON ({_short(exc)}; {len(body)} bytes)"
            ) from exc


def _secrets(values: list[str]) -> list[str]:
    """Header and password values to blank out, longest first, including the token part of
    values such as ``Bearer <token>``."""
    found = {v for v in values if v}
    found |= {part for v in values for part in v.split() if len(part) >= 8}
    return sorted(found, key=len, reverse=True)


def _excerpt(body: bytes, secrets: list[str]) -> str:
    """A short one-line excerpt of an error body, with any credential we sent blanked out."""
    text = re.sub(r"\s+", " ", body[: EXCERPT_CHARS * 4].decode("utf-8", "replace")).strip()
    for secret in secrets:
        text = text.replace(secret, "***")
    if len(text) > EXCERPT_CHARS:
        text = text[:EXCERPT_CHARS] + "…"
    return text or "(empty body)"


def _short(exc: ValueError) -> str:
    if isinstance(exc, json.JSONDecodeError):
        return f"{exc.msg} at char {exc.pos}"
    return type(exc).__name__
