"""Change capture for row streams: an `_xact_id` watermark kept beside the `created` bookmark.

Every write to a row (insert, merge annotation, comment, replacement) gives it a new, larger
`_xact_id`, while `created` is the logging client's clock and never moves on a merge. So rows
are read in `_xact_id` order and the watermark records how far that read got: every row whose
latest write is at or below it has been emitted. The next run reads rows written after the
watermark less a lookback, which picks up new rows, annotated rows and late rows alike.
"""

from __future__ import annotations

import copy
from typing import Any

MAX_XACT_ID = 2**64 - 1
_MAX_XACT_DIGITS = len(str(MAX_XACT_ID))

WATERMARK_KEY = "xact_id_watermark"
"""The state key, beside `replication_key_value`, in each partition's bookmark."""

_SECONDS_SHIFT = 16
"""`_xact_id` is `(0x0DE1 << 48) | (unix_seconds << 16) | counter`."""


def parse_xact_id(value: Any) -> int | None:
    """Read an `_xact_id` (a decimal string of a 64-bit integer, or that integer); else None."""
    if isinstance(value, str) and value.isascii() and value.isdigit():
        value = int(value) if len(value) <= _MAX_XACT_DIGITS else None
    if isinstance(value, int) and not isinstance(value, bool) and 0 <= value <= MAX_XACT_ID:
        return value
    return None


class OutOfOrderError(ValueError):
    """A row came with a smaller `_xact_id` than one before it."""


SHARED_START_SECONDS = 3600
"""Objects whose reads start within this many seconds of writes of each other share one
query, read from the lowest start. Each query ends at its own server horizon, so the objects
of one run's queries end seconds apart; read apart, they would need a query each for ever."""


def xact_at(unix_seconds: float) -> int:
    """The last `_xact_id` a write in that second can have (contract section 8)."""
    return (0x0DE1 << 48) | (int(unix_seconds) << _SECONDS_SHIFT) | 0xFFFF


def lookback(watermark: int, seconds: int) -> int:
    """The `_xact_id` `seconds` of writes before `watermark` (never below 0)."""
    return max(0, watermark - (seconds << _SECONDS_SHIFT))


def shared_starts(starts: list[int]) -> dict[int, int]:
    """For each start (an `_xact_id`), the start it is read from: the lowest one close below.

    Starts within `SHARED_START_SECONDS` of writes of the lowest of a run of them share it;
    0 (a first read) is shared with nothing else.
    """
    shared: dict[int, int] = {}
    low: int | None = None
    for start in sorted(set(starts)):
        if not low or lookback(start, SHARED_START_SECONDS) > low:
            low = start
        shared[start] = low
    return shared


class ReadProgress:
    """How far one read in ascending `_xact_id` order has got, as a safe place to resume.

    One query reads the rows of many objects in one `_xact_id` order, so once a row is read,
    every row of every one of them written before it has been read too: each object's
    watermark is the later of its own previous one and the read's position. A write becomes
    visible to queries slightly after it gets its `_xact_id`, so the server's
    `freshness_state` caps that: a write it has not processed yet may still appear below
    rows already read.
    """

    def __init__(self) -> None:
        """A read that has not started."""
        self._reading: int | None = None
        self._done: int | None = None
        self._visible_through: int | None = None
        self._every_page_reported = True
        self._horizon: int | None = None
        self._pagination_key: str | None = None

    @property
    def position(self) -> tuple[int, str] | None:
        """The `_xact_id` and `_pagination_key` of the last row, where a resumed read starts."""
        if self._reading is None or self._pagination_key is None:
            return None
        return self._reading, self._pagination_key

    @property
    def visible_xact_id(self) -> int | None:
        """The lowest freshness the pages so far reported: what a resumed part may read to."""
        return self._visible_through

    def resumed(self) -> ReadProgress:
        """A copy, for a part of the read that goes on from here in a query of its own."""
        return copy.copy(self)

    def visible_through(self, last_processed: int | None) -> None:
        """Note a page's `freshness_state.last_processed_xact_id` (None: not reported)."""
        if last_processed is None:
            self._every_page_reported = False
        elif self._visible_through is None or last_processed < self._visible_through:
            self._visible_through = last_processed

    def before_row(self, xact_id: int, pagination_key: str) -> None:
        """Account for the next row, before it is emitted.

        Raises:
            OutOfOrderError: the row does not come after the previous one in
                (`_xact_id`, `_pagination_key`) order.
        """
        previous, previous_key = self._reading, self._pagination_key
        if (
            previous is not None
            and previous_key is not None
            and (xact_id, pagination_key) <= (previous, previous_key)
        ):
            msg = f"({xact_id}, {pagination_key}) came after ({previous}, {previous_key})"
            raise OutOfOrderError(msg)
        self._reading, self._pagination_key = xact_id, pagination_key
        if previous is None or xact_id == previous:
            return
        # Every row written up to `previous` has now been emitted.
        self._done = previous

    def finish(self) -> None:
        """Account for the end of the read: a page with no rows after the last one read.

        When every page reported the server's freshness, every write up to it has been read,
        rows or not, so every watermark moves there: an idle object is then not read again.
        Otherwise they move past the last transaction read.
        """
        if self._every_page_reported and self._visible_through is not None:
            self._horizon = self._visible_through
        elif self._reading is not None:
            self._done = self._reading

    def watermark(self, start: int) -> int:
        """The watermark of an object whose read started from `start` (its last one)."""
        if self._horizon is not None:
            return self._horizon
        if self._done is None:
            return start
        value = max(start, self._done)
        if self._visible_through is not None:
            value = min(value, self._visible_through)
        return value
