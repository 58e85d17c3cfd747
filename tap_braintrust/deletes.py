"""Rows deleted from experiments and datasets since the last run, found by counting.

No read returns a deleted row and a delete moves no `_xact_id`, so `detect_deletes` counts.
A row's `_pagination_key` is given at its first write and kept (contract sections 4 and 8),
so the rows up to a key hold the same ids at every version, less the deleted ones:

- Each run counts every object's live rows up to the stream's key bound: one SQL count per
  group of objects (R3). The state keeps the count, the bound, and the version it holds at
  (the count's freshness).
- An object with fewer rows than last time lost some. Key ranges are counted at that
  version and now, the differing half halved again, until a range holds at most a page of
  rows; its ids at the two versions then differ by exactly the deleted ones, whose content
  is read at the old version (R1, one object per pinned query: R2 is unproven).
- When the run read rows first written above the bound, the bound moves up to the run's
  watermarks, with a second count. Rows the run delivered there that this count misses
  were deleted since they were read; their content is read at the version they were read.

A mismatch no scan explains (a row re-inserted under its old key, a purge the counts saw
late) is taken as the new count, so it costs nothing on later runs. Requests: one count per
`MAX_IDS_PER_COUNT` objects a run, two in runs that read new rows, and for each object that
lost rows about 2 * log2(rows / 1000) + 4 more (README, "Deleted rows and objects").
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol, TypeGuard

from tap_braintrust.errors import BraintrustError
from tap_braintrust.incremental import parse_xact_id, xact_at
from tap_braintrust.queries import (
    MAX_IDS_PER_LIST,
    MAX_PAGE_SIZE,
    OBJECT_ID_FIELD,
    CountQuery,
    KeyRange,
    KeyScanQuery,
    key_bound,
    pagination_key_of,
)
from tap_braintrust.timestamps import parse_timestamp
from tap_braintrust.transport import AccessDeniedError, GroupTooBigError, QueryRefusedError

if TYPE_CHECKING:
    import logging
    from collections.abc import Collection, Iterable, Iterator, Mapping

    from tap_braintrust.client import BtqlPage
    from tap_braintrust.queries import FieldPath, PagedQuery, RowSource

CHECK_KEY = "deleted_rows_check"
"""The state key, in each object's partition, of what the last run counted."""
MAX_MARKED_KEPT = 1000
"""Ids of marked rows an object's state keeps (about 40 bytes each)."""
MAX_IDS_PER_COUNT = 1000
"""Most objects one count names: braintrust-migrate's cap on ids per source. A count is one
small answer, so it is not held to `objects_per_query`; it is halved like a read when
Braintrust finds it too wide."""
_NOT_LOOKED_FOR = "its deleted rows are not looked for"
_ID_COLUMNS: tuple[FieldPath, ...] = (("id",), ("_pagination_key",))
_KEY_DIGITS = 20


class Reader(Protocol):
    """What finding deletes needs of its stream: its name, its log, and its queries' pages."""

    name: str

    @property
    def logger(self) -> logging.Logger:
        """The stream's logger."""
        ...

    def query_pages(self, query: PagedQuery[Any], after: Any = None) -> Iterator[BtqlPage]:
        """Every page of `query`."""
        ...

    def still_listed(self, object_ids: Iterable[str]) -> set[str]:
        """Which of the objects a fresh listing still shows."""
        ...

    def say_gone(self, gone: set[str], meanwhile: str) -> None:
        """Warn of objects deleted since the listing, and what is done without them."""
        ...


@dataclass(frozen=True)
class Tally:
    """Live rows of one object in a key range, with their lowest and highest keys."""

    rows: int
    first_key: str | None = None
    last_key: str | None = None

    def keys(self, otherwise: KeyRange) -> KeyRange:
        """The range from its first key to its last; `otherwise` without them."""
        if self.first_key is None or self.last_key is None:
            return otherwise
        return KeyRange(_key(_key_number(self.first_key) - 1), self.last_key)


