"""Summary rows, traces counted by `limit`, SQL aggregates, time buckets, implicit aliases.

Every expectation is computed by hand from small stores written here, not by the emulator.
"""

from __future__ import annotations

from typing import Any

import pytest

from tests.emulator import Emulator, running_emulator
from tests.emulator.btql import Bucket, Ident, parse_query, time_bucket
from tests.emulator.conftest import FIXED_NOW, Api, ast

LONG = "x" * 130
T1_CREATED = "2026-11-17T10:00:00.000Z"


def summary_store(emu: Emulator) -> str:
    """Three traces: t1 (root + llm + tool spans), t2 (a lone root), t3 (root deleted)."""
    pid = str(emu.store.add_project("p")["id"])
    span = {"root_span_id": "t1", "span_parents": ["t1"]}
    emu.store.insert_rows(
        "project_logs",
        pid,
        [
            {
                "id": "t1",
                "span_id": "t1",
                "created": T1_CREATED,
                "input": LONG,
                "output": {"answer": "yes"},
                "metadata": {"user_id": "u1"},
                "scores": {"accuracy": 1.0, "helpful": None},
                "metrics": {"start": 100, "end": 110},
                "span_attributes": {"name": "root", "type": "task"},
                "tags": ["a"],
            },
            {
                **span,
                "id": "t1c1",
                "span_id": "t1c1",
                "input": "child input",
                "scores": {"accuracy": 0.5},
                "metrics": {
                    "start": 101,
                    "end": 105,
                    "prompt_tokens": 10,
                    "completion_tokens": 5,
                    "tokens": 15,
                    "estimated_cost": 0.25,
                },
                "span_attributes": {"name": "chat", "type": "llm"},
            },
            {
                **span,
                "id": "t1c2",
                "span_id": "t1c2",
                "error": "boom",
                "scores": {"accuracy": 0.0, "tool_ok": 1},
                "metrics": {"start": 105, "end": 112, "prompt_tokens": 3, "estimated_cost": 0.5},
                "span_attributes": {"name": "search", "type": "tool"},
            },
        ],
    )
    emu.store.insert_rows(
        "project_logs",
        pid,
        [{"id": "t2", "span_id": "t2", "input": 42, "scores": {"accuracy": None}}],
    )
    emu.store.insert_rows(
        "project_logs",
        pid,
        [
            {"id": "t3", "span_id": "t3", "input": "gone"},
            {"id": "t3a", "span_id": "t3a", "root_span_id": "t3", "span_parents": ["t3"]},
            {"id": "t3b", "span_id": "t3b", "root_span_id": "t3", "span_parents": ["t3"]},
        ],
    )
    emu.store.delete_rows("project_logs", pid, ["t3"])
    return pid


def summary_sql(pid: str, tail: str = "", select: str = "*") -> str:
    return f"SELECT {select} FROM project_logs('{pid}', shape => 'summary') {tail}"  # noqa: S608


