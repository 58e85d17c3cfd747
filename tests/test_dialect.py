"""The tap speaks Braintrust's proven dialect, and pays nothing for it.

Every emulator of the suite is strict: it answers 400 to any construct outside
`tests/emulator/dialect.py`. Here the tap also meets a data plane that behaves like the 2025
BTQL reference (no cursor on a sorted query), queries Braintrust finds too wide, one
transaction bigger than a page, a summary shape that refuses whole previews and a report
whose SQL ends in a comment.
"""

from __future__ import annotations

import json
import threading
import time
from typing import TYPE_CHECKING, Any

import pytest

from tap_braintrust.queries import FALLBACK_PREVIEW_LENGTH, MAX_IDS_PER_LIST
from tests.conftest import API_KEY, is_delete_check, tap_config
from tests.emulator import FaultRule, running_emulator
from tests.warehouse import ROW_STREAMS, Target, truth

if TYPE_CHECKING:
    from collections.abc import Callable

    from tests.conftest import TapRun
    from tests.emulator import Emulator

FIXED_NOW = 1_795_000_000.0


def _btql(emu: Emulator) -> list[Any]:
    """The `/btql` requests of reads (delete detection's counts left out)."""
    return [
        r
        for r in emu.request_log
        if r.path == "/btql" and r.host == "api" and not is_delete_check(r.json_body)
    ]


def _ids_named(request: Any) -> int:
    return len(request.json_body["query"]["from"]["args"])


def test_against_a_2025_data_plane_every_row_arrives_for_the_same_requests(
    run_tap: Callable[..., TapRun],
) -> None:
    counts = {}
    for sorted_cursor in (True, False):
        with running_emulator(
            api_key=API_KEY,
            demo_seed=7,
            clock=lambda: FIXED_NOW,
            page_byte_budget=100_000,
            sorted_cursor=sorted_cursor,
        ) as emu:
            run = run_tap(tap_config(emu, page_size=200))
            assert run.returncode == 0, run.stderr
            target = Target()
            target.load(run.messages)
            assert target.differences(truth(emu)) == []
            counts[sorted_cursor] = len(_btql(emu))
            assert all("cursor" not in r.json_body["query"] for r in _btql(emu))
    assert counts[False] == counts[True]


def test_one_transaction_bigger_than_a_page_arrives_once_and_whole(
    run_tap: Callable[..., TapRun],
) -> None:
    with running_emulator(api_key=API_KEY, sorted_cursor=False) as emu:
        project = emu.store.add_project("bulk")
        rows = [{"id": f"r{n:03d}", "input": n} for n in range(57)]
        emu.store.insert_rows("project_logs", project["id"], rows)
        config = tap_config(emu, page_size=10, project_ids=[project["id"]])
        run = run_tap(config)
        assert run.returncode == 0, run.stderr
        ids = [r["id"] for r in run.records("project_logs")]
        assert sorted(ids) == [row["id"] for row in rows]  # each once
        assert len(_btql(emu)) == 7  # six pages of 10 or fewer, and the empty end

        # Killed inside that transaction (the fourth page never answers): the next run
        # reads the transaction again, so nothing of it is lost.
        emu.store.merge_rows("project_logs", project["id"], [{"id": "r000", "tags": ["x"]}])
        more = [{"id": f"s{n:03d}"} for n in range(35)]
        emu.store.insert_rows("project_logs", project["id"], more)
        emu.faults.add(FaultRule("status", path="/btql", status=400, skip=3))
        broken = run_tap(config, state=run.final_state)
        assert broken.returncode == 1
        emu.faults.clear()
        resumed = run_tap(config, state=broken.final_state or run.final_state)
        assert resumed.returncode == 0, resumed.stderr
        got = {r["id"] for r in broken.records("project_logs") + resumed.records("project_logs")}
        assert got >= {"r000", *(row["id"] for row in more)}


def test_a_query_too_wide_is_halved_and_the_halves_go_on_from_where_it_got(
    run_tap: Callable[..., TapRun],
) -> None:
    with running_emulator(api_key=API_KEY, page_byte_budget=20_000) as emu:
        for n in range(6):
            project = emu.store.add_project(f"p{n}")
            emu.store.insert_rows(
                "project_logs",
                project["id"],
                [{"id": f"{n}-{k}", "input": "x" * 500} for k in range(30)],
            )
        # The first page of the six-project query is answered, then it is "too wide".
        rule = emu.faults.add(FaultRule("status", path="/btql", status=413, min_ids=4, skip=1))
        run = run_tap(tap_config(emu, max_backoff_seconds=0))
        assert run.returncode == 0, run.stderr
        assert emu.faults.fired(rule) == 1
        keys = [(r["project_id"], r["id"]) for r in run.records("project_logs")]
        assert len(keys) == len(set(keys)) == 180  # every row once: the halves resumed
        named = [_ids_named(r) for r in _btql(emu) if "project_logs" in json.dumps(r.json_body)]
        assert named[:3] == [6, 6, 3]
        assert max(named[2:]) == 3  # the learned size holds for the rest of the run
        assert "reading the rest of its 6 objects in two queries" in run.stderr
        assert "at most 3 per query for the rest of this run" in run.stderr


