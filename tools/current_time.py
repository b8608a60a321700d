"""current_time: the current time in the machine's zone or a named IANA zone."""

from __future__ import annotations

from datetime import datetime, timedelta
from datetime import timezone as dt_timezone
from typing import Annotated
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import tzlocal
from pydantic import BaseModel, Field

from tools.errors import ToolInputError

NAME = "current_time"
DESCRIPTION = "The current time in the machine's local zone or an IANA zone you name."


class CurrentTime(BaseModel):
    """The current time, as ISO-8601 with offset and as Unix time."""

    iso: str = Field(description="ISO-8601, with UTC offset")
    timezone: str = Field(description="IANA zone")
    abbreviation: str = Field(description="e.g. CET")
    utc_offset: str = Field(description="+HH:MM")
    unix_time: float = Field(description="seconds")
    weekday: str = Field(description="in English")

    def summary(self) -> str:
        return f"{self.iso} ({self.timezone}, {self.abbreviation}, {self.weekday}); Unix time {self.unix_time:.3f}"


def _local_zone_name() -> str:
    try:
        return tzlocal.get_localzone_name() or "UTC"
    except Exception:  # tzlocal raises several types on odd setups; UTC is always a safe answer
        return "UTC"


def _zone(name: str) -> ZoneInfo:
    if name.upper() in {"UTC", "Z", "GMT"}:
        return ZoneInfo("UTC")
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError, IsADirectoryError, PermissionError) as exc:
        raise ToolInputError(
            f"unknown time zone {name!r}; use an IANA zone name such as 'UTC', "
            "'Europe/Paris' or 'America/New_York', or omit timezone for the local zone"
        ) from exc


def current_time(
    timezone: Annotated[
        str | None,
        Field(description="IANA zone, e.g. 'Asia/Tokyo' (default: local zone)", max_length=64),
    ] = None,
) -> CurrentTime:
    """Return the current time in ``timezone`` (default: the local zone)."""
    name = timezone.strip() if timezone and timezone.strip() else _local_zone_name()
    zone = _zone(name)
    now = datetime.now(dt_timezone.utc).astimezone(zone)
    minutes = int((now.utcoffset() or timedelta()).total_seconds() // 60)
    offset = f"{'-' if minutes < 0 else '+'}{abs(minutes) // 60:02d}:{abs(minutes) % 60:02d}"
    return CurrentTime(
        iso=now.isoformat(),
        timezone=str(zone.key),
        abbreviation=now.tzname() or "",
        utc_offset=offset,
        unix_time=round(now.timestamp(), 6),
        weekday=now.strftime("%A"),
    )