def by_id(rows: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    return {row["id"]: row for row in rows}


# Summary rows ----------------------------------------------------------------------------------


def test_summary_row_rolls_up_the_trace(api: Api, emu: Emulator) -> None:
    pid = summary_store(emu)
    annotated = emu.store.merge_rows("project_logs", pid, [{"id": "t1c1", "tags": ["late"]}])
    body = api.btql(summary_sql(pid))
    assert body.status_code == 200, body.text
    rows = by_id(body.json()["data"])
    assert set(rows) == {"t1", "t2", "t3a"}
    t1 = rows["t1"]
    root = next(r for r in emu.store.rows("project_logs", pid) if r["id"] == "t1")
    assert t1 == {
        "id": "t1",
        "_xact_id": annotated,  # the newest write among the trace's spans
        "_pagination_key": root["_pagination_key"],
        "created": T1_CREATED,
        "org_id": root["org_id"],
        "project_id": pid,
        "log_id": "g",
        "root_span_id": "t1",
        "span_attributes": {"name": "root", "type": "task"},
        "tags": ["a"],
        "input": "x" * 124,
        "output": '{"answer":"yes"}',
        "expected": None,
        "error": None,  # the root's, though a child failed
        "metadata": '{"user_id":"u1"}',
        "scores": {"accuracy": 0.5, "tool_ok": 1.0},  # (1 + 0.5 + 0) / 3; helpful only null
        "metrics": {
            "prompt_tokens": 13,
            "completion_tokens": 5,
            "total_tokens": 18,  # 15 (tokens) + 3 (prompt only)
            "estimated_cost": 0.75,
            "llm_calls": 1,
            "tool_calls": 1,
            "errors": 1,
            "start": 100,
            "end": 112,
            "duration": 12,
        },
        "span_type_info": {"cached": False, "has_error": True},
    }
    t2 = rows["t2"]
    assert t2["input"] == "42"
    assert t2["scores"] == {}
    assert t2["metrics"] == {"llm_calls": 0, "tool_calls": 0, "errors": 0}
    assert t2["span_type_info"] == {"cached": False, "has_error": False}
    assert "num_spans" not in t2
    schema = body.json()["schema"]["items"]["properties"]
    assert set(schema) == set(t1)
    assert schema["input"] == {"type": ["string", "null"]}


def test_cached_span_marks_the_trace(api: Api, emu: Emulator) -> None:
    pid = str(emu.store.add_project("p")["id"])
    emu.store.insert_rows(
        "project_logs",
        pid,
        [
            {"id": "r", "span_id": "r"},
            {"id": "c", "root_span_id": "r", "span_parents": ["r"], "metrics": {"cached": 1}},
        ],
    )
    (row,) = api.data(summary_sql(pid))
    assert row["span_type_info"] == {"cached": True, "has_error": False}


def test_deleted_root_falls_back_to_the_oldest_span(api: Api, emu: Emulator) -> None:
    pid = summary_store(emu)
    t3a, _ = (r for r in reversed(emu.store.rows("project_logs", pid)) if r["root_span_id"] == "t3")
    (row,) = api.data(summary_sql(pid, "WHERE id = 't3b'"))
    assert (row["id"], row["root_span_id"]) == ("t3a", "t3")
    assert (row["_pagination_key"], row["created"]) == (t3a["_pagination_key"], t3a["created"])
    assert row["input"] is None


def test_summary_filter_matches_any_span_of_the_trace(api: Api, emu: Emulator) -> None:
    pid = summary_store(emu)
    rows = api.data(summary_sql(pid, "WHERE span_attributes.type = 'tool'"))
    assert [row["id"] for row in rows] == ["t1"]
    assert rows[0]["metrics"]["llm_calls"] == 1  # computed over all spans, not the matching one
    text = f"from: project_logs('{pid}') summary | filter: scores.accuracy = 0"  # t1c2's
    assert [row["id"] for row in api.data(text)] == ["t1"]


def test_preview_length(api: Api, emu: Emulator) -> None:
    pid = summary_store(emu)
    summary = {**ast("project_logs", pid, filter={"btql": "id = 't1'"})}
    summary["from"]["shape"] = "summary"
    (full,) = api.data({**summary, "preview_length": -1})
    assert (full["input"], full["output"], full["metadata"]) == (
        LONG,
        {"answer": "yes"},
        {"user_id": "u1"},
    )
    (cut,) = api.data({**summary, "preview_length": 3})
    assert (cut["input"], cut["output"], cut["metadata"]) == ("xxx", '{"a', '{"u')
    text = f"from: project_logs('{pid}') summary | filter: id = 't2' | preview_length: 1"
    assert api.data(text)[0]["input"] == "4"
    minus_one = f"from: project_logs('{pid}') summary\nfilter: id = 't1'\npreview_length: -1"
    assert api.data(minus_one)[0]["input"] == LONG
    for bad in (0, -2, "5", 1.5, True):
        response = api.btql({**summary, "preview_length": bad})
        assert response.status_code == 400
        assert "preview_length" in response.json()["Message"]
    response = api.btql(f"from: project_logs('{pid}') summary | preview_length: 0")
    assert response.status_code == 400
    assert "preview_length must be -1" in response.json()["Message"]


def test_summary_pages_by_pagination_key_to_the_end() -> None:
    with running_emulator(strict=False, clock=lambda: FIXED_NOW, page_byte_budget=1) as emu:
        pid = summary_store(emu)
        api = Api(emu)
        try:
            descending = api.pages(
                lambda cursor: (
                    f"from: project_logs('{pid}') summary | limit: 10"
                    + (f" | cursor: '{cursor}'" if cursor else "")
                )
            )
            ascending = api.pages(
                lambda cursor: summary_sql(
                    pid,
                    "ORDER BY _pagination_key ASC LIMIT 2"
                    + (f" OFFSET '{cursor}'" if cursor else ""),
                )
            )
        finally:
            api.close()
    # one row per page: the byte budget cuts every page after its first row
    assert [[row["id"] for row in page["data"]] for page in descending] == [
        ["t3a"],
        ["t2"],
        ["t1"],
        [],
    ]
    assert [[row["id"] for row in page["data"]] for page in ascending] == [
        ["t1"],
        ["t2"],
        ["t3a"],
        [],
    ]


def test_summary_limit_counts_rows_and_other_sorts_have_no_cursor(api: Api, emu: Emulator) -> None:
    pid = summary_store(emu)
    first = api.btql(summary_sql(pid, "LIMIT 2")).json()
    assert [row["id"] for row in first["data"]] == ["t3a", "t2"]
    rest = api.btql(summary_sql(pid, f"LIMIT 2 OFFSET '{first['cursor']}'")).json()
    assert [row["id"] for row in rest["data"]] == ["t1"]
    by_id_desc = api.btql(summary_sql(pid, "ORDER BY id DESC LIMIT 2")).json()
    assert [row["id"] for row in by_id_desc["data"]] == ["t3a", "t2"]
    assert "cursor" not in by_id_desc
    response = api.btql(summary_sql(pid, f"ORDER BY id DESC OFFSET '{first['cursor']}'"))
    assert response.status_code == 400
    spans_cursor = api.btql(f"from: project_logs('{pid}') | limit: 1").json()["cursor"]
    assert api.btql(summary_sql(pid, f"OFFSET '{spans_cursor}'")).status_code == 400


def test_summary_select_list(api: Api, emu: Emulator) -> None:
    pid = summary_store(emu)
    select = "id, scores.accuracy, metrics.total_tokens AS tokens"
    body = api.btql(summary_sql(pid, "WHERE id = 't1c2'", select)).json()
    assert body["data"] == [{"id": "t1", "accuracy": 0.5, "tokens": 18}]
    assert set(body["schema"]["items"]["properties"]) == {"id", "accuracy", "tokens"}
    totals = "count(1) AS traces, sum(metrics.errors) AS errors, avg(scores.accuracy) AS acc"
    assert api.data(summary_sql(pid, select=totals)) == [{"traces": 3, "errors": 1, "acc": 0.5}]


def test_summary_of_experiment_and_dataset_rows(api: Api, emu: Emulator) -> None:
    project = emu.store.add_project("p")["id"]
    experiment = emu.store.add_experiment(project, "e")["id"]
    dataset = emu.store.add_dataset(project, "d")["id"]
    emu.store.insert_rows("experiment", experiment, [{"id": "e1", "scores": {"s": 0.25}}])
    emu.store.insert_rows("dataset", dataset, [{"id": "d1", "expected": "y"}])
    (exp_row,) = api.data(f"from: experiment('{experiment}') summary")
    assert (exp_row["experiment_id"], exp_row["scores"]) == (experiment, {"s": 0.25})
    assert "org_id" not in exp_row
    (ds_row,) = api.data(f"from: dataset('{dataset}') summary")
    assert ds_row["dataset_id"] == dataset
    assert ds_row["expected"] == "y"
    assert not {"scores", "metrics", "output", "span_type_info"} & set(ds_row)


# Traces: limit counts traces -------------------------------------------------------------------


def test_traces_limit_counts_traces_and_cursor_stays_exact(api: Api, emu: Emulator) -> None:
    pid = str(emu.store.add_project("p")["id"])
    # spans of three traces, interleaved by _pagination_key: a1 b1 a2 c1 b2
    emu.store.insert_rows(
        "project_logs",
        pid,
        [
            {"id": "a1", "span_id": "a"},
            {"id": "b1", "span_id": "b"},
            {"id": "a2", "root_span_id": "a", "span_parents": ["a"]},
            {"id": "c1", "span_id": "c"},
            {"id": "b2", "root_span_id": "b", "span_parents": ["b"]},
        ],
    )
    pages = api.pages(
        lambda cursor: (
            f"from: project_logs('{pid}') traces | sort: _pagination_key asc"
            f" | limit: 2" + (f" | cursor: '{cursor}'" if cursor else "")
        )
    )
    assert [[row["id"] for row in page["data"]] for page in pages] == [
        ["a1", "b1", "a2"],  # c1 would be a third trace
        ["c1", "b2"],
        [],
    ]
    one = api.data(f"from: project_logs('{pid}') traces | sort: id asc | limit: 1")
    assert [row["id"] for row in one] == ["a1", "a2"]  # no cursor sort: still one trace
    filtered = api.data(
        f"from: project_logs('{pid}') traces | filter: id = 'b2' | sort: _pagination_key asc"
    )
    assert [row["id"] for row in filtered] == ["b1", "b2"]


# SQL aggregates --------------------------------------------------------------------------------

AGG_ROWS = [
    # created                    model user   s     tokens
    ("r1", "2026-11-29T23:30:00.000Z", "a", "u1", 1.0, 10),
    ("r2", "2026-11-30T00:30:00.000Z", "a", "u2", 0.5, 20),
    ("r3", "2026-11-30T09:00:00.000Z", "b", "u1", None, 40),
    ("r4", "2026-12-01T07:59:00.000Z", "b", None, 0.0, None),
]


@pytest.fixture
def agg(emu: Emulator) -> str:
    pid = str(emu.store.add_project("p")["id"])
    emu.store.insert_rows(
        "project_logs",
        pid,
        [
            {
                "id": row_id,
                "created": created,
                "metadata": {"model": model, **({"user_id": user} if user else {})},
                "scores": {"s": score},
                "metrics": {} if tokens is None else {"tokens": tokens},
            }
            for row_id, created, model, user, score, tokens in AGG_ROWS
        ],
    )
    return pid


def agg_sql(pid: str, select: str, tail: str = "") -> str:
    return f"SELECT {select} FROM project_logs('{pid}') {tail}"  # noqa: S608


def test_aggregates_without_group_by_give_one_row(api: Api, agg: str) -> None:
    select = (
        "count(1) AS rows, count(*) AS star, count(scores.s) AS scored,"
        " count_distinct(metadata.model) AS models, count_distinct(metadata.user_id) AS users,"
        " sum(metrics.tokens) AS tokens, avg(metrics.tokens) AS mean_tokens,"
        " avg(scores.s) AS mean_s, min(created) AS first, max(scores.s) AS best,"
        " min(metadata.user_id) AS min_user, percentile(metrics.tokens, 0.5) AS p50,"
        " percentile(metrics.tokens, 0.25) AS p25, percentile(scores.s, 0.9) AS p90,"
        " percentile(metrics.tokens, 1) AS p100, sum(metrics.missing) AS none_sum,"
        " avg(metrics.missing) AS none_avg, min(metrics.missing) AS none_min,"
        " count(metrics.missing) AS none_count, any_value(metrics.missing) AS none_any"
    )
    body = api.btql(agg_sql(agg, select)).json()
    assert "cursor" not in body
    (row,) = body["data"]
    assert row == {
        "rows": 4,
        "star": 4,
        "scored": 3,
        "models": 2,
        "users": 2,
        "tokens": 70,
        "mean_tokens": pytest.approx(70 / 3),
        "mean_s": 0.5,
        "first": "2026-11-29T23:30:00.000Z",
        "best": 1.0,
        "min_user": "u1",
        "p50": 20,  # sorted 10 20 40: position 0.5 * 2 = 1
        "p25": 15,  # position 0.5: halfway from 10 to 20
        "p90": pytest.approx(0.9),  # sorted 0 0.5 1: position 1.8 → 0.5 + 0.8 * 0.5
        "p100": 40,
        "none_sum": None,
        "none_avg": None,
        "none_min": None,
        "none_count": 0,
        "none_any": None,
    }
    schema = body["schema"]["items"]["properties"]
    assert schema["rows"] == {"type": "integer"}
    assert schema["p50"] == {"type": ["number", "null"]}


def test_where_filters_before_grouping_and_empty_input(api: Api, agg: str) -> None:
    select = "count(1) AS n, sum(metrics.tokens) AS tokens"
    assert api.data(agg_sql(agg, select, "WHERE metadata.model = 'a'")) == [{"n": 2, "tokens": 30}]
    assert api.data(agg_sql(agg, select, "WHERE metadata.model = 'z'")) == [
        {"n": 0, "tokens": None}
    ]
    grouped = agg_sql(agg, f"metadata.model, {select}", "WHERE metadata.model = 'z' GROUP BY 1")
    assert api.data(grouped) == []


@pytest.mark.parametrize(
    "group",
    ["GROUP BY 1", "GROUP BY metadata.model", "GROUP BY model"],
)
def test_group_by_position_expression_or_alias(api: Api, agg: str, group: str) -> None:
    select = (
        "metadata.model, count(1) AS n, sum(metrics.tokens) AS tokens,"
        " avg(scores.s) AS s, any_value(metadata.model) AS same, max(created) AS last"
    )
    rows = api.data(agg_sql(agg, select, f"{group} ORDER BY 1"))
    assert rows == [
        {
            "model": "a",
            "n": 2,
            "tokens": 30,
            "s": 0.75,
            "same": "a",
            "last": "2026-11-30T00:30:00.000Z",
        },
        {
            "model": "b",
            "n": 2,
            "tokens": 40,
            "s": 0.0,
            "same": "b",
            "last": "2026-12-01T07:59:00.000Z",
        },
    ]


def test_order_by_alias_and_limit(api: Api, agg: str) -> None:
    select = "metadata.user_id, count(1) AS n"
    rows = api.data(agg_sql(agg, select, "GROUP BY user_id ORDER BY n DESC, user_id LIMIT 2"))
    assert rows == [{"user_id": "u1", "n": 2}, {"user_id": None, "n": 1}]  # NULL sorts first
    body = api.btql(agg_sql(agg, select, "GROUP BY 1 ORDER BY 2 DESC, 1 DESC LIMIT 1")).json()
    assert body["data"] == [{"user_id": "u1", "n": 2}]
    assert "cursor" not in body


def test_day_buckets_in_utc_and_with_tz_offset(api: Api, agg: str) -> None:
    query = agg_sql(agg, "day(created) AS day, count(1) AS n", "GROUP BY day ORDER BY day")
    assert api.data(query) == [
        {"day": "2026-11-29T00:00:00.000Z", "n": 1},
        {"day": "2026-11-30T00:00:00.000Z", "n": 2},
        {"day": "2026-12-01T00:00:00.000Z", "n": 1},
    ]
    # 480 minutes west: local days run 08:00Z to 08:00Z; r2 (00:30Z) is still Nov 29 there
    assert api.data(query, tz_offset=480) == [
        {"day": "2026-11-29T08:00:00.000Z", "n": 2},
        {"day": "2026-11-30T08:00:00.000Z", "n": 2},
    ]
    week = agg_sql(agg, "week(created) AS week, count(1) AS n", "GROUP BY 1 ORDER BY 1")
    assert api.data(week) == [
        {"week": "2026-11-23T00:00:00.000Z", "n": 1},  # Sunday Nov 29 is in Monday Nov 23's
        {"week": "2026-11-30T00:00:00.000Z", "n": 3},
    ]
    month = agg_sql(agg, "month(created) AS m, count(1) AS n", "GROUP BY 1 ORDER BY 1")
    assert api.data(month, tz_offset=480) == [{"m": "2026-11-01T08:00:00.000Z", "n": 4}]
    hours = agg_sql(agg, "hour(created) AS h", "WHERE id = 'r4' GROUP BY 1")
    assert api.data(hours) == [{"h": "2026-12-01T07:00:00.000Z"}]
    where = agg_sql(agg, "count(1) AS n", "WHERE day(created) = '2026-11-30T00:00:00.000Z'")
    assert api.data(where) == [{"n": 2}]
    spans = api.data(agg_sql(agg, "id, day(created) AS d", "WHERE id = 'r1'"))
    assert spans == [{"id": "r1", "d": "2026-11-29T00:00:00.000Z"}]


def test_time_bucket_function() -> None:
    assert time_bucket("day", "2026-12-01T07:59:00Z", 480) == "2026-11-30T08:00:00.000Z"
    assert time_bucket("day", "2026-12-01T08:00:00Z", 480) == "2026-12-01T08:00:00.000Z"
    assert time_bucket("day", "2026-12-01T07:59:00Z", -60) == "2026-11-30T23:00:00.000Z"
    assert time_bucket("hour", "2026-12-01T07:59:00Z", 330) == "2026-12-01T07:30:00.000Z"
    assert time_bucket("week", "2026-12-06T23:59:59Z") == "2026-11-30T00:00:00.000Z"  # Sunday
    assert time_bucket("day", 0) == "1970-01-01T00:00:00.000Z"  # unix seconds
    assert time_bucket("day", "not a time") is None
    assert time_bucket("day", None) is None
    bucket = {
        "op": "function",
        "name": {"op": "ident", "name": ["day"]},
        "args": [{"op": "ident", "name": ["created"]}],
    }
    query = parse_query(
        ast("dataset", "d", filter={"op": "eq", "left": bucket, "right": {"op": "literal"}})
    )
    assert query.filter is not None
    assert getattr(query.filter, "left", None) == Bucket("day", Ident(("created",)))


@pytest.mark.parametrize("tz_offset", ["480", 480.5, True, 1441, -1441, [1]])
def test_bad_tz_offset_is_400(api: Api, agg: str, tz_offset: Any) -> None:
    response = api.btql(agg_sql(agg, "count(1) AS n"), tz_offset=tz_offset)
    assert response.status_code == 400
    assert "tz_offset" in response.json()["Message"]


@pytest.mark.parametrize(
    ("select", "tail", "fragment"),
    [
        ("metadata.model, count(1) AS n", "", "metadata.model (in select item 'model') must"),
        (
            "metadata.model, metadata.user_id, count(1) AS n",
            "GROUP BY 1",
            "metadata.user_id (in select item 'user_id') must appear in GROUP BY",
        ),
        ("metadata.model, count(1) AS n", "GROUP BY 3", "GROUP BY position 3 is not in"),
        ("metadata.model, count(1) AS n", "GROUP BY n", "GROUP BY cannot name an aggregate"),
        ("*", "GROUP BY metadata.model", "GROUP BY needs a select list"),
        ("count(1) AS n", "WHERE count(1) > 1", "only allowed in the select list"),
        ("sum(count(1)) AS n", "", "only allowed in the select list"),
        ("count(1)", "", "a computed select item needs an alias"),
        ("percentile(metrics.tokens, 1.5) AS p", "", "a number from 0 to 1"),
        ("percentile(metrics.tokens) AS p", "", "expected ','"),
        ("sum() AS s", "", "sum() needs an argument"),
        ("median(metrics.tokens) AS m", "", "unknown function median()"),
        ("count(1) AS n", "OFFSET 'abc'", "an aggregate query has no cursor"),
        ("metadata.model, count(1) AS n", "GROUP BY 1 HAVING n > 1", "HAVING is not supported"),
        ("metadata.model, count(1) AS n", "GROUP BY 1 ORDER BY id", "ORDER BY id in an aggre"),
        ("metadata.model, count(1) AS n", "GROUP BY 1 ORDER BY 3", "ORDER BY position 3"),
        ("count(1) OVER (ORDER BY id) AS n", "", "window functions are not supported"),
    ],
)
def test_bad_aggregate_queries_are_400(
    api: Api, agg: str, select: str, tail: str, fragment: str
) -> None:
    response = api.btql(agg_sql(agg, select, tail))
    assert response.status_code == 400
    assert fragment in response.json()["Message"]


def test_aggregates_are_sql_only(api: Api, agg: str) -> None:
    response = api.btql(f"select: count(1) AS n | from: project_logs('{agg}')")
    assert response.status_code == 400
    assert "count() is only supported in SQL" in response.json()["Message"]
    response = api.btql(f"from: project_logs('{agg}') | dimensions: metadata.model")
    assert response.status_code == 400


def test_aggregate_query_parses_with_resolved_group_and_sort() -> None:
    query = parse_query(
        "SELECT metadata.model, day(created) AS d, count(1) AS n FROM project_logs('p')"
        " GROUP BY model, 2 ORDER BY n DESC, metadata.model"
    )
    assert query.aggregate
    assert query.group_by == (Ident(("metadata", "model")), Bucket("day", Ident(("created",))))
    assert [(key.path, key.descending) for key in query.sort] == [
        (("n",), True),
        (("model",), False),
    ]
    assert not parse_query("SELECT id FROM project_logs('p')").aggregate


# SQL implicit aliases --------------------------------------------------------------------------


def test_sql_names_a_path_by_its_last_part(api: Api, agg: str) -> None:
    rows = api.data(agg_sql(agg, "id, metadata.user_id, scores.s AS score", "WHERE id = 'r1'"))
    assert rows == [{"id": "r1", "user_id": "u1", "score": 1.0}]
    text = f"select: id, metadata.user_id | from: project_logs('{agg}') | filter: id = 'r1'"
    assert api.data(text) == [{"id": "r1", "metadata.user_id": "u1"}]  # BTQL text keeps the path


@pytest.mark.parametrize(
    ("select", "duplicate"),
    [("metadata.id, id", "id"), ("id AS x, created AS x", "x"), ("scores.s, metrics.s", "s")],
)
def test_duplicate_column_names_are_400(api: Api, agg: str, select: str, duplicate: str) -> None:
    response = api.btql(agg_sql(agg, select))
    assert response.status_code == 400
    assert f"duplicate column name {duplicate!r} in the select list" in response.json()["Message"]


# {"btql": ...} filter nodes --------------------------------------------------------------------


@pytest.fixture
def annotated(emu: Emulator) -> str:
    pid = str(emu.store.add_project("p")["id"])
    emu.store.insert_rows(
        "project_logs",
        pid,
        [
            {
                "id": "f1",
                "created": "2026-11-17T11:00:00.000Z",
                "metadata": {"annotated": True, "user_correction": True},
                "tags": ["annotated"],
                "scores": {"user_rating": 0.9},
                "expected": "fixed",
            },
            {
                "id": "f2",
                "created": "2026-11-08T00:00:00.000Z",
                "metadata": {"annotated": False},
                "tags": ["other"],
                "scores": {"user_rating": 0.8},
            },
            {
                "id": "f3",
                "created": "2026-11-15T00:00:00.000Z",
                "metadata": {"user_correction": True},
                "scores": {"user_rating": None},
                "expected": {"a": 1},
            },
            {"id": "f4", "created": "2026-11-01T00:00:00.000Z", "metadata": {"annotated": True}},
        ],
    )
    return pid


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("metadata.annotated = true", ["f1", "f4"]),
        ("tags includes 'annotated'", ["f1"]),
        ("tags INCLUDES 'annotated'", ["f1"]),
        ("scores.user_rating > 0.8", ["f1"]),
        ("expected IS NOT NULL AND metadata.user_correction = true", ["f1", "f3"]),
        ("created > now() - interval 7 day", ["f1", "f3"]),  # now: 2026-11-18T11:06:40Z
    ],
)
def test_btql_filter_nodes(api: Api, annotated: str, text: str, expected: list[str]) -> None:
    rows = api.data(ast("project_logs", annotated, filter={"btql": text}))
    assert sorted(row["id"] for row in rows) == expected


def test_btql_or_stays_one_operand_of_an_and_node(api: Api, annotated: str) -> None:
    node = {
        "op": "and",
        "left": {"btql": "metadata.annotated = true OR metadata.user_correction = true"},
        "right": {
            "op": "ge",
            "left": {"op": "ident", "name": ["created"]},
            "right": {"op": "literal", "value": "2026-11-10"},
        },
    }
    rows = api.data(ast("project_logs", annotated, filter=node))
    assert sorted(row["id"] for row in rows) == ["f1", "f3"]  # not f4: (a OR b) AND recent


@pytest.mark.parametrize(
    ("text", "fragment"),
    [
        ("metadata.annotated = ", "expected an expression, found the end of the query"),
        ("tags includes", "expected an expression"),
        ("metadata.annotated == true", "expected an expression, found '='"),
        ("(scores.user_rating > 0.8", "expected ')' to close the '('"),
    ],
)
def test_malformed_btql_filter_node_is_400(
    api: Api, annotated: str, text: str, fragment: str
) -> None:
    response = api.btql(ast("project_logs", annotated, filter={"btql": text}))
    assert response.status_code == 400
    message = response.json()["Message"]
    assert fragment in message
    assert "in filter.btql" in message
