"""Row streams in one run: every row once, whatever the paging, and loud failure on nonsense."""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any

import pytest

from tests.conftest import API_KEY, demo_of, is_delete_check, select_only, tap_config
from tests.emulator import running_emulator
from tests.emulator.btql import constrained_fields, parse_query
from tests.throwaway_server import answer, serve
from tests.warehouse import ROW_STREAM_NAMES, Target, truth

if TYPE_CHECKING:
    from collections.abc import Callable
    from http.server import BaseHTTPRequestHandler

    from tests.conftest import TapRun
    from tests.emulator import Emulator

# Fields a project_logs query can bound to avoid scanning all history (contract, fact 7).
RANGE_FIELDS = {"created", "_xact_id", "_pagination_key", "id", "root_span_id"}


def _btql_queries(emulator: Emulator) -> list[dict[str, Any]]:
    return [
        r.json_body["query"]
        for r in emulator.request_log
        if r.path == "/btql" and not is_delete_check(r.json_body)
    ]


@pytest.mark.parametrize("page_size", [1000, 7, 1])
def test_a_full_sync_emits_every_row_once(
    emulator: Emulator, run_tap: Callable[..., TapRun], page_size: int
) -> None:
    run = run_tap(tap_config(emulator, page_size=page_size))
    assert run.returncode == 0, run.stderr
    target = Target()
    received = target.load(run.messages)
    assert target.differences(truth(emulator)) == []
    for stream in ROW_STREAM_NAMES:
        assert len(received[stream]) == len(set(received[stream])), f"{stream} repeated rows"
    # The 64 rows sharing one `created` millisecond cross page boundaries below 64.
    same = [
        r
        for r in run.records("project_logs")
        if r["created"].startswith(demo_of(emulator).same_created[:-1])
    ]
    assert len(same) >= 64
    assert {q["limit"] for q in _btql_queries(emulator)} == {page_size}


def test_short_pages_with_a_cursor_are_followed_to_the_end(
    run_tap: Callable[..., TapRun],
) -> None:
    # Pages are cut at 20 kB of rows, far below 1000 rows: most pages come short.
    with running_emulator(api_key=API_KEY, demo_seed=7, page_byte_budget=20_000) as emu:
        run = run_tap(tap_config(emu))
        assert run.returncode == 0, run.stderr
        target = Target()
        target.load(run.messages)
        assert target.differences(truth(emu)) == []
        logs = len(run.records("project_logs"))
        project_log_pages = [q for q in _btql_queries(emu) if "project_logs" in json.dumps(q)]
        # Full pages alone would take one request per project and one to see the end.
        assert len(project_log_pages) > 10 * len(emu.store.objects("project")), logs


def test_every_query_is_bounded_and_sorted_for_keyset_paging(
    emulator: Emulator, run_tap: Callable[..., TapRun]
) -> None:
    run = run_tap(tap_config(emulator, start_date="2026-01-01"))
    assert run.returncode == 0, run.stderr
    queries = _btql_queries(emulator)
    assert {parse_query(q).source for q in queries} == {"project_logs", "experiment", "dataset"}
    for query in queries:
        parsed = parse_query(query)
        assert constrained_fields(parsed.filter) & RANGE_FIELDS, query
        assert [(key.path, key.descending) for key in parsed.sort] == [
            (("_xact_id",), False),
            (("_pagination_key",), False),
        ]
        assert "cursor" not in query
    assert "missingSegmentEliminationSpecs" not in run.stdout + run.stderr


def test_start_date_keeps_rows_created_since(
    emulator: Emulator, run_tap: Callable[..., TapRun]
) -> None:
    since = demo_of(emulator).same_created  # the middle of the demo's week of logs
    run = run_tap(tap_config(emulator, start_date=since))
    assert run.returncode == 0, run.stderr
    target = Target()
    target.load(run.messages)
    expected = truth(emulator, created_since=f"{since[:-1]}000Z")
    assert 0 < len(expected["project_logs"]) < len(truth(emulator)["project_logs"])
    assert target.differences(expected) == []