def test_a_query_that_keeps_failing_is_halved_after_three_tries(
    run_tap: Callable[..., TapRun],
) -> None:
    with running_emulator(api_key=API_KEY, demo_seed=7) as emu:
        rule = emu.faults.add(FaultRule("status", path="/btql", status=504, min_ids=2))
        run = run_tap(tap_config(emu, max_backoff_seconds=0))
        assert run.returncode == 0, run.stderr
        logs = [
            _ids_named(r)
            for r in _btql(emu)
            if r.json_body["query"]["from"]["name"]["name"] == ["project_logs"]
        ]
        # Three tries of the three projects, three of two, then one project at a time.
        assert logs[:6] == [3, 3, 3, 2, 2, 2]
        assert set(logs[6:]) == {1}
        # No query naming several objects was tried more than three times, of any kind
        # (delete detection's counts included).
        tries: dict[str, int] = {}
        for request in emu.request_log:
            if request.path == "/btql" and request.status == 504:
                query = request.json_body["query"]
                if isinstance(query, dict):
                    query = dict(query, limit=None)  # the page size halves
                body = json.dumps(query, sort_keys=True)
                tries[body] = tries.get(body, 0) + 1
        assert emu.faults.fired(rule) == sum(tries.values())
        assert max(tries.values()) == 3
        target = Target()
        target.load(run.messages)
        assert target.differences(truth(emu)) == []


