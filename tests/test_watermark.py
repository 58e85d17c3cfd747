"""The `_xact_id` watermarks: where a read in `_xact_id` order may safely resume, per object."""

from __future__ import annotations

from typing import Any

import pytest

from tap_braintrust.incremental import OutOfOrderError, ReadProgress, lookback, parse_xact_id

SECOND = 1 << 16
BASE = (0x0DE1 << 48) | (1_795_000_000 << 16)


def _key(number: int) -> str:
    return f"p{number:020d}"


def _read(progress: ReadProgress, xact_ids: list[int], start: int = 0) -> list[int]:
    """An object's watermark after each row is accounted for (i.e. while that row is emitted).

    Each row gets a `_pagination_key` above every earlier one, as rows of one transaction do.
    """
    values = []
    for number, xact_id in enumerate(xact_ids):
        progress.before_row(xact_id, _key(number))
        values.append(progress.watermark(start))
    return values


def test_it_moves_only_past_transactions_read_in_full() -> None:
    progress = ReadProgress()
    # Three rows of one write, then two of the next: the first write is done only when a
    # row of the second arrives, and the second only when the read ends.
    assert _read(progress, [BASE + 1, BASE + 1, BASE + 1, BASE + 2, BASE + 2]) == [
        0,
        0,
        0,
        BASE + 1,
        BASE + 1,
    ]
    progress.finish()
    assert progress.watermark(0) == BASE + 2


def test_it_never_goes_below_where_it_started() -> None:
    progress = ReadProgress()
    # Rows re-read from the lookback window below the old watermark.
    assert _read(progress, [BASE + 10, BASE + 20, BASE + 60], start=BASE + 50) == [BASE + 50] * 3
    progress.finish()
    assert progress.watermark(BASE + 50) == BASE + 60


def test_one_read_moves_each_object_from_its_own_start() -> None:
    # One query over three objects: one caught up to BASE + 50, one new, one far ahead.
    progress = ReadProgress()
    _read(progress, [BASE + 10, BASE + 60, BASE + 70])
    assert [progress.watermark(start) for start in (BASE + 50, 0, BASE + 90)] == [
        BASE + 60,
        BASE + 60,
        BASE + 90,
    ]
    progress.finish()
    assert [progress.watermark(start) for start in (BASE + 50, 0, BASE + 90)] == [
        BASE + 70,
        BASE + 70,
        BASE + 90,
    ]


def test_an_empty_read_keeps_the_old_watermark() -> None:
    progress = ReadProgress()
    progress.finish()
    assert progress.watermark(BASE) == BASE


def test_the_servers_freshness_caps_it_while_reading_and_sets_it_at_the_end() -> None:
    progress = ReadProgress()
    progress.visible_through(BASE + 3)  # a write above BASE + 3 may still be invisible
    progress.visible_through(BASE + 9)  # later pages report more; the lowest counts
    assert _read(progress, [BASE + 2, BASE + 5, BASE + 7]) == [0, BASE + 2, BASE + 3]
    progress.finish()
    assert progress.watermark(0) == BASE + 3


def test_with_freshness_an_idle_object_moves_to_the_servers_horizon() -> None:
    progress = ReadProgress()
    progress.visible_through(BASE + 100 * SECOND)
    progress.finish()
    assert progress.watermark(BASE) == BASE + 100 * SECOND


def test_a_page_without_freshness_keeps_it_on_the_rows_read() -> None:
    # Page 1 reports nothing (a write at BASE + 20 may be invisible), page 2 reports more.
    progress = ReadProgress()
    progress.visible_through(None)
    _read(progress, [BASE + 10, BASE + 30])
    progress.visible_through(BASE + 40)
    progress.finish()
    assert progress.watermark(0) == BASE + 30


def test_a_resumed_part_goes_on_from_the_rows_read() -> None:
    # A read split after its row at (BASE + 30, p1): each part carries on from there.
    progress = ReadProgress()
    progress.visible_through(BASE + 90)
    _read(progress, [BASE + 10, BASE + 30])
    part = progress.resumed()
    assert part.position == progress.position == (BASE + 30, _key(1))
    part.before_row(BASE + 30, _key(7))  # the same transaction, a later row
    assert part.watermark(0) == BASE + 10
    part.finish()
    assert part.watermark(0) == BASE + 90
    assert progress.watermark(0) == BASE + 10  # the other part's is its own


def test_rows_out_of_order_are_refused() -> None:
    progress = ReadProgress()
    progress.before_row(BASE + 2, _key(5))
    with pytest.raises(OutOfOrderError, match=f"{BASE + 1}, {_key(9)}\\) came after"):
        progress.before_row(BASE + 1, _key(9))
    with pytest.raises(OutOfOrderError, match="came after"):
        progress.before_row(BASE + 2, _key(5))  # the same row again: a page repeated


def test_lookback_counts_seconds_of_writes() -> None:
    assert lookback(BASE + 5, 60) == BASE + 5 - 60 * SECOND
    assert lookback(BASE, 0) == BASE
    assert lookback(10, 60) == 0


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("1000192295213056001", 1000192295213056001),
        (1000192295213056001, 1000192295213056001),
        ("0", 0),
        (str(2**64 - 1), 2**64 - 1),
        (str(2**64), None),
        ("9" * 5000, None),
        ("-1", None),
        ("12abc", None),
        ("١٢٣", None),  # Arabic-Indic digits: isdigit() but not an _xact_id
        (True, None),
        (1.5, None),
        (None, None),
    ],
)
def test_parse_xact_id(value: Any, expected: int | None) -> None:
    assert parse_xact_id(value) == expected