def test_an_event_stream_selected_alone_reads_its_parents_silently(
    emulator: Emulator, run_tap: Callable[..., TapRun]
) -> None:
    catalog = select_only(json.loads(run_tap(None, "--discover").stdout), "experiment_events")
    run = run_tap(tap_config(emulator), catalog=catalog)
    assert run.returncode == 0, run.stderr
    assert {m["stream"] for m in run.messages if m["type"] in {"RECORD", "SCHEMA"}} == {
        "experiment_events"
    }
    target = Target()
    target.load(run.messages)
    assert target.tables["experiment_events"] == truth(emulator)["experiment_events"]
    partitions = run.final_state["bookmarks"]["experiment_events"]["partitions"]
    assert {p["context"]["experiment_id"] for p in partitions} == {
        e["id"] for e in emulator.store.objects("experiment")
    }


def test_the_schema_types_rows_for_warehouses(
    emulator: Emulator, run_tap: Callable[..., TapRun]
) -> None:
    run = run_tap(tap_config(emulator, project_ids=[demo_of(emulator).projects[0]["id"]]))
    assert run.returncode == 0, run.stderr
    schemas = run.schemas()
    json_union = {"object", "array", "string", "number", "integer", "boolean", "null"}
    for stream, parent_key in (
        ("project_logs", "project_id"),
        ("experiment_events", "experiment_id"),
        ("dataset_events", "dataset_id"),
    ):
        message = schemas[stream]
        assert message["key_properties"] == [parent_key, "id"]
        assert message["bookmark_properties"] == ["created"]
        properties = message["schema"]["properties"]
        for free in ("input", "expected", "metadata"):
            assert set(properties[free]["type"]) == json_union, (stream, free)
        assert properties["created"]["format"] == "date-time"
        assert properties["tags"]["items"]["type"] == ["string"]
    logs = schemas["project_logs"]["schema"]["properties"]
    assert set(logs["output"]["type"]) == set(logs["error"]["type"]) == json_union
    assert "object" in logs["scores"]["type"]
    assert "object" in logs["metrics"]["type"]
    assert logs["span_parents"]["items"]["type"] == ["string"]


# Answers the emulator never gives ------------------------------------------------------------

PROJECT = {"id": "p-1", "org_id": "o-1", "name": "loop"}


def _fake_braintrust(
    btql: Callable[[int], dict[str, Any]],
) -> Callable[[BaseHTTPRequestHandler], None]:
    """One project and no experiments or datasets; `/btql` pages come from `btql(n)`."""
    calls = {"btql": 0}

    def respond(handler: BaseHTTPRequestHandler) -> None:
        if handler.path.startswith("/btql"):
            calls["btql"] += 1
            answer(handler, 200, btql(calls["btql"]))
        elif handler.path.startswith("/v1/project") and "starting_after" not in handler.path:
            answer(handler, 200, {"objects": [PROJECT]})
        else:
            answer(handler, 200, {"objects": []})

    return respond


def _row(row_id: str, xact_id: str, key: int = 1) -> dict[str, Any]:
    return {
        "id": row_id,
        "_xact_id": xact_id,
        "_pagination_key": f"p{key:020d}",
        "created": "2026-11-01T00:00:00.000Z",
        "project_id": PROJECT["id"],
    }


