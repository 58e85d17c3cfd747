"""Tests of the emulator's /btql query parser and expression evaluator."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone
from typing import Any

import pytest

from tests.emulator.btql import (
    And,
    Arith,
    BTQLError,
    Compare,
    Expr,
    Ident,
    InList,
    Interval,
    IsNull,
    Literal,
    Not,
    Now,
    Or,
    Query,
    SelectItem,
    SortKey,
    constrained_fields,
    evaluate,
    matches,
    parse_expression,
    parse_query,
    sort_value,
)

NOW = datetime(2026, 5, 12, 20, 0, tzinfo=timezone.utc)
ID = "5a2c7e1e-0f0b-4a47-9d6c-3c1f8f4f9b10"


def f(*path: str) -> Ident:
    return Ident(path)


def lit(value: str | float | bool | None) -> Literal:
    return Literal(value)


def cmp(op: str, path: str, value: str | float | bool | None) -> Compare:
    return Compare(op, f(*path.split(".")), lit(value))


def ev(text: str, row: dict[str, Any]) -> Any:
    return evaluate(parse_expression(text), row, now=NOW)


def ok(text: str, row: dict[str, Any]) -> bool:
    return matches(parse_expression(text), row, now=NOW)


def json_source(name: str, *ids: str, **extra: Any) -> dict[str, Any]:
    args = [{"op": "literal", "value": i} for i in ids]
    return {"op": "function", "name": {"op": "ident", "name": [name]}, "args": args, **extra}


def json_ident(*path: str) -> dict[str, Any]:
    return {"op": "ident", "name": list(path)}


def json_lit(value: Any) -> dict[str, Any]:
    return {"op": "literal", "value": value}


# --- the three query forms ------------------------------------------------------------------


def test_sql_contract_example() -> None:
    query = parse_query(
        f"SELECT * FROM project_logs('{ID}') WHERE created >= '2026-01-01T00:00:00Z' "  # noqa: S608
        "ORDER BY _pagination_key ASC LIMIT 1000 OFFSET 'eyJwIjoxfQ=='"
    )
    assert query == Query(
        source="project_logs",
        object_ids=(ID,),
        shape="spans",
        select=None,
        filter=cmp("ge", "created", "2026-01-01T00:00:00Z"),
        sort=(SortKey(("_pagination_key",), descending=False),),
        limit=1000,
        cursor="eyJwIjoxfQ==",
    )


def test_sql_keywords_are_case_insensitive_and_clauses_optional() -> None:
    query = parse_query("  select * from EXPERIMENT('e1') where A = 1 Order By x DESC limit 5;")
    assert (query.source, query.object_ids, query.filter) == (
        "experiment",
        ("e1",),
        cmp("eq", "A", 1),
    )
    assert query.sort == (SortKey(("x",), descending=True),)
    assert query.limit == 5
    assert query.cursor is None
    bare = parse_query("SELECT * FROM dataset('d1')")
    assert (bare.filter, bare.sort, bare.limit, bare.cursor) == (None, (), None, None)


def test_sql_select_items_and_aliases() -> None:
    query = parse_query(
        'SELECT id, metadata.model AS model, "scores"."my score", is_root = true AS root '
        "FROM project_logs('p')"
    )
    assert query.select == (
        SelectItem(f("id"), "id"),
        SelectItem(f("metadata", "model"), "model"),
        SelectItem(f("scores", "my score"), "my score"),  # SQL: the last part is the name
        SelectItem(cmp("eq", "is_root", True), "root"),
    )


def test_sql_shape_and_several_ids() -> None:
    query = parse_query("SELECT * FROM project_logs('a', 'b', shape => 'summary')")
    assert (query.object_ids, query.shape) == (("a", "b"), "summary")
    assert parse_query("SELECT * FROM experiment('a','b','c')").object_ids == ("a", "b", "c")


def test_sql_comments_are_skipped() -> None:
    query = parse_query("SELECT * -- everything\nFROM dataset('d') -- one dataset\nLIMIT 3")
    assert (query.source, query.limit) == ("dataset", 3)


BTQL_CLAUSES = [
    "select: *",
    f"from: project_logs('{ID}') traces",
    "filter: tags includes 'triage' and not tags includes 'done'",
    "sort: _xact_id desc, id",
    "limit: 100",
    "cursor: 'abc'",
]


@pytest.mark.parametrize("separator", ["\n", " | ", "\n\n  ", "\r\n"])
def test_btql_text_with_newlines_or_pipes(separator: str) -> None:
    query = parse_query(separator.join(BTQL_CLAUSES))
    assert query == Query(
        source="project_logs",
        object_ids=(ID,),
        shape="traces",
        select=None,
        filter=And(
            cmp("includes", "tags", "triage"),
            Not(cmp("includes", "tags", "done")),
        ),
        sort=(SortKey(("_xact_id",), descending=True), SortKey(("id",), descending=False)),
        limit=100,
        cursor="abc",
    )


def test_btql_clauses_in_any_order_and_select_defaults_to_star() -> None:
    query = parse_query("limit: 5 | from: dataset('d') | filter: a = 1")
    assert (query.source, query.select, query.limit, query.filter) == (
        "dataset",
        None,
        5,
        cmp("eq", "a", 1),
    )


@pytest.mark.parametrize(
    ("source", "shape"),
    [
        ("project_logs('p')", "spans"),
        ("project_logs('p') spans", "spans"),
        ("project_logs('p') traces", "traces"),
        ("project_logs('p') SUMMARY", "summary"),
        ("project_logs('p', shape => 'traces')", "traces"),
        ("project_logs('p', shape => 'traces') traces", "traces"),
    ],
)
def test_btql_shape_word(source: str, shape: str) -> None:
    assert parse_query(f"select: * | from: {source}").shape == shape


def test_btql_select_list() -> None:
    query = parse_query("select: id, metadata.model as model\nfrom: experiment('e')")
    assert query.select == (SelectItem(f("id"), "id"), SelectItem(f("metadata", "model"), "model"))


def test_json_ast_as_the_sdk_sends_it() -> None:
    body = {
        "select": [{"op": "star"}],
        "from": json_source("dataset", ID),
        "cursor": None,
        "limit": 1000,
    }
    assert parse_query(body) == Query("dataset", (ID,), "spans", None, None, (), 1000, None)


def test_json_ast_with_filter_sort_shape_and_cursor() -> None:
    body = {
        "select": [
            {"alias": "m", "expr": json_ident("metadata", "model")},
            {"expr": json_ident("id")},
        ],
        "from": json_source("project_logs", "p1", "p2", shape="traces"),
        "filter": {
            "op": "and",
            "children": [
                {"op": "ge", "left": json_ident("created"), "right": json_lit("2026-01-01")},
                {"btql": "scores.accuracy > 0.5"},
                {"op": "in", "left": json_ident("id"), "right": json_lit(["a", "b"])},
            ],
        },
        "sort": [
            {"expr": json_ident("_pagination_key"), "dir": "DESC"},
            {"expr": json_ident("id")},
        ],
        "limit": 10,
        "cursor": "c1",
    }
    query = parse_query(body)
    assert (query.source, query.object_ids, query.shape) == ("project_logs", ("p1", "p2"), "traces")
    assert query.select == (SelectItem(f("metadata", "model"), "m"), SelectItem(f("id"), "id"))
    assert query.filter == And(
        And(cmp("ge", "created", "2026-01-01"), cmp("gt", "scores.accuracy", 0.5)),
        InList(f("id"), (lit("a"), lit("b")), negated=False),
    )
    assert query.sort == (
        SortKey(("_pagination_key",), descending=True),
        SortKey(("id",), descending=False),
    )
    assert (query.limit, query.cursor) == (10, "c1")


@pytest.mark.parametrize(
    ("node", "expected"),
    [
        (json_ident("a", "b"), f("a", "b")),
        (json_lit(None), lit(None)),
        (
            {"op": "ilike", "left": json_ident("input"), "right": json_lit("%hi%")},
            cmp("ilike", "input", "%hi%"),
        ),
        (
            {"op": "or", "left": json_lit(True), "right": json_lit(False)},
            Or(lit(True), lit(False)),
        ),
        ({"op": "and", "children": []}, lit(True)),
        ({"op": "or", "children": []}, lit(False)),
        ({"op": "and", "children": [json_lit(True)]}, lit(True)),
        ({"op": "not", "expr": json_ident("a")}, Not(f("a"))),
        ({"op": "isnull", "expr": json_ident("a")}, IsNull(f("a"), negated=False)),
        ({"op": "isnotnull", "expr": json_ident("a")}, IsNull(f("a"), negated=True)),
        (
            {"op": "in", "left": json_ident("a"), "right": [json_lit(1), {"btql": "2"}]},
            InList(f("a"), (lit(1), lit(2)), negated=False),
        ),
        (
            {
                "op": "sub",
                "left": {"op": "function", "name": json_ident("now"), "args": []},
                "right": {"op": "interval", "value": 7, "unit": "days"},
            },
            Arith("-", Now(), Interval(7, "day")),
        ),
        (
            {"op": "add", "left": json_ident("x"), "right": json_lit(1)},
            Arith("+", f("x"), lit(1)),
        ),
        ({"btql": "a = 1 or b is null"}, Or(cmp("eq", "a", 1), IsNull(f("b"), negated=False))),
    ],
)
def test_json_expression_nodes(node: dict[str, Any], expected: Expr) -> None:
    query = parse_query({"from": json_source("dataset", "d"), "filter": node})
    assert query.filter == expected


def test_sdk_span_fetcher_filter_evaluates() -> None:
    # The filter braintrust 0.47.0's SpanFetcher sends (trace.py / btx/span_fetcher.py).
    purpose = ["span_attributes", "purpose"]
    node = {
        "op": "and",
        "children": [
            {"op": "eq", "left": json_ident("root_span_id"), "right": json_lit("r1")},
            {
                "op": "or",
                "children": [
                    {"op": "isnull", "expr": json_ident(*purpose)},
                    {"op": "ne", "left": json_ident(*purpose), "right": json_lit("scorer")},
                ],
            },
            {
                "op": "in",
                "left": json_ident("span_attributes", "type"),
                "right": json_lit(["llm", "tool"]),
            },
            {
                "op": "le",
                "left": {
                    "op": "sub",
                    "left": json_ident("metrics", "end"),
                    "right": json_ident("metrics", "start"),
                },
                "right": json_lit(2.5),
            },
        ],
    }
    expr = parse_query({"from": json_source("project_logs", "p"), "filter": node}).filter
    row: dict[str, Any] = {
        "root_span_id": "r1",
        "span_attributes": {"type": "llm"},
        "metrics": {"start": 10.0, "end": 12.0},
    }
    assert matches(expr, row, now=NOW)
    assert not matches(
        expr, {**row, "span_attributes": {"type": "llm", "purpose": "scorer"}}, now=NOW
    )
    assert not matches(expr, {**row, "metrics": {"start": 10.0, "end": 13.0}}, now=NOW)
    assert not matches(expr, {**row, "root_span_id": "r2"}, now=NOW)
    assert constrained_fields(expr) == {"root_span_id", "span_attributes"}


# --- expressions: precedence, literals, paths -----------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (
            "a = 1 or b = 2 and c = 3",
            Or(cmp("eq", "a", 1), And(cmp("eq", "b", 2), cmp("eq", "c", 3))),
        ),
        (
            "(a = 1 or b = 2) and c = 3",
            And(Or(cmp("eq", "a", 1), cmp("eq", "b", 2)), cmp("eq", "c", 3)),
        ),
        (
            "a = 1 and b = 2 and c = 3",
            And(And(cmp("eq", "a", 1), cmp("eq", "b", 2)), cmp("eq", "c", 3)),
        ),
        ("not a = 1 and b = 2", And(Not(cmp("eq", "a", 1)), cmp("eq", "b", 2))),
        ("NOT (a = 1 OR b = 2)", Not(Or(cmp("eq", "a", 1), cmp("eq", "b", 2)))),
        ("not not a", Not(Not(f("a")))),
        ("((a))", f("a")),
        ("a <> 1", cmp("ne", "a", 1)),
        ("a != -1.5", cmp("ne", "a", -1.5)),
        ("a >= 1e3", cmp("ge", "a", 1000.0)),
        (
            "a < 2 or a <= 3 or a > 4",
            Or(Or(cmp("lt", "a", 2), cmp("le", "a", 3)), cmp("gt", "a", 4)),
        ),
        ("a not like 'x%'", Not(cmp("like", "a", "x%"))),
        ("a NOT ILIKE 'x%'", Not(cmp("ilike", "a", "x%"))),
        ("tags contains 'x'", cmp("includes", "tags", "x")),
        ("a in (1, 'b', null)", InList(f("a"), (lit(1), lit("b"), lit(None)), negated=False)),
        ("a not in (true)", InList(f("a"), (lit(True),), negated=True)),
        ("a is null", IsNull(f("a"), negated=False)),
        ("a IS NOT NULL", IsNull(f("a"), negated=True)),
        (
            "now() - interval 1 day + interval 2 hours",
            Arith("+", Arith("-", Now(), Interval(1, "day")), Interval(2, "hour")),
        ),
        (
            "created > NOW() - INTERVAL 30 Minutes",
            Compare("gt", f("created"), Arith("-", Now(), Interval(30, "minute"))),
        ),
    ],
)
def test_expression_grammar(text: str, expected: Expr) -> None:
    assert parse_expression(text) == expected


@pytest.mark.parametrize(
    ("text", "value"),
    [
        (r"'O\'Brien'", "O'Brien"),
        (r"'a\\b'", "a\\b"),
        ("'it''s'", "it's"),
        ("'héllo ✓ 日本語 🎉'", "héllo ✓ 日本語 🎉"),
        (r"'line\nbreak\ttab'", "line\nbreak\ttab"),
        (r"'say \"hi\"'", 'say "hi"'),
        (r"'100\%'", "100\\%"),  # kept escaped so LIKE can match a literal %
        ("''", ""),
    ],
)
def test_string_escapes(text: str, value: str) -> None:
    assert parse_expression(f"x = {text}") == cmp("eq", "x", value)


@pytest.mark.parametrize(
    ("text", "path"),
    [
        ("metadata.model", ("metadata", "model")),
        ('"metadata"."model"', ("metadata", "model")),
        ('metadata."user ""quoted"" id"', ("metadata", 'user "quoted" id')),
        ("scores.accuracy", ("scores", "accuracy")),
        ("metadata.limit", ("metadata", "limit")),  # a keyword is a fine name after '.'
        ('"select"', ("select",)),
    ],
)
def test_paths(text: str, path: tuple[str, ...]) -> None:
    assert parse_expression(text) == Ident(path)


# --- evaluation -----------------------------------------------------------------------------

ROW: dict[str, Any] = {
    "id": "r1",
    "_xact_id": "1000",
    "created": "2026-05-10T12:00:00.000Z",
    "input": {"messages": [{"role": "user", "content": "Hello World"}]},
    "output": "The answer is 42%",
    "tags": ["triage", "gold"],
    "scores": {"accuracy": 0.75, "factuality": None},
    "metadata": {"model": "gpt-4o", "user_correction": True, "count": 3},
    "is_root": True,
    "error": None,
}


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("metadata.model = 'gpt-4o'", True),
        ("metadata.model != 'gpt-4o'", False),
        ("scores.accuracy > 0.5 and scores.accuracy <= 0.75", True),
        ("metadata.count = 3.0", True),
        ("is_root = true", True),
        ("metadata.user_correction", True),
        # NULL: comparisons are unknown, IS NULL is true
        ("scores.factuality = null", None),
        ("scores.factuality != 0.5", None),
        ("scores.missing > 0", None),
        ("not scores.missing > 0", None),
        ("error is null", True),
        ("nope is null", True),
        ("nope is not null", False),
        ("output.nested is null", True),  # a path through a non-object is NULL
        ("tags.first is null", True),
        # three-valued logic
        ("nope = 1 or id = 'r1'", True),
        ("nope = 1 and id = 'r2'", False),
        ("nope = 1 and id = 'r1'", None),
        ("not (nope = 1 and id = 'r2')", True),
        # mismatched types never compare
        ("metadata.model = 1", None),
        ("metadata.count = '3x'", None),
        ("is_root = 1", None),
        ("tags > 'a'", None),
        ("input = 'x'", None),
        # IN / NOT IN
        ("id in ('r0', 'r1')", True),
        ("id in ('r0')", False),
        ("id not in ('r0', 'r2')", True),
        ("id in ('r0', null)", None),
        ("id not in ('r0', null)", None),
        ("id not in ('r1', null)", False),
        ("nope in (1, 2)", None),
        # LIKE / ILIKE: % any run, _ one character, backslash escapes
        ("output like 'The%'", True),
        ("output like 'the%'", False),
        ("output ilike 'the%'", True),
        ("output like '%42\\%'", True),
        ("output like '%4_\\%'", True),
        ("output like '%4\\_%'", False),
        ("output like 'The answer'", False),
        ("input ilike '%hello world%'", True),  # objects match on their JSON text
        ("metadata.count like '3'", None),
        # INCLUDES
        ("tags includes 'gold'", True),
        ("tags includes 'silver'", False),
        ("not tags includes 'silver'", True),
        ("metadata.model includes 'gpt'", None),
        ("nope includes 'x'", None),
        # arithmetic
        ("metadata.count + 2 = 5", True),
        ("metadata.count - 1 - 1 = 1", True),
        ("metadata.model + 1 = 2", None),
    ],
)
def test_evaluate(text: str, expected: bool | None) -> None:
    assert ev(text, ROW) is expected
    assert ok(text, ROW) is (expected is True)


def test_evaluate_values() -> None:
    assert ev("metadata.model", ROW) == "gpt-4o"
    assert ev("input.messages", ROW) == [{"role": "user", "content": "Hello World"}]
    assert ev("nope.deeper", ROW) is None
    assert ev("now()", ROW) == NOW
    assert ev("interval 2 week", ROW) == timedelta(weeks=2)
    assert ev("now() - interval 7 day", ROW) == datetime(2026, 5, 5, 20, 0, tzinfo=timezone.utc)
    assert ev("interval 1 hour + now()", ROW) == datetime(2026, 5, 12, 21, 0, tzinfo=timezone.utc)
    assert ev("created + interval 30 seconds", ROW) == datetime(
        2026, 5, 10, 12, 0, 30, tzinfo=timezone.utc
    )


def test_matches_without_filter_and_naive_now() -> None:
    assert matches(None, {}, now=NOW)
    naive = datetime(2026, 5, 12, 20, 0)  # noqa: DTZ001 - read as UTC on purpose
    assert evaluate(parse_expression("now()"), {}, now=naive) == NOW


@pytest.mark.parametrize(
    ("text", "created", "expected"),
    [
        ("created > now() - interval 7 day", "2026-05-10T12:00:00.000Z", True),
        ("created > now() - interval 1 day", "2026-05-10T12:00:00.000Z", False),
        ("created >= now() - interval 48 hours", "2026-05-10T20:00:00.000Z", True),
        ("created < now()", "2026-05-12T19:59:59.999Z", True),
        ("created = '2024-01-01'", "2024-01-01T00:00:00.000Z", True),
        ("created > '2024-01-01'", "2024-01-01T00:00:00.001Z", True),
        ("created = '2024-01-01T02:00:00+02:00'", "2024-01-01T00:00:00Z", True),
        ("created = '2024-01-01T02:00:00+0200'", "2024-01-01T00:00:00.000Z", True),
        ("created = '2023-12-31T19:00:00-05:00'", "2024-01-01T00:00:00.000Z", True),
        ("created = '2024-01-01 00:00'", "2024-01-01T00:00:00.000Z", True),
        ("created < '2024-01-01T00:00:00.000000001Z'", "2024-01-01T00:00:00Z", False),
        # lexically '2024-01-01T00:00:00Z' > '2024-01-01T00:00:00.5Z'; as times it is earlier
        ("created < '2024-01-01T00:00:00.5Z'", "2024-01-01T00:00:00Z", True),
        ("created > '2024-13-01'", "2024-02-01T00:00:00.000Z", False),  # not a date: as strings
        ("created > 'yesterday'", "2024-02-01T00:00:00.000Z", False),
        ("created > now()", None, False),
        ("created > now()", 1700000000, False),
    ],
)
def test_timestamp_comparisons(text: str, created: Any, expected: bool) -> None:
    assert ok(text, {"created": created}) is expected


@pytest.mark.parametrize(
    ("text", "xact", "expected"),
    [
        ("_xact_id > '999'", "1000", True),
        ("_xact_id < '1000'", "999", True),
        ("_xact_id >= 1000", "1000", True),
        ("_xact_id > 999", "1000", True),
        ("_xact_id = '1000'", 1000, True),
        ("_xact_id > '1000000000000000000'", "999999999999999999", False),
        ("_xact_id > '1000000000000000000'", "1000000000000000001", True),
        ("_xact_id > 'p00000000000000000001'", "1000", False),  # not digits: string order
        ("_xact_id > 'p00000000000000000001'", "p00000000000000000002", True),
    ],
)
def test_xact_id_numeric_comparison(text: str, xact: Any, expected: bool) -> None:
    assert ok(text, {"_xact_id": xact}) is expected


# --- constrained_fields and sort_value ------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "fields"),
    [
        ("created >= '2026-01-01'", {"created"}),
        ("'2026-01-01' <= created", {"created"}),
        ("created > now() - interval 1 day", {"created"}),
        ("_xact_id > '1' and metadata.model = 'x'", {"_xact_id", "metadata"}),
        (
            "(_pagination_key > 'p1' and id in ('a', 'b')) and root_span_id = 'r'",
            {"_pagination_key", "id", "root_span_id"},
        ),
        ("(created >= 'x' or id = 'y') and is_root = true", {"is_root"}),
        ("created >= 'x' or id = 'y'", set()),
        ("not created >= 'x'", set()),
        ("id not in ('a')", set()),
        ("created != 'x'", set()),
        ("created is not null", set()),
        ("root_span_id like 'x%'", set()),
        ("tags includes 'x'", set()),
        ("created > metrics.start", set()),
        ("created > now() - metrics.start", set()),
        ("id in ('a', span_id)", set()),
    ],
)
def test_constrained_fields(text: str, fields: set[str]) -> None:
    assert constrained_fields(parse_expression(text)) == fields


def test_constrained_fields_of_no_filter() -> None:
    assert constrained_fields(None) == frozenset()


def test_sort_value_is_a_total_order() -> None:
    rows: list[dict[str, Any]] = [
        {"n": "b"},
        {"n": {"k": 1}},
        {"n": 2.5},
        {},
        {"n": True},
        {"n": [1, "x"]},
        {"n": None},
        {"n": 1},
        {"n": "a"},
        {"n": False},
    ]
    ordered = [row.get("n") for row in sorted(rows, key=lambda row: sort_value(("n",), row))]
    assert ordered[:2] == [None, None]
    assert ordered[2:] == [False, True, 1, 2.5, "a", "b", [1, "x"], {"k": 1}]


def test_sort_value_orders_xact_ids_numerically_and_reads_paths() -> None:
    rows = [{"_xact_id": x} for x in ("1000", "999", "10000", "1001")]
    keys = sorted(rows, key=lambda row: sort_value(("_xact_id",), row))
    assert [row["_xact_id"] for row in keys] == ["999", "1000", "1001", "10000"]
    assert sort_value(("metadata", "model"), ROW) == sort_value(("m",), {"m": "gpt-4o"})
    assert sort_value(("id",), {"id": "999"}) > sort_value(("id",), {"id": "1000"})  # not _xact_id


# --- errors ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("query", "message"),
    [
        # SQL
        (
            "SELECT * FROM project_logs('p') OFFSET 10",
            "OFFSET takes a cursor string; numeric OFFSET is not supported",
        ),
        (
            "SELECT * FROM project_logs('p') WHERE tags INCLUDES 'a'",
            "INCLUDES is not supported in SQL, only in BTQL text at column 44",
        ),
        (
            "SELECT * FROM project_logs('p') WHERE tags contains 'a'",
            "CONTAINS is not supported in SQL",
        ),
        (
            "SELECT * FROM project_logs('p') WHERE (a = 1",
            "expected ')' to close the '(' at column 39, found the end of the query",
        ),
        ("SELECT * FROM project_logs('p') WHERE a = 1)", "unbalanced ')' at column 44"),
        (
            "SELECT * FROM project_logs('p') WHERE a = 'x",
            "unterminated string starting at column 43",
        ),
        (
            "SELECT * FROM project_logs('p') WHERE \"a = 1",
            "unterminated quoted identifier starting at column 39",
        ),
        (
            "SELECT * FROM project_logs('p') WHERE foo(1) = 2",
            (
                "unknown function foo(); supported: now(), hour, day, week, month and, in a SQL"
                " select list, count, count_distinct, sum, avg, min, max, any_value, percentile"
                " at column 39"
            ),
        ),
        (
            "SELECT * FROM project_logs('p') WHERE a = 1 b",
            "expected WHERE, GROUP BY, ORDER BY, LIMIT, OFFSET or the end of the query, found 'b'",
        ),
        (
            "SELECT * FROM project_logs('p') GROUP BY x",
            "GROUP BY needs a select list, not * at column 33",
        ),
        ("SELECT * FROM project_logs('p') JOIN dataset('d') ON 1 = 1", "JOIN is not supported"),
        ("SELECT * FROM project_logs('p'), dataset('d')", "JOIN is not supported"),
        (
            "SELECT * FROM project_logs('p') UNION SELECT * FROM project_logs('p')",
            "UNION is not supported",
        ),
        ("SELECT id FROM project_logs('p') ORDER BY id HAVING 1", "HAVING is not supported"),
        (
            "SELECT row_number() OVER (ORDER BY id) AS n FROM project_logs('p')",
            "window functions are not supported",
        ),
        ("SELECT * FROM (SELECT * FROM project_logs('p'))", "subqueries are not supported"),
        (
            "SELECT * FROM project_logs('p') WHERE id IN (SELECT id FROM project_logs('p'))",
            "subqueries are not supported",
        ),
        ("SELECT DISTINCT id FROM project_logs('p')", "DISTINCT is not supported"),
        ("SELECT * FROM project_logs", "expected '(' and object ids after project_logs"),
        ("SELECT * FROM project_logs()", "project_logs() needs at least one object id"),
        (
            "SELECT * FROM project_logs(42)",
            "expected an object id (a single-quoted string), found '42'",
        ),
        (
            "SELECT * FROM project_logs('')",
            "object id must be a non-empty string, got '' at column 28",
        ),
        ("SELECT * FROM logs('p')", "expected a source (project_logs, experiment, dataset"),
        ("SELECT * FROM project_logs('p', shape => 'wide')", "unknown shape 'wide'"),
        (
            "SELECT * FROM project_logs('p', mode => 'x')",
            "unknown argument 'mode' of project_logs()",
        ),
        (
            "SELECT * FROM project_logs(shape => 'traces', 'p')",
            "object ids must come before shape =>",
        ),
        ("SELECT * project_logs('p')", "expected FROM, found 'project_logs'"),
        ("SELECT FROM project_logs('p')", "expected an expression, found 'FROM'"),
        ("SELECT *, id FROM project_logs('p')", "'*' cannot be combined with other select items"),
        (
            "SELECT a + 1 FROM project_logs('p')",
            "a computed select item needs an alias (AS name) at column 8",
        ),
        (
            "SELECT * FROM project_logs('p') LIMIT -1",
            "expected a positive integer limit, found '-'",
        ),
        (
            "SELECT * FROM project_logs('p') LIMIT 1.5",
            "expected a positive integer limit, found '1.5'",
        ),
        ("SELECT * FROM project_logs('p') LIMIT 'ten'", "expected a positive integer limit"),
        ("SELECT * FROM project_logs('p') LIMIT 0", "expected a positive integer limit, found '0'"),
        (
            "SELECT * FROM project_logs('p') ORDER BY 1",
            "expected a field path to sort by, found '1'",
        ),
        ("SELECT * FROM project_logs('p') ORDER BY a + 1", "found '+'"),
        ("SELECT * FROM project_logs('p') ORDER a", "expected BY, found 'a'"),
        (
            "SELECT * FROM project_logs('p') OFFSET cursor",
            "expected a cursor (a single-quoted string), found 'cursor'",
        ),
        # BTQL text
        (
            "select: * from: project_logs('p')",
            "expected '|', a new line or the end of the query after select:, found 'from'",
        ),
        (
            "select: *\nfrom: project_logs('p')\ndimensions: metadata.model",
            "dimensions: is not supported at line 3, column 1",
        ),
        ("from: project_logs('p') | pivot: x", "pivot: is not supported"),
        ("from: project_logs('p') | where: a = 1", "where: is not a clause"),
        ("from: project_logs('p') | limit: 1 | limit: 2", "limit: appears twice"),
        ("from: project_logs('p') |", "expected a clause after '|'"),
        ("select: * | filter: a = 1", "the query has no from: clause"),
        (
            "from: project_logs('p')\nfilter:\nsort: id",
            "expected an expression, found 'sort' at line 3, column 1",
        ),
        (
            "from: project_logs('p') traces | filter: a = 1 b",
            "after filter:, found 'b' at column 48",
        ),
        (
            "from: project_logs('p', shape => 'traces') spans",
            "shape 'spans' conflicts with shape => 'traces'",
        ),
        (
            "from: project_logs('p') | filter: created > now() - interval 7 fortnights",
            "unknown interval unit 'fortnights'",
        ),
        (
            "from: project_logs('p') | filter: created > now() - interval day",
            "expected a number after INTERVAL, found 'day'",
        ),
        (
            "from: project_logs('p') | filter: a = 'x\\q'",
            "unknown escape '\\q' in string at column 41",
        ),
        ("from: project_logs('p') | filter: a ! b", "unexpected character '!' at column 37"),
        ("from: project_logs('p') | filter: a = 7days", "malformed number at column 39"),
        ("from: project_logs('p') | filter: a in ()", "IN () needs at least one value"),
        (
            "from: project_logs('p') | filter: a not = 1",
            "expected IN, LIKE, ILIKE or INCLUDES after NOT",
        ),
        ("from: project_logs('p') | filter: a is 1", "expected NULL, found '1'"),
        ("from: project_logs('p') | filter: a = = 1", "expected an expression, found '='"),
        (
            "from: project_logs('p') | filter: a.",
            "expected a field name after '.', found the end of the query",
        ),
        ("from: project_logs('p') | filter: now(1) > a", "expected ')' to close the '('"),
        (
            "from: project_logs('p') | cursor: 12",
            "expected a cursor (a single-quoted string), found '12'",
        ),
        ("hello world", "expected a clause such as 'select:', 'from:' or 'filter:', found 'hello'"),
        ("   ", "the query is empty"),
        # JSON AST
        ({"from": json_source("dataset")}, "dataset() needs at least one object id at from.args"),
        ({"from": json_source("datasets", "d")}, "unknown source 'datasets' at from.name"),
        ({"from": json_source("dataset", "d", shape="wide")}, "unknown shape 'wide' at from.shape"),
        ({"from": "dataset('d')"}, "expected an object at from"),
        ({}, "expected an object at from, got null"),
        (
            {"from": {"op": "ident", "name": ["dataset"]}},
            'expected {"op": "function", ...} at from',
        ),
        ({"from": json_source("dataset", "d"), "dimensions": []}, "dimensions is not supported"),
        ({"from": json_source("dataset", "d"), "where": {}}, "unknown query key 'where'"),
        (
            {"from": json_source("dataset", "d"), "limit": "10"},
            "limit must be a positive integer, got '10'",
        ),
        (
            {"from": json_source("dataset", "d"), "limit": True},
            "limit must be a positive integer",
        ),
        (
            {"from": json_source("dataset", "d"), "limit": -1},
            "limit must be a positive integer",
        ),
        (
            {"from": json_source("dataset", "d"), "limit": 0},
            "limit must be a positive integer, got 0",
        ),
        ({"from": json_source("dataset", "d"), "cursor": 5}, "cursor must be a string or null"),
        (
            {"from": json_source("dataset", "d"), "filter": {"op": "mul"}},
            "unknown op 'mul' at filter",
        ),
        (
            {
                "from": json_source("dataset", "d"),
                "filter": {
                    "op": "and",
                    "children": [json_lit(True), {"op": "eq", "left": json_ident("a")}],
                },
            },
            "op 'eq' at filter.children[1] needs 'right'",
        ),
        (
            {"from": json_source("dataset", "d"), "filter": {"btql": "a = (1"}},
            "found the end of the query at column 7 in filter.btql",
        ),
        (
            {"from": json_source("dataset", "d"), "filter": {"btql": 1}},
            "btql must be a string at filter",
        ),
        (
            {"from": json_source("dataset", "d"), "filter": json_lit({"a": 1})},
            "literal at filter must be a string, number, boolean or null",
        ),
        (
            {"from": json_source("dataset", "d"), "filter": json_ident()},
            'expected {"op": "ident", "name": [...]} at filter',
        ),
        (
            {"from": json_source("dataset", "d"), "filter": {"op": "ident", "name": ["a", 0]}},
            "ident name parts must be strings",
        ),
        (
            {
                "from": json_source("dataset", "d"),
                "filter": {"op": "in", "left": json_ident("a"), "right": json_lit([])},
            },
            "IN needs at least one value at filter.right",
        ),
        (
            {
                "from": json_source("dataset", "d"),
                "filter": {"op": "function", "name": json_ident("count"), "args": []},
            },
            "unknown function 'count' with 0 argument(s) at filter",
        ),
        (
            {
                "from": json_source("dataset", "d"),
                "filter": {"op": "interval", "value": "7", "unit": "day"},
            },
            "interval value must be a number",
        ),
        (
            {"from": json_source("dataset", "d"), "filter": [json_lit(True)]},
            "expected an object at filter",
        ),
        (
            {
                "from": json_source("dataset", "d"),
                "select": [{"op": "star"}, {"expr": json_ident("id")}],
            },
            "star cannot be combined",
        ),
        ({"from": json_source("dataset", "d"), "select": []}, "select must list at least one item"),
        (
            {"from": json_source("dataset", "d"), "select": [{"expr": json_lit(1)}]},
            "a computed select item needs a string alias at select[0]",
        ),
        (
            {
                "from": json_source("dataset", "d"),
                "sort": [{"expr": json_ident("id"), "dir": "up"}],
            },
            "dir must be 'asc' or 'desc' at sort[0], got 'up'",
        ),
        (
            {"from": json_source("dataset", "d"), "sort": [{"expr": json_lit(1)}]},
            'expected {"op": "ident", "name": [...]} at sort[0].expr',
        ),
        (
            {"from": {"op": "function", "name": json_ident("dataset"), "args": [json_lit(7)]}},
            "object id must be a non-empty string, got 7 at from.args[0]",
        ),
    ],
)
def test_malformed_queries(query: str | dict[str, Any], message: str) -> None:
    with pytest.raises(BTQLError) as caught:
        parse_query(query)
    assert message in str(caught.value)


def test_btql_error_is_a_value_error_and_non_text_queries_are_refused() -> None:
    assert issubclass(BTQLError, ValueError)
    with pytest.raises(BTQLError, match="query must be a string or a JSON object, got list"):
        parse_query([])  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("a = 1)", "unbalanced ')' at column 6"),
        ("a = 1 b", "expected the end of the expression, found 'b' at column 7"),
        ("", "expected an expression, found the end of the query at column 1"),
        (
            "a =\n  (b",
            (
                "expected ')' to close the '(' at line 2, column 3, "
                "found the end of the query at line 2, column 5"
            ),
        ),
    ],
)
def test_malformed_expressions(text: str, message: str) -> None:
    with pytest.raises(BTQLError) as caught:
        parse_expression(text)
    assert str(caught.value) == message