@dataclass(frozen=True)
class Count:
    """What a run counted for one object: the rows up to a key, live at a version.

    Attributes:
        tally: live rows with `_pagination_key` up to `keys_through` (and `created` from
            `created_since`), and their first and last keys.
        keys_through: the key bound.
        counted_at: an `_xact_id` at which those rows were live: the count's freshness.
        created_since: the `start_date` the count applied (None: none).
        marked: ids of rows runs marked deleted, the latest `MAX_MARKED_KEPT`: one written
            again comes back under its old key, which the counts must not take for a row
            that hides a delete.
    """

    tally: Tally
    keys_through: str
    counted_at: int
    created_since: str | None
    marked: tuple[str, ...] = ()

    def to_state(self) -> dict[str, Any]:
        """As kept in the state."""
        return {
            "rows": self.tally.rows,
            "first_key": self.tally.first_key,
            "last_key": self.tally.last_key,
            "keys_through": self.keys_through,
            "counted_at": str(self.counted_at),
            "created_since": self.created_since,
            "marked": list(self.marked),
        }

    @classmethod
    def from_state(cls, value: Any) -> Count | None:
        """The count a state kept; None for one this release cannot read (counted again)."""
        if not isinstance(value, dict):
            return None
        rows, keys, at = value.get("rows"), value.get("keys_through"), value.get("counted_at")
        first, last = value.get("first_key"), value.get("last_key")
        counted_at = parse_xact_id(at)
        since = value.get("created_since")
        marked = value.get("marked", [])
        if (
            not isinstance(rows, int)
            or isinstance(rows, bool)
            or rows < 0
            or not _is_key(keys)
            or counted_at is None
            or not isinstance(since, (str, type(None)))
            or not all(key is None or _is_key(key) for key in (first, last))
            or not isinstance(marked, list)
            or not all(isinstance(row_id, str) for row_id in marked)
        ):
            return None
        return cls(Tally(rows, first, last), keys, counted_at, since, tuple(marked))

    def after(
        self,
        tally: Tally,
        keys_through: str,
        counted_at: int,
        found: Iterable[str],
        back: Iterable[str],
    ) -> Count:
        """The next run's count: this one's marks, less those written again, plus `found`."""
        gone = set(back)
        marked = [row_id for row_id in self.marked if row_id not in gone]
        marked += sorted(set(found) - set(marked))
        return Count(
            tally, keys_through, counted_at, self.created_since, tuple(marked[-MAX_MARKED_KEPT:])
        )


def _is_key(value: Any) -> TypeGuard[str]:
    """Whether `value` is a `_pagination_key`: `p` and 20 digits."""
    return (
        isinstance(value, str)
        and len(value) == _KEY_DIGITS + 1
        and value.startswith("p")
        and value[1:].isdigit()
    )


def _key_number(key: str) -> int:
    return int(key[1:])


def _key(number: int) -> str:
    return f"p{number:0{_KEY_DIGITS}d}"


@dataclass
class _Object:
    """One object's part in finding deletes this run."""

    object_id: str
    state: dict[str, Any]
    last: Count | None
    lowest_key: str | None
    """No row of the object can have a key at or below this (from its creation time)."""
    delivered: dict[str, tuple[int, str]] = field(default_factory=dict)
    """Rows read this run with keys above the last bound: id -> (`_xact_id`, key)."""
    back: dict[str, str] = field(default_factory=dict)
    """Rows marked deleted by an earlier run and read again this run: id -> key."""
    read: set[str] = field(default_factory=set)
    """Every row read live this run: never marked, whatever the counts say."""
    marked: frozenset[str] = frozenset()
    """The ids the last count's runs marked, for looking up."""
    found: set[str] = field(default_factory=set)
    """Rows this run found deleted."""


class DetectionRefusedError(Exception):
    """Braintrust refused a query delete detection needs; detection is skipped this run."""