@pytest.mark.parametrize(
    ("pages", "message"),
    [
        pytest.param(
            lambda _n: {"data": [_row("r1", "1000")]},  # the keyset filter ignored
            "led to the same next page twice",
            id="repeated-page",
        ),
        pytest.param(
            lambda n: {"data": [_row(f"r{n}", str(2000 - n), n)]},
            "out of (_xact_id, _pagination_key) order",
            id="xact-order",
        ),
        pytest.param(
            lambda _n: {"data": [{**_row("r1", "5"), "_pagination_key": None}]},
            "row 'r1' without a `_pagination_key` (None), which paging needs",
            id="no-pagination-key",
        ),
        pytest.param(
            lambda _n: {"data": [_row("r1", "latest")]},
            "without a valid _xact_id ('latest')",
            id="bad-xact",
        ),
        pytest.param(
            lambda _n: {"rows": []},
            "without a `data` list of rows",
            id="no-data",
        ),
        pytest.param(
            lambda _n: {"data": [{**_row("r1", "5"), "project_id": "p-not-asked-for"}]},
            "row 'r1' of project_id 'p-not-asked-for', which the query did not ask for",
            id="foreign-object",
        ),
        pytest.param(
            lambda _n: {"data": [{**_row("r1", "5"), "created": "yesterday"}]},
            "row 'r1' has an unreadable `created`",
            id="bad-created",
        ),
        pytest.param(
            lambda _n: {"data": [{**_row("r1", "5"), "created": 1_763_000_000}]},
            "row 'r1' has an unreadable `created`: 1763000000 is not an ISO-8601 string",
            id="numeric-created",
        ),
    ],
)
def test_nonsense_from_btql_stops_the_run_clearly(
    run_tap: Callable[..., TapRun], pages: Callable[[int], dict[str, Any]], message: str
) -> None:
    with serve(_fake_braintrust(pages)) as (api_url, _):
        run = run_tap({"api_key": API_KEY, "api_url": api_url})
    assert run.returncode == 1
    last_line = run.stderr.strip().splitlines()[-1]
    assert message in last_line, run.stderr[-2000:]
    assert "Traceback" not in run.stderr


def test_a_row_without_created_is_emitted_with_a_null_created(
    run_tap: Callable[..., TapRun],
) -> None:
    row = {k: v for k, v in _row("r1", "5").items() if k != "created"}
    with serve(_fake_braintrust(lambda n: {"data": [row] if n == 1 else []})) as (api_url, _):
        run = run_tap({"api_key": API_KEY, "api_url": api_url})
    assert run.returncode == 0, run.stderr
    assert [(r["id"], r["created"]) for r in run.records("project_logs")] == [("r1", None)]


def test_a_malformed_watermark_in_state_is_named(
    emulator: Emulator, run_tap: Callable[..., TapRun]
) -> None:
    project = demo_of(emulator).projects[0]
    state = {
        "bookmarks": {
            "project_logs": {
                "partitions": [
                    {"context": {"project_id": project["id"]}, "xact_id_watermark": "12abc"}
                ]
            }
        }
    }
    run = run_tap(tap_config(emulator, project_ids=[project["id"]]), state=state)
    assert run.returncode == 1
    last_line = run.stderr.strip().splitlines()[-1]
    assert "xact_id_watermark '12abc'" in last_line
    assert project["id"] in last_line


def test_a_zero_watermark_is_a_watermark_not_a_missing_one(
    emulator: Emulator, run_tap: Callable[..., TapRun]
) -> None:
    # "0" (e.g. a server that reported nothing processed yet) means "read every row", even
    # beside a `created` bookmark; only a missing watermark falls back to the bookmark.
    project = demo_of(emulator).projects[0]
    partition = {
        "context": {"project_id": project["id"]},
        "replication_key": "created",
        "replication_key_value": "2099-01-01T00:00:00.000000Z",
    }
    config = tap_config(emulator, project_ids=[project["id"]])
    zero = run_tap(
        config,
        state={
            "bookmarks": {"project_logs": {"partitions": [{**partition, "xact_id_watermark": "0"}]}}
        },
    )
    assert zero.returncode == 0, zero.stderr
    expected = truth(emulator)["project_logs"]
    assert len(zero.records("project_logs")) == sum(k[0] == project["id"] for k in expected)
    assert "no xact_id_watermark" not in zero.stderr

    missing = run_tap(config, state={"bookmarks": {"project_logs": {"partitions": [partition]}}})
    assert missing.returncode == 0, missing.stderr
    assert missing.records("project_logs") == []
    assert "the state has a `created` bookmark but no xact_id_watermark" in missing.stderr
