"""One fixed-width UTC form for every timestamp the tap emits or compares.

Singer bookmarks are compared as strings, and `...00Z` sorts after `...00.123Z`; emitting
every timestamp as `YYYY-MM-DDTHH:MM:SS.ffffffZ` makes string order equal time order.
"""

from __future__ import annotations

import re
from datetime import datetime, timezone
from typing import overload

import pendulum
from pendulum.parsing.exceptions import ParserError

# Braintrust's own form (`2026-05-12T19:58:27.768Z`): widened without parsing, since every
# row carries one and this is the hot path.
_BRAINTRUST_MS = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z")
_STARTS_WITH_DATE = re.compile(r"\d{4}-\d\d-\d\d")


def parse_timestamp(value: str) -> datetime:
    """Parse an ISO-8601 date or date-time; a value without an offset is taken as UTC.

    Raises:
        ValueError: The value is not an ISO-8601 date or date-time.
    """
    msg = f"{value!r} is not an ISO-8601 date-time such as 2026-01-31T00:00:00Z"
    if not _STARTS_WITH_DATE.match(value):
        raise ValueError(msg)
    try:
        parsed = pendulum.parse(value, strict=True, tz="UTC")
    except (ParserError, ValueError) as exc:
        raise ValueError(msg) from exc
    if not isinstance(parsed, datetime):
        raise ValueError(msg)  # noqa: TRY004 - a duration is a bad value, not a bad type
    return parsed


def format_timestamp(moment: datetime) -> str:
    """Format as fixed-width UTC with microseconds and `Z`."""
    utc = moment.astimezone(timezone.utc)
    return utc.strftime("%Y-%m-%dT%H:%M:%S.%fZ")


@overload
def normalize_timestamp(value: str) -> str: ...
@overload
def normalize_timestamp(value: None) -> None: ...
@overload
def normalize_timestamp(value: str | None) -> str | None: ...
def normalize_timestamp(value: str | None) -> str | None:
    """Return `value` in the fixed-width UTC form; None stays None."""
    if value is None:
        return None
    if _BRAINTRUST_MS.fullmatch(value):
        return f"{value[:-1]}000Z"
    return format_timestamp(parse_timestamp(value))
