"""A site's signals for planning: live forecasts, cached, extended and outage-proof.

For each quantity (carbon, price) a site names one provider. Every cycle:

1. the provider is asked, unless it was asked less than ``min_interval`` ago (providers update
   half-hourly or daily; asking more often only costs them), it asked us to wait (HTTP 429), or
   it has been failing (then it is retried with a growing back-off). A provider shared by two
   sites is therefore asked at most once per cycle. Every answer is stored as issued;
2. the latest answer is used while it is younger than ``max_forecast_age``; when the provider
   failed this cycle that is the *last good forecast*, and says so;
3. slots past its end (or all slots, once it is too old) get a *profile* from history;
4. with no carbon value for the current slot at all, the site has no signal: the daemon then
   runs its jobs as if slurm-flex were not there (releases them on time).

Every fallback is a note on the series, which the daemon logs and ``slurmflex status`` shows.
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from dataclasses import dataclass

import structlog

from slurm_flex.errors import ForecastError, ProviderRateLimited, SlurmFlexError
from slurm_flex.grid.cache import GridCache
from slurm_flex.grid.profile import profile
from slurm_flex.grid.readings import Provider, Quantity
from slurm_flex.grid.series import SLOT_SECONDS, Segment, SignalSeries, floor_slot, iso_utc

log = structlog.get_logger(__name__)

DAY = 86400


@dataclass(frozen=True)
class SignalPolicy:
    horizon_hours: float = 168.0
    max_forecast_age_seconds: int = 6 * 3600
    profile_weeks: int = 4
    profile_days: int = 14
    history_days: int = 28
    retention_days: int = 60
    max_backoff_seconds: int = 3600


@dataclass(frozen=True)
class FeedStatus:
    source: str
    asked: bool  # the provider was called this cycle
    ok: bool  # the last call succeeded
    error: str  # the last call's error, if it failed
    age_seconds: float | None  # age of the reading in use (None: no reading)


class ProviderFeed:
    """One provider with its calling discipline, backed by the cache."""

    def __init__(
        self,
        provider: Provider,
        cache: GridCache,
        min_interval_seconds: int,
        policy: SignalPolicy,
    ) -> None:
        self.provider = provider
        self.cache = cache
        self.min_interval = min_interval_seconds
        self.policy = policy
        self._failures = 0
        self._status: tuple[int, FeedStatus] | None = None  # (cycle time, status)
        # Offline: never ask the provider; plan on what the cache holds (slurmflex forecast --cached).
        self.offline = False

    @property
    def source(self) -> str:
        return self.provider.name

    @property
    def quantity(self) -> Quantity:
        return self.provider.quantity

    def _due(self, now: int) -> bool:
        if self.offline:
            return False
        last = self.cache.last_fetch(self.source)
        if last is None:
            return True
        if last.retry_after is not None and now < last.retry_after:
            return False
        if last.ok:
            return now - last.ts >= self.min_interval
        # Failing: try again next cycle at first, then back off (1, 2, 4 ... min, capped).
        backoff = min(60 << min(max(0, self._failures - 1), 20), self.policy.max_backoff_seconds)
        return now - last.ts >= backoff

    def refresh(self, now: int) -> FeedStatus:
        """Ask the provider if it is due (at most once per ``now``); never raises for the
        provider's failures, which go into the status and the log."""
        if self._status is not None and self._status[0] == now:
            return self._status[1]
        asked = self._due(now)
        if asked:
            t0 = time.monotonic()
            try:
                reading = self.provider.fetch(now)
            except ProviderRateLimited as exc:
                self._failed(now, time.monotonic() - t0, exc, exc.retry_after)
            except SlurmFlexError as exc:
                self._failed(now, time.monotonic() - t0, exc, None)
            except Exception as exc:  # a provider's bug must not stop the daemon planning
                log.exception("grid_fetch_bug", source=self.source)
                self._failed(now, time.monotonic() - t0, exc, None)
            else:
                self.cache.store(reading, fetched_at=now)
                self.cache.record_fetch(self.source, "forecast", now, True, time.monotonic() - t0)
                self._failures = 0
                log.info(
                    "grid_fetch", source=self.source, points=len(reading.points), issued=iso_utc(reading.issued_at)
                )
        last = self.cache.last_fetch(self.source)
        stored = self.cache.latest(self.source)
        status = FeedStatus(
            source=self.source,
            asked=asked,
            ok=last is not None and last.ok,
            error="" if last is None or last.ok else last.error,
            age_seconds=None if stored is None else float(now - stored.fetched_at),
        )
        self._status = (now, status)
        return status

    def _failed(self, now: int, seconds: float, exc: Exception, retry_after: float | None) -> None:
        self._failures += 1
        until = None if retry_after is None else now + math.ceil(retry_after)
        self.cache.record_fetch(self.source, "forecast", now, False, seconds, str(exc), until)
        log.warning("grid_fetch_failed", source=self.source, error=str(exc), failures=self._failures)

    def seed_history(self, now: int) -> None:
        """Fill the cache with past values for profiles: at most once a day, and only as far
        back as it is missing. Failures are logged and retried the next day."""
        last = self.cache.last_fetch(self.source, "history")
        if self.offline or (last is not None and now - last.ts < DAY):
            return
        start = floor_slot(now - self.policy.history_days * DAY)
        known = self.cache.history(self.source, start, floor_slot(now))
        if known:
            start = max(start, min(max(known) + SLOT_SECONDS, floor_slot(now) - DAY))
        t0 = time.monotonic()
        try:
            reading = self.provider.history(start, floor_slot(now))
        except Exception as exc:  # history is optional: any failure waits for tomorrow
            self.cache.record_fetch(self.source, "history", now, False, time.monotonic() - t0, str(exc))
            log.warning("grid_history_failed", source=self.source, error=str(exc))
            return
        self.cache.store(reading, fetched_at=now)
        self.cache.record_fetch(self.source, "history", now, True, time.monotonic() - t0)
        log.info("grid_history", source=self.source, points=len(reading.points), since=iso_utc(start))


