"""POST /btql over HTTP: query forms, every pagination fact of the contract, and row semantics."""

from __future__ import annotations

import json
from datetime import datetime
from typing import Any, Literal

import pytest

from tests.emulator import Emulator, generate_logs, running_emulator
from tests.emulator.conftest import FIXED_NOW, Api, ast, sql
from tests.emulator.generator import SAME_CREATED_RUN
from tests.emulator.store import format_pagination_key


def project_of(emu: Emulator) -> str:
    assert emu.demo is not None
    return str(emu.demo.projects[0]["id"])


def ids(rows: list[dict[str, Any]]) -> list[str]:
    return [row["id"] for row in rows]


def all_rows(pages: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [row for page in pages for row in page["data"]]


# Query forms ----------------------------------------------------------------------------------


def test_sql_btql_text_and_json_ast_give_the_same_rows(demo_api: Api, demo_emu: Emulator) -> None:
    pid = project_of(demo_emu)
    text = "\n".join(
        [
            "select: *",
            f"from: project_logs('{pid}') spans",
            "filter: metadata.environment = 'staging'",
            "sort: _pagination_key asc",
            "limit: 1000",
        ]
    )
    sql_text = sql(
        "project_logs", pid, where="metadata.environment = 'staging'", order="_pagination_key ASC"
    )
    json_ast = ast(
        "project_logs",
        pid,
        sort=[("_pagination_key", "asc")],
        filter={
            "op": "eq",
            "left": {"op": "ident", "name": ["metadata", "environment"]},
            "right": {"op": "literal", "value": "staging"},
        },
    )
    piped = text.replace("\n", " | ")
    results = [ids(demo_api.data(query)) for query in (text, sql_text, json_ast, piped)]
    expected = [
        r["id"]
        for r in reversed(demo_emu.store.rows("project_logs", pid))
        if (r["metadata"] or {}).get("environment") == "staging"
    ]
    assert expected
    assert all(result == expected for result in results)


def test_parse_errors_are_400_with_a_message(demo_api: Api, demo_emu: Emulator) -> None:
    response = demo_api.btql(sql("project_logs", project_of(demo_emu), where="(created > '2024"))
    assert response.status_code == 400
    assert response.json()["Message"]
    assert demo_api.session.post(demo_emu.url + "/btql", data=b"{not json").status_code == 400
    assert demo_api.session.post(demo_emu.url + "/btql", json={"fmt": "json"}).status_code == 400


@pytest.mark.parametrize(
    ("body", "fragment"),
    [
        ({"fmt": "parquet"}, "not supported"),
        ({"fmt": "csv"}, "fmt"),
        ({"version": "1"}, "version"),
    ],
)
def test_unsupported_requests_are_400(
    demo_api: Api, demo_emu: Emulator, body: dict[str, Any], fragment: str
) -> None:
    response = demo_api.btql(sql("project_logs", project_of(demo_emu)), **body)
    assert response.status_code == 400
    assert fragment in response.json()["Message"]


def test_unknown_ids_are_403(demo_api: Api, demo_emu: Emulator) -> None:
    pid = project_of(demo_emu)
    assert demo_api.btql(sql("experiment", pid)).status_code == 403  # a project id is no experiment
    assert demo_api.btql(sql("dataset", "00000000-0000-4000-8000-000000000000")).status_code == 403


def test_unknown_body_keys_are_ignored(demo_api: Api, demo_emu: Emulator) -> None:
    rows = demo_api.data(
        sql("project_logs", project_of(demo_emu), limit=3),
        tz_offset=60,
        audit_log=False,
        use_columnstore=False,
        brainstore_realtime=True,
        query_source="test",
        api_version=1,
    )
    assert len(rows) == 3


# Pagination facts -----------------------------------------------------------------------------


def test_default_order_is_pagination_key_descending(demo_api: Api, demo_emu: Emulator) -> None:
    pid = project_of(demo_emu)
    rows = demo_api.data(sql("project_logs", pid, where="created > '2000-01-01'"))
    keys = [row["_pagination_key"] for row in rows]
    assert keys == sorted(keys, reverse=True)
    assert rows == demo_emu.store.rows("project_logs", pid)


@pytest.mark.parametrize("field", ["_pagination_key", "_xact_id"])
@pytest.mark.parametrize("direction", ["asc", "desc"])
def test_cursor_paging_visits_every_row_once(
    demo_api: Api, demo_emu: Emulator, field: str, direction: str
) -> None:
    pid = project_of(demo_emu)
    pages = demo_api.pages(
        lambda cursor: ast("project_logs", pid, sort=[(field, direction)], limit=37, cursor=cursor)
    )
    rows = all_rows(pages)
    truth = demo_emu.store.rows("project_logs", pid)
    assert sorted(ids(rows)) == sorted(ids(truth))
    assert len(set(ids(rows))) == len(rows)
    values = [
        (int(row[field][1:] if field == "_pagination_key" else row[field]), row["_pagination_key"])
        for row in rows
    ]
    assert values == sorted(values, reverse=direction == "desc")
    assert all(page["cursor"] for page in pages[:-1])
    assert len(pages[-2]["data"]) < 37  # a short last page still carries a cursor


def test_rows_sharing_one_created_millisecond_are_paged_exactly_once(
    demo_api: Api, demo_emu: Emulator
) -> None:
    assert demo_emu.demo is not None
    stamp = demo_emu.demo.same_created
    pid = project_of(demo_emu)
    pages = demo_api.pages(
        lambda cursor: sql(
            "project_logs",
            pid,
            where=f"created = '{stamp}'",
            order="_pagination_key ASC",
            limit=7,
            cursor=cursor,
        )
    )
    rows = all_rows(pages)
    assert len(rows) == len(set(ids(rows))) >= SAME_CREATED_RUN
    assert {row["created"] for row in rows} == {stamp}


def test_sort_by_created_returns_no_cursor_even_when_rows_remain(
    demo_api: Api, demo_emu: Emulator
) -> None:
    pid = project_of(demo_emu)
    response = demo_api.btql(sql("project_logs", pid, order="created DESC", limit=10))
    body = response.json()
    assert len(body["data"]) == 10
    assert "cursor" not in body
    assert "x-bt-cursor" not in response.headers
    created = [row["created"] for row in body["data"]]
    assert created == sorted(created, reverse=True)


@pytest.mark.parametrize(
    ("order", "cursor"),
    [
        ("created DESC", "anything"),  # no cursor with a non-cursor sort
        ("_pagination_key DESC", "%%%not-base64%%%"),
        ("_pagination_key DESC", "eyJ4IjoxfQ"),  # valid base64 JSON, wrong content
    ],
)
def test_bad_cursors_are_400(demo_api: Api, demo_emu: Emulator, order: str, cursor: str) -> None:
    response = demo_api.btql(sql("project_logs", project_of(demo_emu), order=order, cursor=cursor))
    assert response.status_code == 400
    assert response.json()["Message"]


def test_a_cursor_made_for_another_sort_is_400(demo_api: Api, demo_emu: Emulator) -> None:
    pid = project_of(demo_emu)
    cursor = demo_api.btql(sql("project_logs", pid, order="_xact_id ASC", limit=2)).json()["cursor"]
    response = demo_api.btql(
        sql("project_logs", pid, order="_pagination_key ASC", limit=2, cursor=cursor)
    )
    assert response.status_code == 400


def test_pages_come_short_under_the_byte_budget_while_rows_remain() -> None:
    with running_emulator(strict=False, demo_seed=7, page_byte_budget=60_000) as emu:
        api = Api(emu)
        try:
            pid = project_of(emu)
            pages = api.pages(
                lambda cursor: ast(
                    "project_logs",
                    pid,
                    sort=[("_pagination_key", "asc")],
                    limit=1000,
                    cursor=cursor,
                )
            )
        finally:
            api.close()
        sizes = [len(page["data"]) for page in pages]
        assert len(pages) > 5
        assert all(0 < size < 1000 for size in sizes[:-1])
        assert sizes[-1] == 0
        assert sorted(ids(all_rows(pages))) == sorted(ids(emu.store.rows("project_logs", pid)))
        assert emu.demo is not None
        big = next(
            page
            for page in pages
            if any(row["id"] in emu.demo.large_row_ids for row in page["data"])
        )
        assert len(big["data"]) == 1  # a row bigger than the budget still comes, alone


@pytest.mark.parametrize(("mode", "status", "rows"), [("clamp", 200, 1000), ("error", 400, None)])
def test_limit_is_capped_at_1000(
    mode: Literal["clamp", "error"], status: int, rows: int | None
) -> None:
    with running_emulator(strict=False, limit_over_cap=mode) as emu:
        project = emu.store.add_project("bulk")
        generate_logs(emu.store, project["id"], 1010, row_bytes=300)
        api = Api(emu)
        try:
            response = api.btql(sql("project_logs", project["id"], limit=5000))
        finally:
            api.close()
        assert response.status_code == status
        if rows is not None:
            assert len(response.json()["data"]) == rows


def test_keyset_paging_without_the_server_cursor(demo_api: Api, demo_emu: Emulator) -> None:
    pid = project_of(demo_emu)
    last = format_pagination_key(0)
    seen: list[str] = []
    while True:
        rows = demo_api.data(
            sql(
                "project_logs",
                pid,
                where=f"_pagination_key > '{last}'",
                order="_pagination_key ASC",
                limit=100,
            )
        )
        if not rows:
            break
        seen += ids(rows)
        last = rows[-1]["_pagination_key"]
    assert seen == ids(list(reversed(demo_emu.store.rows("project_logs", pid))))


def test_jsonl_rows_per_line_with_cursor_header(demo_api: Api, demo_emu: Emulator) -> None:
    query = sql("project_logs", project_of(demo_emu), order="_pagination_key ASC", limit=5)
    as_json = demo_api.btql(query)
    as_jsonl = demo_api.btql(query, fmt="jsonl")
    lines = as_jsonl.text.splitlines()
    assert [json.loads(line) for line in lines] == as_json.json()["data"]
    assert (
        as_jsonl.headers["x-bt-cursor"]
        == as_json.headers["x-bt-cursor"]
        == as_json.json()["cursor"]
    )


def test_response_envelope(demo_api: Api, demo_emu: Emulator) -> None:
    body = demo_api.btql(
        sql("project_logs", project_of(demo_emu), limit=1), brainstore_realtime=True
    ).json()
    assert set(body) == {
        "data",
        "schema",
        "cursor",
        "realtime_state",
        "freshness_state",
        "warnings",
    }
    assert body["schema"]["type"] == "array"
    assert set(body["schema"]["items"]["properties"]) == set(body["data"][0])
    assert body["realtime_state"]["type"] == "on"
    processed, considered = demo_emu.store.freshness()
    assert body["freshness_state"] == {
        "last_processed_xact_id": processed,
        "last_considered_xact_id": considered,
    }


def test_freshness_state_can_be_left_out() -> None:
    with running_emulator(strict=False, clock=lambda: FIXED_NOW, report_freshness=False) as emu:
        project = emu.store.add_project("p")
        emu.store.insert_rows("project_logs", project["id"], [{"id": "r1"}])
        api = Api(emu)
        body = api.btql(sql("project_logs", project["id"])).json()
        api.close()
    assert "freshness_state" not in body
    assert [row["id"] for row in body["data"]] == ["r1"]


# Filters, projections, shapes ------------------------------------------------------------------


def test_filters_select_the_same_rows_as_python(demo_api: Api, demo_emu: Emulator) -> None:
    pid = project_of(demo_emu)
    truth = demo_emu.store.rows("project_logs", pid)
    rows = demo_api.data(
        sql(
            "project_logs",
            pid,
            where="scores.accuracy >= 0.5 AND metadata.model IN ('gpt-4o', 'gpt-4o-mini')",
        )
    )
    expected = [
        r["id"]
        for r in truth
        if (r["scores"] or {}).get("accuracy") is not None
        and r["scores"]["accuracy"] >= 0.5
        and (r["metadata"] or {}).get("model") in {"gpt-4o", "gpt-4o-mini"}
    ]
    assert expected
    assert ids(rows) == expected


def test_now_minus_interval_uses_the_emulator_clock(demo_api: Api, demo_emu: Emulator) -> None:
    pid = project_of(demo_emu)
    rows = demo_api.data(
        f"select: * | from: project_logs('{pid}') | filter: created > now() - interval 1 day"
    )
    day_ago = FIXED_NOW - 86_400
    truth = demo_emu.store.rows("project_logs", pid)
    expected = [
        r["id"]
        for r in truth
        if datetime.fromisoformat(r["created"].replace("Z", "+00:00")).timestamp() > day_ago
    ]
    assert expected
    assert ids(rows) == expected


def test_select_projects_columns_with_aliases(demo_api: Api, demo_emu: Emulator) -> None:
    pid = project_of(demo_emu)
    select = "SELECT id, metadata.model AS model"
    body = demo_api.btql(f"{select} FROM project_logs('{pid}') LIMIT 3").json()
    assert all(set(row) == {"id", "model"} for row in body["data"])
    assert set(body["schema"]["items"]["properties"]) == {"id", "model"}


def test_traces_shape_returns_every_span_of_matching_traces(
    demo_api: Api, demo_emu: Emulator
) -> None:
    pid = project_of(demo_emu)
    truth = demo_emu.store.rows("project_logs", pid)
    child = next(r for r in truth if not r["is_root"])
    query = f"select: * | from: project_logs('{pid}') traces | filter: id = '{child['id']}'"
    rows = demo_api.data(query)
    trace = [r["id"] for r in truth if r["root_span_id"] == child["root_span_id"]]
    assert ids(rows) == trace
    assert len(trace) > 1


def test_missing_range_filter_warning(demo_api: Api, demo_emu: Emulator) -> None:
    pid = project_of(demo_emu)

    def codes(where: str | None) -> list[str]:
        body = demo_api.btql(sql("project_logs", pid, where=where, limit=1)).json()
        return [warning["code"] for warning in body["warnings"]]

    assert codes(None) == ["missingSegmentEliminationSpecs"]
    assert codes("metadata.model = 'gpt-4o'") == ["missingSegmentEliminationSpecs"]
    assert codes("created > '2026-01-01' OR tags IS NULL") == ["missingSegmentEliminationSpecs"]
    assert codes("created >= '2026-01-01'") == []
    assert codes("_xact_id > '0' AND metadata.model = 'gpt-4o'") == []
    assert demo_emu.demo is not None
    dataset_id = demo_emu.demo.datasets[0]["id"]
    assert demo_api.btql(sql("dataset", dataset_id)).json()["warnings"] == []


# How rows change ------------------------------------------------------------------------------


def xact_watermark_query(project_id: str, after: str) -> str:
    return sql(
        "project_logs", project_id, where=f"_xact_id > '{after}'", order="_xact_id ASC", limit=1000
    )


def test_merge_moves_the_row_past_the_xact_watermark_keeping_created(
    api: Api, emu: Emulator
) -> None:
    project = emu.store.add_project("p")
    pid = project["id"]
    first = emu.store.insert_rows("project_logs", pid, [{"id": "a"}, {"id": "b"}])
    before = {row["id"]: row for row in api.data(xact_watermark_query(pid, "0"))}
    xact = emu.store.merge_rows("project_logs", pid, [{"id": "a", "scores": {"user_rating": 1}}])
    (changed,) = api.data(xact_watermark_query(pid, first))
    assert changed["id"] == "a"
    assert changed["_xact_id"] == xact
    assert changed["created"] == before["a"]["created"]
    assert changed["_pagination_key"] == before["a"]["_pagination_key"]
    assert changed["scores"] == {"user_rating": 1}
    assert api.data(sql("project_logs", pid, where=f"created > '{before['a']['created']}'")) == []


def test_comments_and_deletes_over_http(api: Api, emu: Emulator) -> None:
    pid = emu.store.add_project("p")["id"]
    emu.store.insert_rows("project_logs", pid, [{"id": "a"}, {"id": "b"}])
    emu.store.add_comment("project_logs", pid, "a", "Needs review ✓")
    emu.store.delete_rows("project_logs", pid, ["b"])
    (row,) = api.data(sql("project_logs", pid, where="_xact_id > '0'"))
    assert row["id"] == "a"
    assert row["comments"][0]["comment"]["text"] == "Needs review ✓"


def test_late_row_is_missed_by_a_created_watermark_but_seen_by_xact(
    api: Api, emu: Emulator
) -> None:
    pid = emu.store.add_project("p")["id"]
    emu.store.insert_rows(
        "project_logs", pid, [{"id": "new", "created": "2026-11-18T10:00:00.000Z"}]
    )
    synced = api.data(xact_watermark_query(pid, "0"))
    watermark_created, watermark_xact = synced[-1]["created"], synced[-1]["_xact_id"]
    emu.store.insert_rows(
        "project_logs", pid, [{"id": "late", "created": "2026-11-17T10:00:00.000Z"}]
    )
    assert api.data(sql("project_logs", pid, where=f"created > '{watermark_created}'")) == []
    assert ids(api.data(xact_watermark_query(pid, watermark_xact))) == ["late"]


def test_unpublished_writes_become_visible_below_the_watermark(api: Api, emu: Emulator) -> None:
    pid = emu.store.add_project("p")["id"]
    slow = emu.store.insert_rows("project_logs", pid, [{"id": "slow"}], visible=False)
    emu.store.insert_rows("project_logs", pid, [{"id": "fast"}])
    body = api.btql(xact_watermark_query(pid, "0")).json()
    assert ids(body["data"]) == ["fast"]
    freshness = body["freshness_state"]
    assert (
        int(freshness["last_processed_xact_id"])
        < int(slow)
        <= int(freshness["last_considered_xact_id"])
    )
    emu.store.publish(slow)
    watermark = body["data"][-1]["_xact_id"]
    assert api.data(xact_watermark_query(pid, watermark)) == []  # missed without an overlap
    assert ids(api.data(xact_watermark_query(pid, freshness["last_processed_xact_id"]))) == [
        "slow",
        "fast",
    ]


def test_version_reads_a_dataset_as_of_a_transaction(api: Api, emu: Emulator) -> None:
    project = emu.store.add_project("p")
    dataset = emu.store.add_dataset(project["id"], "d")
    v1 = emu.store.insert_rows("dataset", dataset["id"], [{"id": "a", "expected": "old"}])
    emu.store.merge_rows("dataset", dataset["id"], [{"id": "a", "expected": "new"}])
    emu.store.insert_rows("dataset", dataset["id"], [{"id": "b"}])
    old = api.data(sql("dataset", dataset["id"]), version=v1)
    assert [(r["id"], r["expected"], r["_xact_id"]) for r in old] == [("a", "old", v1)]
    assert api.btql(sql("dataset", dataset["id"]), version="latest").status_code == 400
    assert {r["id"] for r in api.data(sql("dataset", dataset["id"]))} == {"a", "b"}


def test_several_object_ids_in_one_query(api: Api, emu: Emulator) -> None:
    one = emu.store.add_project("one")["id"]
    two = emu.store.add_project("two")["id"]
    emu.store.insert_rows("project_logs", one, [{"id": "a"}])
    emu.store.insert_rows("project_logs", two, [{"id": "b"}])
    query = f"from: project_logs('{one}', '{two}') | sort: _pagination_key asc"
    assert ids(api.data(query)) == ["a", "b"]


def _ident(name: str) -> dict[str, Any]:
    return {"op": "ident", "name": [name]}


def _literal(value: Any) -> dict[str, Any]:
    return {"op": "literal", "value": value}


def _since(experiment_id: str, xact_id: str) -> dict[str, Any]:
    """`experiment_id = <id> AND _xact_id > <xact>`: one object's watermark, as an AST."""
    return {
        "op": "and",
        "left": {"op": "eq", "left": _ident("experiment_id"), "right": _literal(experiment_id)},
        "right": {"op": "gt", "left": _ident("_xact_id"), "right": _literal(xact_id)},
    }


def test_several_objects_each_with_its_own_watermark_page_by_xact_id(
    api: Api, emu: Emulator
) -> None:
    """One request reads many experiments past their own `_xact_id`; the cursor crosses them."""
    project = emu.store.add_project("p")["id"]
    e1, e2, e3 = (emu.store.add_experiment(project, name)["id"] for name in ("e1", "e2", "e3"))
    x1 = emu.store.insert_rows("experiment", e1, [{"id": "a1"}, {"id": "a2"}])
    x2 = emu.store.insert_rows("experiment", e2, [{"id": "b1"}])
    emu.store.insert_rows("experiment", e1, [{"id": "a3"}])
    emu.store.insert_rows("experiment", e2, [{"id": "b2"}, {"id": "b3"}])  # one xact, two rows
    emu.store.insert_rows("experiment", e3, [{"id": "c1"}])  # not asked for
    emu.store.merge_rows("experiment", e1, [{"id": "a1", "output": "moved"}])
    emu.store.insert_rows("experiment", e2, [{"id": "b4"}])

    def query(cursor: str | None) -> dict[str, Any]:
        return {
            "select": [{"op": "star"}],
            "from": {
                "op": "function",
                "name": _ident("experiment"),
                "args": [_literal(e1), _literal(e2)],
            },
            "filter": {"op": "or", "left": _since(e1, x1), "right": _since(e2, x2)},
            "sort": [{"expr": _ident("_xact_id"), "dir": "asc"}],
            "limit": 2,
            "cursor": cursor,
        }

    pages = api.pages(query)
    assert [ids(page["data"]) for page in pages] == [["a3", "b2"], ["b3", "a1"], ["b4"], []]
    rows = all_rows(pages)
    assert [row["experiment_id"] for row in rows] == [e1, e2, e2, e1, e2]
    xacts = [int(row["_xact_id"]) for row in rows]
    assert xacts == sorted(xacts)
    assert rows[3]["output"] == "moved"

    in_list: dict[str, Any] = {
        "op": "and",
        "left": {"op": "in", "left": _ident("experiment_id"), "right": _literal([e1, e3])},
        "right": {"op": "gt", "left": _ident("_xact_id"), "right": _literal(x2)},
    }
    as_nodes = {**in_list, "left": {**in_list["left"], "right": [_literal(e1), _literal(e3)]}}
    for in_filter in (in_list, as_nodes):
        both = {**query(None), "filter": in_filter, "limit": 1000}
        both["from"]["args"] = [_literal(e1), _literal(e3)]
        assert ids(api.data(both)) == ["a3", "c1", "a1"]


# Legacy fetch -----------------------------------------------------------------------------------


def test_fetch_pages_whole_traces_latest_first(demo_api: Api, demo_emu: Emulator) -> None:
    assert demo_emu.demo is not None
    experiment = demo_emu.demo.experiments[0]
    url = f"{demo_emu.url}/v1/experiment/{experiment['id']}/fetch"
    events: list[dict[str, Any]] = []
    body: dict[str, Any] = {"limit": 3}
    while True:
        page = demo_api.session.post(url, json=body).json()
        roots = {event["root_span_id"] for event in page["events"]}
        assert len(roots) <= 3
        events += page["events"]
        if not page.get("cursor"):
            break
        body["cursor"] = page["cursor"]
    truth = demo_emu.store.rows("experiment", experiment["id"])
    assert sorted(ids(events)) == sorted(ids(truth))
    xacts = [int(event["_xact_id"]) for event in events]
    assert xacts == sorted(xacts, reverse=True)
    got = demo_api.get(f"/v1/experiment/{experiment['id']}/fetch", limit=1000).json()["events"]
    assert sorted(ids(got)) == sorted(ids(truth))
    assert (
        demo_api.get(f"/v1/experiment/{experiment['id']}/fetch", max_xact_id="1").status_code == 400
    )


def test_a_row_field_added_later_comes_with_select_star(api: Api, emu: Emulator) -> None:
    dataset = emu.store.add_dataset(emu.store.add_project("p")["id"], "d")["id"]
    emu.store.insert_rows("dataset", dataset, [{"id": "before"}])
    emu.store.add_row_field("dataset", "rubric")
    emu.store.insert_rows("dataset", dataset, [{"id": "after", "rubric": {"strict": True}}])
    for query in (sql("dataset", dataset), ast("dataset", dataset)):
        page = api.btql(query).json()
        rows = {row["id"]: row for row in page["data"]}
        assert rows["after"]["rubric"] == {"strict": True}
        assert "rubric" not in rows["before"]
        assert list(page["schema"]["items"]["properties"])[-1] == "rubric"
        assert page["schema"]["items"]["properties"]["rubric"] == {}
    picked = api.data(f"SELECT id, rubric FROM dataset('{dataset}')")  # noqa: S608
    assert {row["id"]: row["rubric"] for row in picked} == {
        "after": {"strict": True},
        "before": None,
    }
