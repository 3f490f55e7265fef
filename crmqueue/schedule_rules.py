"""When a recurring schedule's occurrences fall: cron expressions (5 fields, read by
cronsim, which follows Debian's cron) in an IANA time zone, or fixed intervals.

DST, as Debian's cron (and cronsim) does it: a time of day that a spring-forward day
skips (02:30 in Europe/Berlin on the last Sunday of March) runs once, at the first valid
time after the gap (03:00); a time of day that a fall-back day repeats runs once, the
first time. Expressions whose hour is a wildcard or a step (``*/15 * * * *``) follow
real time through both changes. Intervals are counted in real seconds from an anchor
and know no time zone.

Every time here is an aware datetime; results are in UTC, whole seconds.
"""

from __future__ import annotations

import datetime as dt
import math
import zoneinfo

from cronsim import CronSim, CronSimError

__all__ = ["CRON_RULE", "cron_problem", "latest_at_or_before", "next_after"]

CRON_RULE = (
    "a cron expression of 5 fields (minute hour day-of-month month day-of-week, e.g. '0 8 * * MON')"
)
_EPOCH = dt.datetime(1970, 1, 1, tzinfo=dt.UTC)


def cron_problem(expression: object) -> str | None:
    """Why `expression` is not a usable cron expression, or None when it is one: five
    fields cronsim accepts, with at least one occurrence in the next 50 years (cronsim's
    search horizon; '0 0 30 2 *' never occurs)."""
    if not isinstance(expression, str):
        return f"must be text ({CRON_RULE}), not {type(expression).__name__}"
    if len(expression.split()) != 5:
        return f"{expression!r} is not {CRON_RULE}"
    try:
        next(CronSim(expression, dt.datetime(2000, 1, 1, tzinfo=dt.UTC)))
    except CronSimError as exc:
        return f"{expression!r} is not {CRON_RULE}: {str(exc).lower()}"
    except StopIteration:
        return f"{expression!r} never occurs"
    return None


def _utc(moment: dt.datetime) -> dt.datetime:
    return moment.astimezone(dt.UTC)


def next_after(
    moment: dt.datetime,
    *,
    cron: str | None = None,
    time_zone: str = "UTC",
    interval_seconds: int | None = None,
    anchor: dt.datetime | None = None,
) -> dt.datetime | None:
    """The first occurrence strictly after `moment` (UTC), or None when the cron
    expression has none within 50 years. An interval's occurrences are anchor + k *
    interval_seconds for whole k >= 1."""
    if interval_seconds is not None:
        start = anchor or _EPOCH
        steps = max(1, math.floor((moment - start).total_seconds() / interval_seconds) + 1)
        return _utc(start + dt.timedelta(seconds=steps * interval_seconds))
    if cron is None:
        raise ValueError("give cron or interval_seconds")
    local = moment.astimezone(zoneinfo.ZoneInfo(time_zone))
    try:
        return _utc(next(CronSim(cron, local)))
    except StopIteration:
        return None


def latest_at_or_before(
    moment: dt.datetime,
    *,
    cron: str | None = None,
    time_zone: str = "UTC",
    interval_seconds: int | None = None,
    anchor: dt.datetime | None = None,
) -> dt.datetime | None:
    """The last occurrence at or before `moment` (UTC), or None when there is none (an
    interval before its first occurrence, a cron expression with none in 50 years)."""
    if interval_seconds is not None:
        start = anchor or _EPOCH
        steps = math.floor((moment - start).total_seconds() / interval_seconds)
        if steps < 1:
            return None
        return _utc(start + dt.timedelta(seconds=steps * interval_seconds))
    if cron is None:
        raise ValueError("give cron or interval_seconds")
    # cronsim's reverse search starts strictly before its start, in whole seconds.
    start = moment.replace(microsecond=0) + dt.timedelta(seconds=1)
    local = start.astimezone(zoneinfo.ZoneInfo(time_zone))
    try:
        return _utc(next(CronSim(cron, local, reverse=True)))
    except StopIteration:
        return None