@dataclass(frozen=True)
class _Assembled:
    values: list[float]
    segments: list[Segment]
    notes: list[str]
    issued_at: int | None


def assemble(feed: ProviderFeed, now: int, n_slots: int, policy: SignalPolicy) -> _Assembled:
    """Values per slot from floor_slot(now) for one quantity, with where each came from."""
    slot0 = floor_slot(now)
    status = feed.refresh(now)
    values = [math.nan] * n_slots
    origins: list[tuple[str, int | None] | None] = [None] * n_slots
    notes: list[str] = []
    stored = feed.cache.latest(feed.source)
    issued_at = None
    usable = stored is not None and now - stored.fetched_at <= policy.max_forecast_age_seconds
    if stored is not None and usable:
        # Not asked this cycle (too soon) is still the current forecast; a failed ask is not.
        fresh = status.ok
        if not status.ok:
            age_h = (now - stored.fetched_at) / 3600
            notes.append(f"{feed.source} failed ({status.error}); using its forecast from {age_h:.1f} h ago")
        issued_at = stored.reading.issued_at
        for p in stored.reading.points:
            i = (p.start - slot0) // SLOT_SECONDS
            if 0 <= i < n_slots:
                values[i] = p.value
                label = p.kind if fresh or p.kind == "actual" else "last good forecast"
                origins[i] = (label, stored.reading.issued_at)
    elif stored is not None:
        notes.append(
            f"{feed.source}: last good answer is {(now - stored.fetched_at) / 3600:.1f} h old, "
            f"older than {policy.max_forecast_age_seconds / 3600:g} h" + (f" ({status.error})" if status.error else "")
        )
    elif not status.ok:
        notes.append(f"{feed.source}: no answer yet ({status.error or 'not asked'})")
    missing = [slot0 + i * SLOT_SECONDS for i in range(n_slots) if origins[i] is None]
    if missing:
        lookback = (policy.profile_weeks * 7 + 1) * DAY
        history = feed.cache.history(feed.source, slot0 - lookback, slot0)
        filled = profile(history, missing, weeks=policy.profile_weeks, days=policy.profile_days)
        for t, v in filled.items():
            i = (t - slot0) // SLOT_SECONDS
            values[i] = v
            origins[i] = ("profile", None)
        if filled and not usable:
            notes.append(f"{feed.source}: planning on a profile from history")
    return _Assembled(values, _segments(feed.quantity, feed.source, slot0, origins), notes, issued_at)


def _segments(
    quantity: str, source: str, slot0: int, origins: Sequence[tuple[str, int | None] | None]
) -> list[Segment]:
    out: list[Segment] = []
    for i, origin in enumerate(origins):
        if origin is None:
            continue
        start = slot0 + i * SLOT_SECONDS
        last = out[-1] if out else None
        if last is not None and last.end == start and (last.origin, last.issued_at) == origin:
            out[-1] = Segment(quantity, last.start, start + SLOT_SECONDS, last.origin, source, last.issued_at)
        else:
            out.append(Segment(quantity, start, start + SLOT_SECONDS, origin[0], source, origin[1]))
    return out


class SiteSignals:
    """The forecast source for one site (what the daemon plans that site's jobs with)."""

    def __init__(
        self, site: str, carbon: ProviderFeed, price: ProviderFeed | None, policy: SignalPolicy = SignalPolicy()
    ) -> None:
        self.site = site
        self.carbon = carbon
        self.price = price
        self.policy = policy

    @property
    def name(self) -> str:
        parts = [self.carbon.source] + ([self.price.source] if self.price else [])
        return f"site {self.site}: {' + '.join(parts)}"

    def feeds(self) -> list[ProviderFeed]:
        return [self.carbon] + ([self.price] if self.price else [])

    def forecast(self, now: float) -> SignalSeries:
        t = int(now)
        n_slots = int(self.policy.horizon_hours * 3600) // SLOT_SECONDS
        for feed in self.feeds():
            feed.seed_history(t)
        carbon = assemble(self.carbon, t, n_slots, self.policy)
        if math.isnan(carbon.values[0]):
            why = "; ".join(carbon.notes) or "no data"
            raise ForecastError(f"site {self.site}: no carbon signal for now ({why}); jobs run as submitted")
        # Plan only as far as carbon is known without a gap.
        n = next((i for i, v in enumerate(carbon.values) if math.isnan(v)), n_slots)
        price_values = [math.nan] * n
        segments = [s for seg in carbon.segments if (s := seg.clipped(floor_slot(t), floor_slot(t) + n * SLOT_SECONDS))]
        notes = list(carbon.notes)
        if self.price is not None:
            price = assemble(self.price, t, n, self.policy)
            price_values = price.values
            segments += price.segments
            notes += price.notes
        for note in notes:
            log.warning("grid_fallback", site=self.site, note=note)
        return SignalSeries(
            start=floor_slot(t),
            carbon=tuple(carbon.values[:n]),
            price=tuple(price_values[:n]),
            source=self.name,
            issued_at=carbon.issued_at,
            segments=tuple(segments),
            notes=tuple(notes),
        )


def prune(cache: GridCache, now: int, policy: SignalPolicy) -> None:
    """Drop what is older than the retention (called now and then by the daemon)."""
    try:
        cache.prune(now - policy.retention_days * DAY)
    except SlurmFlexError as exc:
        log.warning("grid_prune_failed", error=str(exc))
