"""Every query the tap builds, exactly, and proof that no value can change its meaning."""

from __future__ import annotations

import time
from datetime import datetime, timezone
from typing import Any

import pytest

from tap_braintrust.incremental import xact_at
from tap_braintrust.queries import (
    ChangePosition,
    ObjectBound,
    ReportQuery,
    RowsQuery,
    SummaryQuery,
    TraceSpansQuery,
)
from tests.emulator import dialect
from tests.emulator.btql import And, Compare, Ident, Literal, matches, parse_query

PROJECT_ID = "0b9a3f52-6f7e-4a55-9f0b-3c2a1d4e5f60"
X = 1_000_192_000_000_000_001
"""An `_xact_id` of the real kind: 19 digits."""


def _compare(op: str, field: str, value: str) -> dict[str, Any]:
    return {
        "op": op,
        "left": {"op": "ident", "name": [field]},
        "right": {"op": "literal", "value": value},
    }


def _sort(*fields: str) -> list[dict[str, Any]]:
    return [{"expr": {"op": "ident", "name": [field]}, "dir": "asc"} for field in fields]


def _body(source: str, object_id: str, condition: dict[str, Any] | None, **query: Any) -> Any:
    ast: dict[str, Any] = {
        "select": [{"op": "star"}],
        "from": {
            "op": "function",
            "name": {"op": "ident", "name": [source]},
            "args": [{"op": "literal", "value": object_id}],
        },
    }
    if condition is not None:
        ast["filter"] = condition
    ast["limit"] = query.get("limit", 1000)
    ast["sort"] = _sort("_xact_id", "_pagination_key")
    return {"query": ast, "fmt": "json", "brainstore_realtime": True}


def _query(source: str, object_id: str, **bound: Any) -> RowsQuery:
    return RowsQuery(source, (ObjectBound(object_id, **bound),))  # type: ignore[arg-type]


class _Page:
    def __init__(
        self, rows: list[dict[str, Any]], cursor: str | None = None, freshness: int | None = None
    ) -> None:
        self.rows = rows
        self.cursor = cursor
        self.last_processed_xact_id = freshness


def test_a_first_run_reads_every_row_with_no_filter_to_spare() -> None:
    # `_xact_id > '0'` filters nothing and no client sends it: a first read goes without.
    query = _query("project_logs", PROJECT_ID)
    assert query.body(None) == _body("project_logs", PROJECT_ID, None)
    assert query.describe() == (f'project_logs("{PROJECT_ID}") ORDER BY _xact_id, _pagination_key')


def test_a_later_page_starts_after_the_last_rows_keys() -> None:
    query = _query("experiment", "e-1", after_xact_id=X - 5)
    position = ChangePosition(X, "p00000000000000000042", X + 9)
    assert query.body(position, 7) == _body(
        "experiment",
        "e-1",
        {
            "op": "and",
            "children": [
                _compare("gt", "_xact_id", str(X - 5)),
                {
                    "op": "and",
                    "children": [
                        _compare("ge", "_xact_id", str(X)),
                        _compare("le", "_xact_id", str(X + 9)),
                        {
                            "op": "or",
                            "children": [
                                _compare("gt", "_xact_id", str(X)),
                                _compare("gt", "_pagination_key", "p00000000000000000042"),
                            ],
                        },
                    ],
                },
            ],
        },
        limit=7,
    )


def test_the_keyset_keeps_exactly_the_rows_after_the_position() -> None:
    position = ChangePosition(X, "p00000000000000000042", X + 9)
    parsed = parse_query(_query("dataset", "d-1").body(position)["query"])
    now = datetime(2026, 3, 1, tzinfo=timezone.utc)
    rows = [
        (xact_id, f"p{key:020d}")
        for xact_id in (X - 1, X, X + 1, X + 9, X + 10)
        for key in (41, 42, 43, 9)
    ]
    kept = [
        row
        for row in rows
        if matches(parsed.filter, {"_xact_id": str(row[0]), "_pagination_key": row[1]}, now=now)
    ]
    # After (X, P), and no further than the transaction the read ends at.
    assert kept == [row for row in rows if (X, "p00000000000000000042") < row <= (X + 9, "p~")]


def test_a_read_ends_at_the_later_of_its_start_and_its_first_pages_freshness() -> None:
    query = _query("project_logs", PROJECT_ID)
    row = {"id": "r", "_xact_id": str(X), "_pagination_key": "p00000000000000000001"}

    ahead = xact_at(time.time() + 3600)  # a server whose clock is an hour ahead of ours
    first = query.next_after(None, _Page([row], freshness=ahead))
    assert first == ChangePosition(X, "p00000000000000000001", ahead)
    # Later pages do not move the end; it is never before the read began, by our clock.
    assert query.next_after(first, _Page([row], freshness=ahead + 99)) == first
    for freshness in (None, X):
        assert query.next_after(None, _Page([row], freshness=freshness)) == ChangePosition(
            X, "p00000000000000000001", query.ends_by
        )


def test_start_date_is_normalised_and_joined_with_and() -> None:
    query = _query("dataset", "d-1", after_xact_id=X, created_since="2026-01-31")
    since = _compare("ge", "created", "2026-01-31T00:00:00.000000Z")
    assert query.body(None) == _body(
        "dataset",
        "d-1",
        {"op": "and", "children": [_compare("gt", "_xact_id", str(X)), since]},
    )
    assert query.describe().endswith(
        f'WHERE _xact_id > {X} AND created >= "2026-01-31T00:00:00.000000Z" '
        "ORDER BY _xact_id, _pagination_key"
    )