def test_a_413_naming_one_object_fails_the_run_clearly(
    run_tap: Callable[..., TapRun],
) -> None:
    with running_emulator(api_key=API_KEY, demo_seed=7) as emu:
        emu.faults.add(FaultRule("status", path="/btql", status=413))
        run = run_tap(tap_config(emu, max_backoff_seconds=0))
        assert run.returncode == 1
        assert "Braintrust refuses the request itself; narrow the sync" in run.stderr
        named = [_ids_named(r) for r in _btql(emu)]
        assert named[0] > 2
        assert named == [-(-named[0] // 2**n) for n in range(len(named))]
        assert named[-1] == 1
        assert {r.json_body["query"]["limit"] for r in _btql(emu)} == {1000}  # not the page


def _nodes(node: Any) -> list[dict[str, Any]]:
    """A filter node and every node under it."""
    if not isinstance(node, dict):
        return []
    return [node, *(n for child in node.get("children", []) for n in _nodes(child))]


def _traces_stream(shape: str, **extra: Any) -> dict[str, Any]:
    return {"name": f"{shape}_of_logs", "from": "project_logs", "shape": shape, **extra}


@pytest.mark.parametrize("shape", ["traces", "summary"])
def test_traces_go_by_in_lists_of_at_most_100_roots(
    run_tap: Callable[..., TapRun], shape: str
) -> None:
    with running_emulator(api_key=API_KEY, demo_seed=7, sorted_cursor=False) as emu:
        config = tap_config(emu, custom_streams=[_traces_stream(shape)])
        first = run_tap(config)
        assert first.returncode == 0, first.stderr
        # Every trace of a project changes: more than one list's worth.
        project = emu.demo.projects[0]["id"]  # type: ignore[union-attr]
        roots = {r["root_span_id"] for r in emu.store.rows("project_logs", project)}
        assert len(roots) > MAX_IDS_PER_LIST
        emu.store.merge_rows(
            "project_logs",
            project,
            [{"id": r["id"], "tags": ["seen"]} for r in emu.store.rows("project_logs", project)],
        )
        emu.request_log.clear()
        run = run_tap(config, state=first.final_state)
        assert run.returncode == 0, run.stderr
        sizes = [
            node["right"]["value"]
            for r in _btql(emu)
            if r.json_body["query"]["select"] == [{"op": "star"}]
            for node in _nodes(r.json_body["query"].get("filter"))
            if node.get("op") == "in"
        ]
        assert sizes
        assert max(len(values) for values in sizes) == MAX_IDS_PER_LIST
        name = f"{shape}_of_logs"
        if shape == "summary":
            got = {r["root_span_id"] for r in run.records(name) if r["project_id"] == project}
        else:
            got = {r["root_span_id"] for r in run.records(name) if r["project_id"] == project}
        assert got == roots


def test_a_filtered_traces_stream_keeps_the_traces_shapes_meaning(
    run_tap: Callable[..., TapRun],
) -> None:
    # Traces with an error span, whole: the filter finds them, the fetch takes every span.
    with running_emulator(api_key=API_KEY, demo_seed=7) as emu:
        stream = _traces_stream("traces", filter="error IS NOT NULL")
        run = run_tap(tap_config(emu, custom_streams=[stream]))
        assert run.returncode == 0, run.stderr
        expected = set()
        for project in emu.store.objects("project"):
            spans = emu.store.rows("project_logs", project["id"])
            failing = {s["root_span_id"] for s in spans if s.get("error") is not None}
            expected |= {(project["id"], s["id"]) for s in spans if s["root_span_id"] in failing}
        got = [(r["project_id"], r["id"]) for r in run.records("traces_of_logs")]
        assert expected
        assert sorted(got) == sorted(expected)


def test_summaries_fall_back_to_long_previews_when_whole_ones_are_refused(
    run_tap: Callable[..., TapRun],
) -> None:
    with running_emulator(api_key=API_KEY, demo_seed=7, full_summary_previews=False) as emu:
        run = run_tap(tap_config(emu, custom_streams=[_traces_stream("summary")]))
        assert run.returncode == 0, run.stderr
        assert f"asking for values cut at {FALLBACK_PREVIEW_LENGTH} characters" in run.stderr
        previews = [r.json_body["query"].get("preview_length") for r in _btql(emu)]
        assert previews.count(-1) == 1  # asked once, not again after the 400
        assert FALLBACK_PREVIEW_LENGTH in previews
        traces = {
            (p["id"], s["root_span_id"])
            for p in emu.store.objects("project")
            for s in emu.store.rows("project_logs", p["id"])
        }
        got = {(r["project_id"], r["root_span_id"]) for r in run.records("summary_of_logs")}
        assert got == traces


def test_keyset_paging_reads_summaries_without_any_cursor(
    run_tap: Callable[..., TapRun],
) -> None:
    with running_emulator(api_key=API_KEY, demo_seed=7, page_byte_budget=30_000) as emu:
        config = tap_config(emu, keyset_paging=True, custom_streams=[_traces_stream("summary")])
        run = run_tap(config)
        assert run.returncode == 0, run.stderr
        assert all(r.json_body["query"].get("cursor") is None for r in _btql(emu))
        traces = {
            (p["id"], s["root_span_id"])
            for p in emu.store.objects("project")
            for s in emu.store.rows("project_logs", p["id"])
        }
        got = [(r["project_id"], r["root_span_id"]) for r in run.records("summary_of_logs")]
        assert sorted(got) == sorted(traces)  # each once
        assert "reads of trace summaries page by the traces not yet answered" in run.stderr


def test_how_each_kind_of_query_pages_is_logged_once(run_tap: Callable[..., TapRun]) -> None:
    with running_emulator(api_key=API_KEY, demo_seed=7) as emu:
        run = run_tap(tap_config(emu, custom_streams=[_traces_stream("summary")]))
        assert run.returncode == 0, run.stderr
        line = "reads of rows written since the watermark page by keyset on (_xact_id"
        assert run.stderr.count(line) == 1
        assert run.stderr.count("reads of trace summaries page by the server cursor") == 1


def test_a_reports_sql_ending_in_a_comment_still_pages(run_tap: Callable[..., TapRun]) -> None:
    with running_emulator(api_key=API_KEY, demo_seed=7, page_byte_budget=20_000) as emu:
        project = emu.demo.projects[0]["id"]  # type: ignore[union-attr]
        sql = f"SELECT id, input FROM project_logs('{project}') -- every span"  # noqa: S608
        report = {"name": "spans_report", "sql": sql, "primary_keys": ["id"]}
        run = run_tap(tap_config(emu, custom_streams=[report]))
        assert run.returncode == 0, run.stderr
        ids = [r["id"] for r in run.records("spans_report")]
        assert sorted(ids) == sorted(r["id"] for r in emu.store.rows("project_logs", project))
        pages = [r.json_body["query"] for r in _btql(emu) if isinstance(r.json_body["query"], str)]
        assert len(pages) > 2
        assert all("\nOFFSET '" in text for text in pages[1:])


def test_the_strict_emulator_refuses_what_the_previous_release_sent(emulator: Emulator) -> None:
    import requests  # noqa: PLC0415

    old = {
        "select": [{"op": "star"}],
        "from": {
            "op": "function",
            "name": {"op": "ident", "name": ["project_logs"]},
            "args": [
                {"op": "literal", "value": p["id"]} for p in emulator.store.objects("project")
            ],
        },
        "filter": {
            "op": "gt",
            "left": {"op": "ident", "name": ["_xact_id"]},
            "right": {"op": "literal", "value": "0"},
        },
        "sort": [{"expr": {"op": "ident", "name": ["_xact_id"]}, "dir": "asc"}],
        "limit": 1000,
        "cursor": None,
    }
    answer = requests.post(
        f"{emulator.url}/btql",
        json={"query": old, "fmt": "json"},
        headers={"Authorization": f"Bearer {API_KEY}"},
        timeout=30,
    )
    assert answer.status_code == 400
    assert "_xact_id compared with '0'" in answer.json()["Message"]


def test_row_streams_see_every_stream_of_the_demo(run_tap: Callable[..., TapRun]) -> None:
    # The whole default sync under the strict emulator, with many small pages.
    with running_emulator(api_key=API_KEY, demo_seed=7, page_byte_budget=30_000) as emu:
        run = run_tap(tap_config(emu, page_size=50, objects_per_query=2))
        assert run.returncode == 0, run.stderr
        target = Target()
        target.load(run.messages)
        assert target.differences(truth(emu)) == []
        assert {s.name for s in ROW_STREAMS} <= {m.get("stream") for m in run.messages}


def test_429s_do_not_count_towards_halving_a_group(run_tap: Callable[..., TapRun]) -> None:
    with running_emulator(api_key=API_KEY, demo_seed=7) as emu:
        emu.faults.add(FaultRule("status", path="/btql", status=429, retry_after=0, times=2))
        emu.faults.add(FaultRule("status", path="/btql", status=502, times=1))
        run = run_tap(tap_config(emu, max_backoff_seconds=0))
        assert run.returncode == 0, run.stderr
        assert "in two queries" not in run.stderr
        first = _btql(emu)[:4]
        assert [r.status for r in first] == [429, 429, 502, 200]
        assert len({_ids_named(r) for r in first}) == 1


def test_a_read_of_an_object_written_all_the_while_still_ends(
    run_tap: Callable[..., TapRun],
) -> None:
    with running_emulator(api_key=API_KEY) as emu:
        project = emu.store.add_project("busy")["id"]
        emu.store.insert_rows("project_logs", project, [{"id": f"old-{n}"} for n in range(60)])
        writing = threading.Event()
        writing.set()

        def keep_writing() -> None:
            n = 0
            while writing.is_set():
                emu.store.insert_rows("project_logs", project, [{"id": f"new-{n}"}])
                n += 1
                time.sleep(0.002)

        writer = threading.Thread(target=keep_writing, daemon=True)
        writer.start()
        try:
            run = run_tap(tap_config(emu, page_size=10, project_ids=[project]))
        finally:
            writing.clear()
            writer.join()
        assert run.returncode == 0, run.stderr
        ids = {r["id"] for r in run.records("project_logs")}
        assert {f"old-{n}" for n in range(60)} <= ids
        # The read ended at what its first page said was visible, not at the writer's pace.
        reads = [r for r in _btql(emu) if "project_logs" in json.dumps(r.json_body)]
        assert len(reads) <= 2 + len(ids) // 10, (len(reads), len(ids))


def test_objects_whose_watermarks_are_seconds_apart_share_one_query(
    run_tap: Callable[..., TapRun],
) -> None:
    # Queries end at their own server horizon, so one run leaves groups seconds apart.
    with running_emulator(api_key=API_KEY, demo_seed=7) as emu:
        first = run_tap(tap_config(emu))
        assert first.returncode == 0, first.stderr
        state = first.final_state
        partitions = state["bookmarks"]["project_logs"]["partitions"]
        for seconds, partition in enumerate(partitions):
            partition["xact_id_watermark"] = str(
                int(partition["xact_id_watermark"]) - (seconds * 7 << 16)
            )
        emu.request_log.clear()
        run = run_tap(tap_config(emu), state=state)
        assert run.returncode == 0, run.stderr
        logs = [r for r in _btql(emu) if "project_logs" in json.dumps(r.json_body)]
        assert [_ids_named(r) for r in logs] == [len(partitions)]  # one read, ended empty
        after = run.final_state["bookmarks"]["project_logs"]["partitions"]
        assert len({p["xact_id_watermark"] for p in after}) == 1  # together again
