"""Every query the tap builds, exactly, and proof that no value can change its meaning."""

from __future__ import annotations

from datetime import datetime, timezone
from typing import Any

import pytest

from tap_braintrust.queries import ObjectBound, RowsQuery
from tests.emulator.btql import And, Compare, Ident, Literal, matches, parse_query

PROJECT_ID = "0b9a3f52-6f7e-4a55-9f0b-3c2a1d4e5f60"


def _gt_xact(value: str) -> dict[str, Any]:
    return {
        "op": "gt",
        "left": {"op": "ident", "name": ["_xact_id"]},
        "right": {"op": "literal", "value": value},
    }


def _body(source: str, object_id: str, condition: dict[str, Any], **query: Any) -> dict[str, Any]:
    return {
        "query": {
            "select": [{"op": "star"}],
            "from": {
                "op": "function",
                "name": {"op": "ident", "name": [source]},
                "args": [{"op": "literal", "value": object_id}],
            },
            "filter": condition,
            "sort": [{"expr": {"op": "ident", "name": ["_xact_id"]}, "dir": "asc"}],
            "limit": query.get("limit", 1000),
            "cursor": query.get("cursor"),
        },
        "fmt": "json",
        "brainstore_realtime": True,
    }


def _query(source: str, object_id: str, **bound: Any) -> RowsQuery:
    return RowsQuery(source, (ObjectBound(object_id, **bound),))  # type: ignore[arg-type]


def test_a_first_run_reads_every_row_with_a_range_filter_on_xact_id() -> None:
    query = _query("project_logs", PROJECT_ID)
    assert query.body(None) == _body("project_logs", PROJECT_ID, _gt_xact("0"))
    assert query.describe() == (
        f'project_logs("{PROJECT_ID}") WHERE _xact_id > 0 ORDER BY _xact_id ASC'
    )


def test_a_later_page_carries_the_cursor_and_the_page_size() -> None:
    query = _query("experiment", "e-1", after_xact_id=1_000_192_000_000_000_001)
    assert query.body("opaque/cursor==", 7) == _body(
        "experiment",
        "e-1",
        _gt_xact("1000192000000000001"),
        limit=7,
        cursor="opaque/cursor==",
    )


def test_start_date_is_normalised_and_joined_with_and() -> None:
    query = _query("dataset", "d-1", after_xact_id=5, created_since="2026-01-31")
    since = {
        "op": "ge",
        "left": {"op": "ident", "name": ["created"]},
        "right": {"op": "literal", "value": "2026-01-31T00:00:00.000000Z"},
    }
    assert query.body(None) == _body(
        "dataset", "d-1", {"op": "and", "left": _gt_xact("5"), "right": since}
    )
    assert query.describe().endswith(
        'WHERE _xact_id > 5 AND created >= "2026-01-31T00:00:00.000000Z" ORDER BY _xact_id ASC'
    )


def test_objects_that_start_alike_share_one_condition() -> None:
    ids = [f"e-{n}" for n in range(5)]
    query = RowsQuery("experiment", tuple(ObjectBound(i, after_xact_id=9) for i in ids))
    body = query.body(None)
    assert body["query"]["from"]["args"] == [{"op": "literal", "value": i} for i in ids]
    assert body["query"]["filter"] == _gt_xact("9")
    assert query.describe() == (
        'experiment("e-0", "e-1", "e-2", and 2 more) WHERE _xact_id > 9 ORDER BY _xact_id ASC'
    )


def test_each_object_is_read_from_its_own_start_in_one_query() -> None:
    # Two objects caught up to 100, one to 300, one new since start_date: the server's
    # reading (the emulator's) keeps exactly each object's own rows.
    bounds = (
        ObjectBound("a", after_xact_id=100),
        ObjectBound("b", after_xact_id=300),
        ObjectBound("c", after_xact_id=100),
        ObjectBound("d", created_since="2026-02-01"),
    )
    query = RowsQuery("experiment", bounds)
    parsed = parse_query(query.body(None)["query"])
    assert parsed.object_ids == ("a", "b", "c", "d")
    assert isinstance(parsed.filter, And)
    assert parsed.filter.left == Compare("gt", Ident(("_xact_id",)), Literal("0"))
    now = datetime(2026, 3, 1, tzinfo=timezone.utc)
    kept = {
        (object_id, xact_id, created)
        for object_id in "abcde"
        for xact_id in (50, 150, 350)
        for created in ("2026-01-15T00:00:00Z", "2026-02-15T00:00:00Z")
        if matches(
            parsed.filter,
            {"experiment_id": object_id, "_xact_id": str(xact_id), "created": created},
            now=now,
        )
    }
    expected = {
        (object_id, xact_id, created)
        for object_id, floor in (("a", 100), ("b", 300), ("c", 100))
        for xact_id in (50, 150, 350)
        for created in ("2026-01-15T00:00:00Z", "2026-02-15T00:00:00Z")
        if xact_id > floor
    } | {("d", xact_id, "2026-02-15T00:00:00Z") for xact_id in (50, 150, 350)}
    assert kept == expected
    assert query.describe() == (
        'experiment("a", "b", "c", and 1 more) WHERE (2 objects: _xact_id > 100) OR '
        "(1 object: _xact_id > 300) OR "
        '(1 object: _xact_id > 0 AND created >= "2026-02-01T00:00:00.000000Z") '
        "ORDER BY _xact_id ASC"
    )


@pytest.mark.parametrize(
    "object_id",
    [
        "x') OR 1=1 --",
        'O\'Brien "evals" ✓',
        "back\\slash' | filter: true",
        "id'); DROP TABLE logs; --",
        "\u202eevil\u0000",
    ],
)
def test_no_id_changes_the_querys_meaning(object_id: str) -> None:
    body = _query("project_logs", object_id, after_xact_id=9, created_since="2026-01-01").body(None)
    # The server's reading of the query (the emulator's parser): the id is one literal
    # argument and the filter is exactly the two bounds the tap meant.
    parsed = parse_query(body["query"])
    assert parsed.source == "project_logs"
    assert parsed.object_ids == (object_id,)
    assert parsed.filter == And(
        Compare("gt", Ident(("_xact_id",)), Literal("9")),
        Compare("ge", Ident(("created",)), Literal("2026-01-01T00:00:00.000000Z")),
    )


@pytest.mark.parametrize(
    ("arguments", "problem"),
    [
        ({"source": "project_prompts"}, "unknown row source"),
        ({"object_id": ""}, "non-empty object ids"),
        ({"object_id": "  "}, "non-empty object ids"),
        ({"after_xact_id": -1}, "64-bit unsigned integer"),
        ({"after_xact_id": 2**64}, "64-bit unsigned integer"),
        ({"created_since": "yesterday"}, "not an ISO-8601 date-time"),
        ({"created_since": "2026-01-01' OR '1'='1"}, "not an ISO-8601 date-time"),
        ({"limit": 0}, "limit must be 1 to 1000"),
        ({"limit": 1001}, "limit must be 1 to 1000"),
        ({"twice": True}, "distinct object ids"),
    ],
)
def test_values_that_cannot_make_a_meaningful_query_are_refused(
    arguments: dict[str, Any], problem: str
) -> None:
    source = arguments.pop("source", "project_logs")
    limit = arguments.pop("limit", 1000)
    twice = arguments.pop("twice", False)

    def build() -> None:
        bound = ObjectBound(**{"object_id": PROJECT_ID, **arguments})
        RowsQuery(source, (bound, bound) if twice else (bound,)).body(None, limit)

    with pytest.raises(ValueError, match=problem):
        build()
