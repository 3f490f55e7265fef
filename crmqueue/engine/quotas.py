"""Daily quotas per tenant and queue (issue #17, item 3): which caps apply to a batch of
new jobs, and the tenant's day they count in.

A tenant's day runs from local midnight to local midnight in its time zone ([tenants]
time_zones, else [reports] tenant_time_zones, else [tenants] time_zone; see
crmqueue.zones for the rule), so a day may last 23 or 25 hours around a DST change. The
count itself lives in the queue storage (JobStore.enqueue_jobs checks and adds to it in
the step that stores the jobs), so every producer on the storage shares it.
"""

from __future__ import annotations

import datetime as dt
import functools
import time
import zoneinfo
from collections.abc import Callable, Iterable

from crmqueue.config import Settings
from crmqueue.engine.storage import NewJob, Quota


@functools.lru_cache(maxsize=256)
def _zone(name: str) -> zoneinfo.ZoneInfo:
    return zoneinfo.ZoneInfo(name)


def local_day(zone: str, now: float) -> tuple[str, float]:
    """(the local date at `now` in `zone` as YYYY-MM-DD, the Unix time of the next local
    midnight there). A midnight that a DST change skips is taken as the first instant of
    the next day (zoneinfo's fold=0 reading, then normalised through UTC)."""
    tz = _zone(zone)
    today = dt.datetime.fromtimestamp(now, tz).date()
    tomorrow = dt.datetime.combine(today + dt.timedelta(days=1), dt.time(), tz)
    # Round-trip through UTC: a nonexistent local midnight maps to the instant after the gap.
    reset = tomorrow.astimezone(dt.UTC).timestamp()
    return today.isoformat(), reset


class QuotaPolicy:
    """The daily caps of one queue. `clock` (Unix seconds) is injectable for tests."""

    def __init__(
        self, queue: str, settings: Settings, clock: Callable[[], float] = time.time
    ) -> None:
        self.queue = queue
        self.tenants = settings.tenants
        self.reports = settings.reports
        self.clock = clock
        self._zones: dict[str, str] = {}
        self._days: dict[str, tuple[float, str, float]] = {}

    def for_jobs(self, jobs: Iterable[NewJob]) -> list[Quota]:
        """One Quota per tenant among `jobs` that has a cap on this queue (empty: none)."""
        now = self.clock()
        quotas = []
        for tenant in dict.fromkeys(job.tenant for job in jobs):
            limit = self.tenants.quota_for(self.queue, tenant)
            if limit is None:
                continue
            zone = self._zones.get(tenant)
            if zone is None:
                zone = self._zones[tenant] = self.tenants.zone_for(tenant, self.reports)
            day, reset = self._day(zone, now)
            quotas.append(Quota(tenant, day, limit, reset, zone, now))
        return quotas

    def _day(self, zone: str, now: float) -> tuple[str, float]:
        """local_day, remembered per zone until its day ends (a clock that goes back
        reads it afresh)."""
        known = self._days.get(zone)
        if known is not None and known[0] <= now < known[2]:
            return known[1], known[2]
        day, reset = local_day(zone, now)
        self._days[zone] = (now, day, reset)
        return day, reset

    def usage(self, tenant: str) -> tuple[str, float] | None:
        """The tenant's current (day, reset time) when it has a cap here, else None."""
        if self.tenants.quota_for(self.queue, tenant) is None:
            return None
        return local_day(self.tenants.zone_for(tenant, self.reports), self.clock())


def quota_policy(queue: str, settings: Settings) -> QuotaPolicy | None:
    """The queue's policy, or None when no tenant has a cap on it (enqueue then passes no
    quota and costs nothing more)."""
    return QuotaPolicy(queue, settings) if settings.tenants.has_quota(queue) else None