class DeleteFinder:
    """Finds one row stream's deleted rows; see the module docstring."""

    def __init__(self, reader: Reader, source: RowSource, created_since: str | None) -> None:
        """For the rows of `source` objects, counted from `created_since` (`start_date`)."""
        self.reader = reader
        self.source = source
        self.created_since = created_since
        self._objects: dict[str, _Object] = {}
        self._group_size = MAX_IDS_PER_COUNT
        self._pinned_counts = True

    def track(self, object_id: str, state: dict[str, Any], created: str | None) -> None:
        """Take part: the object's state partition, and when the object was made."""
        last = Count.from_state(state.get(CHECK_KEY))
        if last is not None and last.created_since != self.created_since:
            last = None  # `start_date` changed: counted afresh
        self._objects[object_id] = _Object(
            object_id,
            state,
            last,
            _lowest_key(created),
            marked=frozenset(last.marked) if last else frozenset(),
        )

    def saw(self, object_id: str, row: Mapping[str, Any], xact_id: int) -> None:
        """Note a row read this run: one first written above the last bound is new."""
        part = self._objects.get(object_id)
        if part is None or part.last is None:
            return
        key, row_id = pagination_key_of(row), str(row.get("id"))
        part.read.add(row_id)
        if key > part.last.keys_through:
            part.delivered[row_id] = (xact_id, key)
        elif row_id in part.marked:
            part.back[row_id] = key

    def deleted(
        self, watermarks: Mapping[str, int], moved: Collection[str]
    ) -> Iterator[dict[str, Any]]:
        """Each row deleted since the last run, as last read; then the new counts in state.

        `watermarks`: each object's watermark after this run's read; `moved`: the objects
        whose watermark this run moved.
        """
        try:
            yield from self._deleted(watermarks, moved)
        except DetectionRefusedError as exc:
            self.reader.logger.warning(
                "%s: delete detection skipped this run: %s. Rows deleted since the last run "
                "are found by a later run that Braintrust answers",
                self.reader.name,
                exc,
            )

    def _deleted(
        self, watermarks: Mapping[str, int], moved: Collection[str]
    ) -> Iterator[dict[str, Any]]:
        parts = [part for part in self._objects.values() if part.object_id in watermarks]
        counted = [part for part in parts if part.last is not None]
        now_old = self._counts_by_bound(counted)
        counted = [part for part in counted if part.object_id in now_old]
        # Every row first written up to every watermark was read: the bound may move there.
        # One whose watermark stayed (an idle object, on a server without freshness) read
        # no row up to where the others' reads went, so it does not hold the bound down.
        read_through = [watermarks[o] for o in moved if watermarks.get(o)] or [
            watermark for watermark in watermarks.values() if watermark
        ]
        bound = key_bound(min(read_through)) if read_through else None
        moves = bound is not None and (
            any(part.last is None for part in parts) or any(p.delivered for p in counted)
        )
        now_new: dict[str, tuple[Tally, int]] = {}
        if moves and bound is not None:
            now_new = self._counts({part.object_id for part in parts}, KeyRange(None, bound))
        for part in counted:
            assert part.last is not None  # noqa: S101 - counted ones have one
            tally_now, _ = now_old[part.object_id]
            try:
                part.found = self._old_deletes(part, part.last, tally_now.rows)
                if bound is not None and part.object_id in now_new:
                    live_above = now_new[part.object_id][0].rows - tally_now.rows
                    part.found |= self._new_deletes(part, bound, live_above)
            except (AccessDeniedError, QueryRefusedError) as exc:
                raise DetectionRefusedError(str(exc)) from exc
            # A row this run read live was written again (maybe under a new key): not gone.
            part.found -= part.read
            yield from self._content(part, part.found)
        for part in parts:
            last = part.last or Count(Tally(0), "", 0, self.created_since)
            if bound is not None and part.object_id in now_new:
                tally, at = now_new[part.object_id]
                kept = last.after(tally, bound, at, part.found, part.back)
            elif part.last is not None and part.object_id in now_old:
                tally, at = now_old[part.object_id]
                kept = last.after(tally, last.keys_through, at, part.found, part.back)
            else:
                continue
            part.state[CHECK_KEY] = kept.to_state()

    def _counts_by_bound(self, parts: list[_Object]) -> dict[str, tuple[Tally, int]]:
        """Each object's rows now up to its last bound, with the version the count holds at."""
        by_bound: dict[str, set[str]] = {}
        for part in parts:
            assert part.last is not None  # noqa: S101 - only counted ones come here
            by_bound.setdefault(part.last.keys_through, set()).add(part.object_id)
        counts: dict[str, tuple[Tally, int]] = {}
        for bound, object_ids in sorted(by_bound.items()):
            counts.update(self._counts(object_ids, KeyRange(None, bound)))
        return counts

    def _counts(self, object_ids: set[str], keys: KeyRange) -> dict[str, tuple[Tally, int]]:
        """Live rows of each object in `keys` now, with the version the count holds at.

        An object a fresh listing no longer shows is left out: it was deleted during the
        run (the next run marks it).
        """
        pending = sorted(object_ids)
        counts: dict[str, tuple[Tally, int]] = {}
        while pending:
            group, pending = pending[: self._group_size], pending[self._group_size :]
            query = CountQuery(self.source, tuple(group), keys, self.created_since)
            try:
                tallies, version = self._count_answer(query)
            except GroupTooBigError:
                if len(group) == 1:
                    raise
                self._group_size = max(1, len(group) // 2)
                pending = group + pending
                continue
            except (AccessDeniedError, QueryRefusedError) as exc:
                gone = set(group) - self.reader.still_listed(group)
                if not gone:
                    if isinstance(exc, QueryRefusedError):
                        raise DetectionRefusedError(str(exc)) from exc
                    raise
                self.reader.say_gone(gone, _NOT_LOOKED_FOR)
                pending = [object_id for object_id in group if object_id not in gone] + pending
                continue
            counts.update({o: (tallies.get(o, Tally(0)), version) for o in group})
        return counts

    def _count_answer(self, query: CountQuery) -> tuple[dict[str, Tally], int]:
        """The count's tallies by object, and the version it holds at (its freshness)."""
        started = time.time()
        pages = list(self.reader.query_pages(query))
        freshness = pages[0].last_processed_xact_id if pages else None
        tallies: dict[str, Tally] = {}
        for page in pages:
            for row in page.rows:
                object_id, rows = row.get("object_id"), row.get("row_count")
                first, last = row.get("first_key"), row.get("last_key")
                if (
                    not isinstance(object_id, str)
                    or not isinstance(rows, int)
                    or object_id in tallies
                    or not all(key is None or _is_key(key) for key in (first, last))
                ):
                    msg = (
                        f"{self.reader.name}: Braintrust answered {query.describe()} with "
                        f"{row!r}, not one row per object with its row count and keys"
                    )
                    raise BraintrustError(msg)
                tallies[object_id] = Tally(rows, first, last)
        # Without a freshness: the second before the count, by this clock.
        return tallies, freshness if freshness is not None else xact_at(started - 1)

    def _old_deletes(self, part: _Object, last: Count, rows_now: int) -> set[str]:
        """Ids of rows up to the last bound live at its count and not now.

        Rows marked earlier and written again since are live now but were not then: they
        are taken off the counts of now, or they would hide as many deletes.
        """
        back = sorted(part.back.values())
        if rows_now - len(back) >= last.tally.rows:
            return set()
        if not rows_now and part.object_id not in self.reader.still_listed([part.object_id]):
            # A count leaves a deleted object out: 0 rows.
            self.reader.say_gone({part.object_id}, _NOT_LOOKED_FOR)
            return set()
        keys = last.tally.keys(KeyRange(part.lowest_key, last.keys_through))
        try:
            return self._locate(
                part.object_id, keys, last.counted_at, (last.tally.rows, rows_now), back
            )
        except (AccessDeniedError, QueryRefusedError):
            if part.object_id in self.reader.still_listed([part.object_id]):
                raise
            self.reader.say_gone({part.object_id}, _NOT_LOOKED_FOR)
            return set()

    def _locate(
        self,
        object_id: str,
        keys: KeyRange,
        version: int,
        counts: tuple[int, int],
        back: list[str],
    ) -> set[str]:
        """The ids in `keys` live at `version` and not now; `counts`: rows then and now.

        `back`: keys of rows written again since they were marked (live now, not then).
        Halves the range, counting the lower half at both versions (its keys at the old
        one tighten it), until a range holds at most a page of rows.
        """
        then, now = counts
        inside = [key for key in back if keys.holds(key)]
        now -= len(back) - len(inside)  # counted with `now`, but outside this range
        back = inside
        if now - len(back) >= then:
            return set()  # a row back under an old key unmarked may hide a delete: none
        low = _key_number(keys.above) if keys.above is not None else 0
        high = _key_number(keys.through)
        if then <= MAX_PAGE_SIZE or not self._pinned_counts or high - low < 2:  # noqa: PLR2004
            # Rows at a version never change, so that read stops at its count; now, a row
            # may come back meanwhile, so that one reads to the end.
            return self._ids(object_id, keys, version, then) - self._ids(object_id, keys)
        middle = _key((low + high) // 2)
        lower, upper = KeyRange(keys.above, middle), KeyRange(middle, keys.through)
        try:
            lower_then = self._single_count(object_id, lower, version)
        except QueryRefusedError as exc:
            self._pinned_counts = False
            self.reader.logger.warning(
                "%s: Braintrust refused a count at an older version (%s); finding deleted "
                "rows by reading ids instead, a request per 1000 rows of each object that "
                "lost rows",
                self.reader.name,
                exc,
            )
            return self._locate(object_id, keys, version, counts, back)
        if not lower_then.rows:
            # All of them above: their own count and keys there skip the empty stretch
            # (keys hold seconds, so a gap of hours would take dozens of halvings).
            upper_then = self._single_count(object_id, upper, version)
            if not upper_then.rows:
                return set()  # none then: nothing to have been deleted
            tight = upper_then.keys(upper)
            return self._locate(object_id, tight, version, (upper_then.rows, now), back)
        lower_now = self._single_count(object_id, lower, None).rows
        return self._locate(
            object_id,
            lower_then.keys(lower),
            version,
            (lower_then.rows, lower_now),
            [key for key in back if lower.holds(key)],
        ) | self._locate(
            object_id,
            upper,
            version,
            (then - lower_then.rows, now - lower_now),
            [key for key in back if upper.holds(key)],
        )

    def _single_count(self, object_id: str, keys: KeyRange, version: int | None) -> Tally:
        query = CountQuery(self.source, (object_id,), keys, self.created_since, version)
        tallies, _ = self._count_answer(query)
        return tallies.get(object_id, Tally(0))

    def _ids(
        self,
        object_id: str,
        keys: KeyRange,
        version: int | None = None,
        expected: int | None = None,
    ) -> set[str]:
        """The ids in `keys` at `version`; `expected`: stop after that many.

        Without a version (now), `start_date` does not apply: a row rewritten with an older
        `created` is still there.
        """
        query = KeyScanQuery(
            self.source,
            object_id,
            keys,
            columns=_ID_COLUMNS,
            created_since=None if version is None else self.created_since,
            version=version,
            expected=expected,
        )
        return {str(row.get("id")) for page in self.reader.query_pages(query) for row in page.rows}

    def _new_deletes(self, part: _Object, bound: str, live_above: int) -> set[str]:
        """Rows this run delivered above the last bound that are gone now."""
        assert part.last is not None  # noqa: S101 - only counted ones come here
        if bound <= part.last.keys_through:
            return set()  # the bound went down (a slower object): nothing read above it
        delivered = {row_id: place for row_id, place in part.delivered.items() if place[1] <= bound}
        if live_above >= len(delivered):
            return set()
        keys = KeyRange(part.last.keys_through, bound)
        return set(delivered) - self._ids(part.object_id, keys)

    def _content(self, part: _Object, found: set[str]) -> Iterator[dict[str, Any]]:
        """The deleted rows as last read: at the last count's version, or as read this run."""
        if not found:
            return
        assert part.last is not None  # noqa: S101 - only counted ones come here
        by_version: dict[int, list[str]] = {}
        for row_id in sorted(found):
            version = part.delivered[row_id][0] if row_id in part.delivered else None
            by_version.setdefault(version or part.last.counted_at, []).append(row_id)
        read: set[str] = set()
        for version, row_ids in sorted(by_version.items()):
            for start in range(0, len(row_ids), MAX_IDS_PER_LIST):
                chunk = tuple(row_ids[start : start + MAX_IDS_PER_LIST])
                query = KeyScanQuery(
                    self.source,
                    part.object_id,
                    KeyRange(part.lowest_key, _key(10**_KEY_DIGITS - 1)),
                    ids=chunk,
                    created_since=self.created_since,
                    version=version,
                    expected=len(chunk),
                )
                for page in self.reader.query_pages(query):
                    for row in page.rows:
                        if str(row.get("id")) in chunk and row.get(
                            OBJECT_ID_FIELD[self.source]
                        ) in (part.object_id, None):
                            read.add(str(row.get("id")))
                            yield row
        if unread := found - read:
            self.reader.logger.warning(
                "%s %s: %d deleted rows could not be read at the version they were last "
                "seen, so are not marked: %s",
                self.reader.name,
                part.object_id,
                len(unread),
                ", ".join(sorted(unread)[:10]),
            )


def _lowest_key(created: str | None) -> str | None:
    """A key below every row of an object made at `created` (None: unknown).

    A day early: keys are the server's clock, `created` the object's.
    """
    try:
        made = parse_timestamp(created).timestamp() if created else None
    except ValueError:
        return None
    return None if made is None else key_bound(xact_at(made - 86_400))