def test_the_users_filter_is_a_btql_child_of_the_taps_and_as_bt_sends_it() -> None:
    query = RowsQuery(
        "project_logs", (ObjectBound("p", after_xact_id=X),), user_filter="a = 1 OR b = 2"
    )
    assert query.body(None)["query"]["filter"] == {
        "op": "and",
        "children": [_compare("gt", "_xact_id", str(X)), {"btql": "a = 1 OR b = 2"}],
    }
    # The emulator's reading: the text stays one operand, so it can only narrow the range.
    parsed = parse_query(query.body(None)["query"])
    assert isinstance(parsed.filter, And)
    assert parsed.filter.left == Compare("gt", Ident(("_xact_id",)), Literal(str(X)))


def test_objects_that_start_alike_share_one_query_and_no_others_do() -> None:
    ids = [f"e-{n}" for n in range(5)]
    query = RowsQuery("experiment", tuple(ObjectBound(i, after_xact_id=X) for i in ids))
    body = query.body(None)
    assert body["query"]["from"]["args"] == [{"op": "literal", "value": i} for i in ids]
    assert body["query"]["filter"] == _compare("gt", "_xact_id", str(X))
    assert query.describe() == (
        f'experiment("e-0", "e-1", "e-2", and 2 more) WHERE _xact_id > {X} '
        "ORDER BY _xact_id, _pagination_key"
    )
    with pytest.raises(ValueError, match="start from the same place"):
        RowsQuery("experiment", (ObjectBound("a", X), ObjectBound("b", X + 1)))


def test_whole_traces_go_by_one_in_list_of_at_most_100_roots() -> None:
    roots = tuple(f"r{n}" for n in range(100))
    query = TraceSpansQuery("project_logs", ("p1", "p2"), roots)
    ast = query.body("p00000000000000000007")["query"]
    assert ast["filter"] == {
        "op": "and",
        "children": [
            {
                "op": "in",
                "left": {"op": "ident", "name": ["root_span_id"]},
                "right": {"op": "literal", "value": list(roots)},
            },
            _compare("gt", "_pagination_key", "p00000000000000000007"),
        ],
    }
    assert ast["sort"] == _sort("_pagination_key")
    assert "cursor" not in ast
    with pytest.raises(ValueError, match="1 to 100 ids"):
        TraceSpansQuery("project_logs", ("p1",), (*roots, "one more"))


def test_summaries_page_by_the_cursor_unsorted() -> None:
    query = SummaryQuery("experiment", ("e1",), ("r1", "r2"), user_filter="scores.x < 0.5")
    ast = query.body("token")["query"]
    assert ast["from"]["shape"] == "summary"
    assert ast["cursor"] == "token"
    assert ast["preview_length"] == -1
    assert "sort" not in ast
    assert query.next_after("token", _Page([{"root_span_id": "r1"}], "next")) == "next"


def test_summaries_can_page_without_a_cursor_by_the_traces_not_yet_answered() -> None:
    query = SummaryQuery("experiment", ("e1",), ("r1", "r2", "r3"), by_remaining_roots=True)
    assert "cursor" not in query.body(None)["query"]
    after = query.next_after(None, _Page([{"root_span_id": "r2", "id": "x"}]))
    assert after == frozenset({"r2"})
    assert query.body(after)["query"]["filter"]["right"]["value"] == ["r1", "r3"]
    # An empty answer ends it (the rest have no matching span); so does the last root.
    assert query.next_after(after, _Page([])) is None
    assert query.next_after(after, _Page([{"root_span_id": "r1"}, {"id": "r3"}])) is None


def test_a_reports_offset_goes_on_a_line_of_its_own() -> None:
    sql = "SELECT id FROM project_logs('p') -- the newest first"
    body = ReportQuery(sql).body("c'ur\\sor")
    assert body["query"] == f"{sql}\nOFFSET 'c\\'ur\\\\sor'"
    parsed = parse_query(body["query"])
    assert parsed.cursor == "c'ur\\sor"  # the comment did not swallow it


def test_every_query_the_tap_builds_is_in_the_evidenced_dialect() -> None:
    bound = ObjectBound("p", after_xact_id=X, created_since="2026-01-01")
    position = ChangePosition(X, "p00000000000000000001", X + 9)
    roots = ("r1", "r2")
    bodies = [
        RowsQuery("project_logs", (ObjectBound("p"),)).body(None),
        RowsQuery("project_logs", (bound,), "tags INCLUDES 'x'", (("id",),)).body(position),
        TraceSpansQuery("experiment", ("e",), roots, "error IS NOT NULL").body("p1"),
        TraceSpansQuery("experiment", ("e",)).body(None),
        SummaryQuery("dataset", ("d",), roots, "true").body(None),
        SummaryQuery("dataset", ("d",), None, preview_length=1_000_000).body("c"),
        SummaryQuery("dataset", ("d",), roots, by_remaining_roots=True).body(frozenset({"r1"})),
        ReportQuery("SELECT 1 AS one FROM dataset('d')", tz_offset=60).body("c"),
    ]
    for body in bodies:
        dialect.check(body)
    assert {"_pagination_key > string (keyset)", "btql text as a child of and"} <= {
        construct for body in bodies for construct in dialect.constructs(body)
    }


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
    body = _query("project_logs", object_id, after_xact_id=X, created_since="2026-01-01").body(None)
    # The server's reading of the query (the emulator's parser): the id is one literal
    # argument and the filter is exactly the two bounds the tap meant.
    parsed = parse_query(body["query"])
    assert parsed.source == "project_logs"
    assert parsed.object_ids == (object_id,)
    assert parsed.filter == And(
        Compare("gt", Ident(("_xact_id",)), Literal(str(X))),
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
