"""Rows deleted from experiments and datasets arrive marked, as last read (`detect_deletes`).

Every run here talks HTTP to the emulator, whose `version` reads fold each row's stored
versions, so "as last read" is checked against what the previous run actually sent.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import pytest

from tap_braintrust.timestamps import normalize_timestamp
from tests.activity import START, ManualClock, demo_before_a_run
from tests.conftest import API_KEY, tap_config
from tests.emulator import FaultRule, running_emulator
from tests.emulator.btql import parse_query

if TYPE_CHECKING:
    from collections.abc import Callable

    from tests.conftest import TapRun
    from tests.emulator import Emulator
    from tests.emulator.store import ObjectKind

DATA = Path(__file__).parent / "data"
MARK = "_sdc_deleted_at"
ROW_STREAMS: dict[Literal["experiment", "dataset"], str] = {
    "experiment": "experiment_events",
    "dataset": "dataset_events",
}


def _btql(emu: Emulator) -> list[dict[str, Any]]:
    return [r.json_body for r in emu.request_log if r.path == "/btql"]


def _marked(run: TapRun, source: Literal["experiment", "dataset"]) -> dict[str, dict[str, Any]]:
    return {r["id"]: r for r in run.records(ROW_STREAMS[source]) if r.get(MARK)}


def _live(run: TapRun, source: Literal["experiment", "dataset"]) -> dict[str, dict[str, Any]]:
    return {r["id"]: r for r in run.records(ROW_STREAMS[source]) if not r.get(MARK)}


def _objects(emu: Emulator, kind: ObjectKind) -> list[str]:
    return [obj["id"] for obj in emu.store.objects(kind)]


def _ok(run: TapRun) -> TapRun:
    assert run.returncode == 0, run.stderr[-4000:]
    return run


def _counts(emu: Emulator) -> list[dict[str, Any]]:
    return [b for b in _btql(emu) if isinstance(b["query"], str) and "count(1)" in b["query"]]


def test_deleted_rows_arrive_marked_with_the_content_last_sent(
    emulator: Emulator, run_tap: Callable[..., TapRun]
) -> None:
    first = _ok(run_tap(tap_config(emulator)))
    sent = {s: {r["id"]: r for r in first.records(ROW_STREAMS[s])} for s in ROW_STREAMS}
    deleted: dict[Literal["experiment", "dataset"], set[str]] = {}
    for source in ROW_STREAMS:
        for object_id in _objects(emulator, source)[:2]:
            doomed = [row["id"] for row in emulator.store.rows(source, object_id)[:3]]
            emulator.store.delete_rows(source, object_id, doomed)
            deleted.setdefault(source, set()).update(doomed)

    second = _ok(run_tap(tap_config(emulator), state=first.final_state))

    for source, gone in deleted.items():
        found = _marked(second, source)
        assert set(found) == gone, source
        for row_id, record in found.items():
            # Everything the first run sent, unchanged, plus the marker (a UTC time).
            last_sent = {k: v for k, v in sent[source][row_id].items() if k != MARK}
            assert {k: v for k, v in record.items() if k != MARK} == last_sent
            assert record[MARK].endswith("Z") or "+00:00" in record[MARK]
        assert not _live(second, source).keys() & gone
    schemas = second.schemas()
    for stream in ROW_STREAMS.values():
        assert MARK in schemas[stream]["schema"]["properties"]

    # Nothing more is deleted: the next run marks nothing and reads no ids.
    emulator.request_log.clear()
    third = _ok(run_tap(tap_config(emulator), state=second.final_state))
    assert not any(_marked(third, source) for source in ROW_STREAMS)
    assert len(_counts(emulator)) == 2  # one count per kind, nothing else
    assert all(b.get("version") is None for b in _btql(emulator))
    assert len(_btql(emulator)) <= 8  # an idle run on an org the demo's size


def test_the_marker_is_always_selected(run_tap: Callable[..., TapRun], tmp_path: Path) -> None:
    with running_emulator(api_key=API_KEY, demo_seed=7) as emu:
        catalog = json.loads(_ok(run_tap(tap_config(emu), "--discover")).stdout)
    for entry in catalog["streams"]:
        if entry["tap_stream_id"] not in {
            "experiment_events",
            "dataset_events",
            "projects",
            "experiments",
            "datasets",
        }:
            continue
        marker = next(m for m in entry["metadata"] if m["breadcrumb"] == ["properties", MARK])
        assert marker["metadata"]["inclusion"] == "automatic", entry["tap_stream_id"]


def test_a_row_written_again_under_its_id_is_live_again(
    emulator: Emulator, run_tap: Callable[..., TapRun]
) -> None:
    first = _ok(run_tap(tap_config(emulator)))
    dataset = _objects(emulator, "dataset")[0]
    row = emulator.store.rows("dataset", dataset)[0]
    emulator.store.delete_rows("dataset", dataset, [row["id"]])
    second = _ok(run_tap(tap_config(emulator), state=first.final_state))
    assert set(_marked(second, "dataset")) == {row["id"]}

    emulator.store.insert_rows("dataset", dataset, [{"id": row["id"], "input": "again"}])
    third = _ok(run_tap(tap_config(emulator), state=second.final_state))
    assert _live(third, "dataset")[row["id"]]["input"] == "again"
    assert not _marked(third, "dataset")
    # Deleted once more, it is marked once more, with the content written again.
    emulator.store.delete_rows("dataset", dataset, [row["id"]])
    fourth = _ok(run_tap(tap_config(emulator), state=third.final_state))
    assert _marked(fourth, "dataset")[row["id"]]["input"] == "again"


def test_the_counts_hold_through_every_kind_of_write_in_one_window(
    run_tap: Callable[..., TapRun],
) -> None:
    """Inserts, replaces, merges, deletes of old and new rows, re-inserts, late deletes."""
    clock = ManualClock(START)
    with demo_before_a_run(clock) as emu:
        first = _ok(run_tap(tap_config(emu)))
        dataset = _objects(emu, "dataset")[0]
        old = [row["id"] for row in emu.store.rows("dataset", dataset)]
        clock.advance(120)
        # A window of everything at once.
        emu.store.insert_rows(
            "dataset", dataset, [{"id": f"new-{n}", "input": n} for n in range(5)]
        )
        emu.store.insert_rows("dataset", dataset, [{"id": old[0], "input": "replaced"}])
        emu.store.merge_rows("dataset", dataset, [{"id": old[1], "expected": "fixed"}])
        emu.store.delete_rows("dataset", dataset, [old[2], old[3]])
        emu.store.insert_rows("dataset", dataset, [{"id": "born-and-gone", "input": 0}])
        emu.store.delete_rows("dataset", dataset, ["born-and-gone"])  # never sent: no mark
        clock.advance(120)
        second = _ok(run_tap(tap_config(emu), state=first.final_state))
        assert set(_marked(second, "dataset")) == {old[2], old[3]}
        assert {"new-0", old[0], old[1]} <= set(_live(second, "dataset"))

        # Next window: a new row sent last run is deleted, a deleted one comes back, and
        # another delete is written but not yet visible to queries.
        clock.advance(120)
        emu.store.delete_rows("dataset", dataset, ["new-1"])
        emu.store.insert_rows("dataset", dataset, [{"id": old[2], "input": "back"}])
        late = emu.store.delete_rows("dataset", dataset, [old[4]], visible=False)
        clock.advance(120)
        third = _ok(run_tap(tap_config(emu), state=second.final_state))
        assert set(_marked(third, "dataset")) == {"new-1"}
        assert _live(third, "dataset")[old[2]]["input"] == "back"

        # The late delete becomes visible: the next run finds it.
        emu.store.publish(late)
        clock.advance(120)
        fourth = _ok(run_tap(tap_config(emu), state=third.final_state))
        assert set(_marked(fourth, "dataset")) == {old[4]}
        # And then the counts agree again: a run with no change reads no ids.
        emu.request_log.clear()
        clock.advance(120)
        fifth = _ok(run_tap(tap_config(emu), state=fourth.final_state))
        assert not _marked(fifth, "dataset")
        assert all(b.get("version") is None for b in _btql(emu))


def test_one_deleted_record_in_a_big_dataset_costs_a_few_requests(
    run_tap: Callable[..., TapRun],
) -> None:
    rows = 20_000
    with running_emulator(api_key=API_KEY) as emu:
        project = emu.store.add_project("big")
        dataset = emu.store.add_dataset(project["id"], "golden")["id"]
        for start in range(0, rows, 10_000):
            emu.store.insert_rows(
                "dataset",
                dataset,
                [{"id": f"r{n:06d}", "input": n} for n in range(start, start + 10_000)],
            )
        first = _ok(run_tap(tap_config(emu)))
        emu.store.delete_rows("dataset", dataset, ["r012345"])
        emu.request_log.clear()
        second = _ok(run_tap(tap_config(emu), state=first.final_state))
        assert set(_marked(second, "dataset")) == {"r012345"}
        detection = [
            b
            for b in _btql(emu)
            if isinstance(b["query"], str) or b.get("version") or _reads_ids(b)
        ]
        # The kind's count; halving 20,000 rows down to a page, a count at both versions
        # per halving (and one more where a half is empty); the ids of that page at both
        # versions, and the row's content.
        budget = 1 + 2 * (math.ceil(math.log2(rows / 1000)) + 2) + 3 + 1
        assert len(detection) <= budget, [_describe(b) for b in detection]
        print(f"\none deleted record of {rows}: {len(detection)} detection requests")  # noqa: T201


def _reads_ids(body: dict[str, Any]) -> bool:
    query = body["query"]
    return isinstance(query, dict) and [s.get("alias") for s in query["select"]] == [
        "id",
        "_pagination_key",
    ]


def _describe(body: dict[str, Any]) -> str:
    query = body["query"]
    return query if isinstance(query, str) else json.dumps(query)[:200]


def test_without_pinned_counts_deletes_are_found_by_reading_ids(
    run_tap: Callable[..., TapRun],
) -> None:
    with running_emulator(api_key=API_KEY, demo_seed=7, pinned_counts=False) as emu:
        first = _ok(run_tap(tap_config(emu)))
        dataset = max(_objects(emu, "dataset"), key=lambda d: len(emu.store.rows("dataset", d)))
        victim = emu.store.rows("dataset", dataset)[-1]["id"]
        emu.store.delete_rows("dataset", dataset, [victim])
        second = _ok(run_tap(tap_config(emu), state=first.final_state))
        assert set(_marked(second, "dataset")) == {victim}


def test_a_server_refusing_counts_skips_detection_and_still_syncs(
    run_tap: Callable[..., TapRun],
) -> None:
    with running_emulator(api_key=API_KEY, demo_seed=7) as emu:
        first = _ok(run_tap(tap_config(emu)))
        # A self-hosted data plane older than SQL support answers every SQL query 400.
        emu.faults.add(FaultRule("status", path="/btql", status=400, sql_only=True))
        dataset = _objects(emu, "dataset")[0]
        emu.store.delete_rows("dataset", dataset, [emu.store.rows("dataset", dataset)[0]["id"]])
        emu.store.insert_rows("dataset", dataset, [{"id": "fresh", "input": 1}])
        second = _ok(run_tap(tap_config(emu), state=first.final_state))
        assert "fresh" in _live(second, "dataset")
        assert not _marked(second, "dataset")
        assert "delete detection skipped this run" in second.stderr
        # Its counts are kept, so a run Braintrust answers finds the delete after all.
        emu.faults.clear()
        third = _ok(run_tap(tap_config(emu), state=second.final_state))
        assert len(_marked(third, "dataset")) == 1


def test_counts_apply_start_date_and_rows_before_it_are_never_marked(
    run_tap: Callable[..., TapRun],
) -> None:
    clock = ManualClock(START)
    with demo_before_a_run(clock) as emu:
        dataset = _objects(emu, "dataset")[0]
        rows = sorted(emu.store.rows("dataset", dataset), key=lambda row: row["created"])
        start_date = rows[len(rows) // 2]["created"]
        config = tap_config(emu, start_date=start_date)
        first = _ok(run_tap(config))
        before, after = rows[0]["id"], rows[-1]["id"]
        emu.store.delete_rows("dataset", dataset, [before, after])
        clock.advance(120)
        emu.request_log.clear()
        second = _ok(run_tap(config, state=first.final_state))
        assert set(_marked(second, "dataset")) == {after}
        for body in _counts(emu):
            assert f"created >= '{normalize_timestamp(start_date)}'" in body["query"], body["query"]


def test_project_logs_and_custom_streams_are_never_counted_or_marked(
    emulator: Emulator, run_tap: Callable[..., TapRun]
) -> None:
    custom = [{"name": "golden", "from": "dataset", "filter": "is_root"}]
    config = tap_config(emulator, custom_streams=custom)
    first = _ok(run_tap(config))
    dataset = _objects(emulator, "dataset")[0]
    project = _objects(emulator, "project")[0]
    emulator.store.delete_rows(
        "dataset", dataset, [emulator.store.rows("dataset", dataset)[0]["id"]]
    )
    logs = emulator.store.rows("project_logs", project)
    emulator.store.delete_rows("project_logs", project, [logs[0]["id"]])
    emulator.request_log.clear()
    second = _ok(run_tap(config, state=first.final_state))
    assert not [r for r in second.records("golden") if r.get(MARK)]
    assert not [r for r in second.records("project_logs") if r.get(MARK)]
    assert MARK not in second.schemas()["project_logs"]["schema"]["properties"]
    assert {parse_query(b["query"]).source for b in _counts(emulator)} == {"experiment", "dataset"}


def test_state_from_the_previous_release_finds_deletes_from_its_first_run(
    run_tap: Callable[..., TapRun],
) -> None:
    # Written by tap-braintrust at 3423695 (before delete detection) after a full sync of
    # `demo_before_a_run(ManualClock(START))`.
    state = json.loads((DATA / "state-3423695.json").read_text())
    clock = ManualClock(START)
    with demo_before_a_run(clock) as emu:
        dataset = _objects(emu, "dataset")[0]
        early = emu.store.rows("dataset", dataset)[0]["id"]
        emu.store.delete_rows("dataset", dataset, [early])  # before the upgrade: not knowable
        emu.request_log.clear()
        upgraded = _ok(run_tap(tap_config(emu), state=state))
        assert not _marked(upgraded, "dataset")
        reads = [b for b in _btql(emu) if not isinstance(b["query"], str)]
        assert all(b.get("version") is None for b in reads)
        assert len(_counts(emu)) == 2  # one count per kind sets each object's baseline
        victim = emu.store.rows("dataset", dataset)[0]["id"]
        emu.store.delete_rows("dataset", dataset, [victim])
        clock.advance(120)
        after = _ok(run_tap(tap_config(emu), state=upgraded.final_state))
        assert set(_marked(after, "dataset")) == {victim}


def test_detect_deletes_off_sends_no_count(
    emulator: Emulator, run_tap: Callable[..., TapRun]
) -> None:
    config = tap_config(emulator, detect_deletes=False)
    first = _ok(run_tap(config))
    dataset = _objects(emulator, "dataset")[0]
    emulator.store.delete_rows(
        "dataset", dataset, [emulator.store.rows("dataset", dataset)[0]["id"]]
    )
    _ok(run_tap(config, state=first.final_state))
    assert not _counts(emulator)
    assert "deleted_rows_check" not in json.dumps(first.final_state)


@pytest.mark.parametrize("edge", ["first", "last"])
def test_a_marked_row_written_again_at_the_edge_hides_no_other_delete(
    run_tap: Callable[..., TapRun], edge: str
) -> None:
    """A row comes back under the lowest (or highest) key, which the last count left out."""
    with running_emulator(api_key=API_KEY) as emu:
        project = emu.store.add_project("p")
        dataset = emu.store.add_dataset(project["id"], "d")["id"]
        emu.store.insert_rows("dataset", dataset, [{"id": f"r{n}", "input": n} for n in range(10)])
        first = _ok(run_tap(tap_config(emu)))
        by_key = [r["id"] for r in sorted(emu.store.rows("dataset", dataset), key=_key)]
        back = by_key[0] if edge == "first" else by_key[-1]
        emu.store.delete_rows("dataset", dataset, [back])
        second = _ok(run_tap(tap_config(emu), state=first.final_state))
        assert set(_marked(second, "dataset")) == {back}
        emu.store.insert_rows("dataset", dataset, [{"id": back, "input": "again"}])
        emu.store.delete_rows("dataset", dataset, [by_key[5]])
        third = _ok(run_tap(tap_config(emu), state=second.final_state))
        assert set(_marked(third, "dataset")) == {by_key[5]}
        assert _live(third, "dataset")[back]["input"] == "again"


def _key(row: dict[str, Any]) -> str:
    return str(row["_pagination_key"])


def test_a_row_rewritten_with_a_created_before_start_date_is_not_marked(
    run_tap: Callable[..., TapRun],
) -> None:
    with running_emulator(api_key=API_KEY) as emu:
        project = emu.store.add_project("p")
        dataset = emu.store.add_dataset(project["id"], "d", created="2020-01-01T00:00:00Z")["id"]
        created = "2026-06-01T00:00:00.000Z"
        emu.store.insert_rows(
            "dataset", dataset, [{"id": f"r{n}", "input": n, "created": created} for n in range(5)]
        )
        config = tap_config(emu, start_date="2026-01-01T00:00:00Z")
        first = _ok(run_tap(config))
        # Re-logged with an older `created`: still in Braintrust, only outside start_date.
        old = "2025-12-31T00:00:00.000Z"
        emu.store.insert_rows("dataset", dataset, [{"id": "r3", "input": "x", "created": old}])
        second = _ok(run_tap(config, state=first.final_state))
        assert not _marked(second, "dataset")


def test_a_dataset_deleted_as_it_is_counted_costs_no_storm(
    run_tap: Callable[..., TapRun],
) -> None:
    # The server leaves a deleted object's rows out of every answer (`missing`).
    with running_emulator(api_key=API_KEY, deleted_sources="missing") as emu:
        project = emu.store.add_project("p")
        doomed = emu.store.add_dataset(project["id"], "a")["id"]
        kept = emu.store.add_dataset(project["id"], "b")["id"]
        emu.store.insert_rows("dataset", doomed, [{"id": f"r{n}", "input": n} for n in range(1500)])
        emu.store.insert_rows("dataset", kept, [{"id": f"b{n}", "input": n} for n in range(5)])
        first = _ok(run_tap(tap_config(emu)))
        emu.faults.add(FaultRule("delete", path="/btql", sql_only=True, delete=("dataset", doomed)))
        emu.request_log.clear()
        second = _ok(run_tap(tap_config(emu), state=first.final_state))
        assert not _marked(second, "dataset")
        assert len(_btql(emu)) <= 8
        assert "no longer listed" in second.stderr
