"""The time zone rule, one for every layer (users' quiet hours, report periods): an IANA
name of the form Area/Location (Europe/Berlin, America/New_York, Etc/GMT+5) that this
system's time zone database lists, or ``UTC``.

Refused although zoneinfo opens them: ``localtime`` (the host's own setting, so quiet
hours or a report period would change from one worker host to another), ``Factory`` and
``posixrules`` (files of the database, not zones), ``posix/...`` and ``right/...``
(alternative copies; ``right/`` counts leap seconds), and the legacy names without an
area (EST5EDT, CET, GB, Japan...). Those are IANA "backward" links, but EST5EDT, CST6CDT,
MST7MDT, PST8PDT, CET, EET, MET and WET changed meaning in tzdata 2024b (they became
links to a city's zone), so two hosts with different tzdata would disagree about them;
the Area/Location name says what is meant on every host."""

from __future__ import annotations

import functools
import zoneinfo

__all__ = ["TIME_ZONE_RULE", "time_zone_problem"]

TIME_ZONE_RULE = "an IANA time zone as Area/Location (e.g. Europe/Berlin, America/New_York) or UTC"


@functools.cache
def _known() -> frozenset[str]:
    # available_timezones() walks the database (about 20 ms): once per process.
    return frozenset(zoneinfo.available_timezones())


def time_zone_problem(name: object) -> str | None:
    """Why `name` is not a time zone by the rule above, or None when it is one."""
    if not isinstance(name, str):
        return f"must be text ({TIME_ZONE_RULE}), not {type(name).__name__}"
    area_location = "/" in name and not name.startswith(("posix/", "right/"))
    if (name == "UTC" or area_location) and name in _known():
        return None
    return f"{name!r} is not {TIME_ZONE_RULE}"
