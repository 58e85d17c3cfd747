"""Requests are the scarce resource: a sync costs `/btql` requests in proportion to what changed.

Hosted Braintrust allows about 20 `/btql` requests a minute per org, so every count here comes
from the emulator's request log, never from the tap's own counters. The org is the issue's
"wide org" (8 projects, 320 small experiments, 32 datasets, 3,200 log rows), with pages cut
at 512 KB as the service cuts them.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest
import requests

from tap_braintrust.queries import ChangePosition, ObjectBound, RowsQuery, row_keys
from tests.activity import (
    START,
    ManualClock,
    annotate,
    demo_before_a_run,
    resume_floors,
    starts_a_read,
    window_keys,
    xact_floors,
)
from tests.conftest import API_KEY, tap_config
from tests.emulator import running_emulator
from tests.emulator.generator import generate_wide_org, wide_org_small_change
from tests.warehouse import ROW_STREAMS, Target, truth

if TYPE_CHECKING:
    from collections.abc import Callable

    from tests.conftest import TapRun
    from tests.emulator import Emulator
    from tests.emulator.store import RowSource

DATA = Path(__file__).parent / "data"
PAGE_BUDGET = 512_000


def _btql_requests(emu: Emulator) -> list[Any]:
    return [r for r in emu.request_log if r.path == "/btql" and r.host == "api"]


def _read_after(emu: Emulator) -> dict[str, int]:
    """Per object the tap's queries read, the `_xact_id` its rows were read after.

    From the first page of each read: later pages go on after a row (keyset paging).
    """
    floors: dict[str, int] = {}
    for request in _btql_requests(emu):
        if starts_a_read(request.json_body["query"]):
            floors.update(xact_floors(request.json_body["query"]))
    return floors


def _floor_requests(emu: Emulator) -> tuple[int, int]:
    """The fewest `/btql` requests any client needs to read every row, and the rows read.

    One query per row kind naming all its objects, 1000 rows a page, each after the last
    row's keys to an empty page: what a client that knows every id up front and never stops
    early would send.
    """
    before = len(_btql_requests(emu))
    rows = 0
    with requests.Session() as session:
        session.headers["Authorization"] = f"Bearer {API_KEY}"
        for stream in ROW_STREAMS:
            ids = [o["id"] for o in emu.store.objects(stream.owner)]
            query = RowsQuery(stream.source, tuple(ObjectBound(i) for i in ids))
            after = None
            while True:
                answer = session.post(f"{emu.url}/btql", json=query.body(after)).json()
                if not answer["data"]:
                    break
                rows += len(answer["data"])
                through = int(answer["freshness_state"]["last_processed_xact_id"])
                after = ChangePosition(
                    *row_keys(answer["data"][-1]), after.through if after else through
                )
    return len(_btql_requests(emu)) - before, rows


def _keys(run: TapRun) -> dict[str, set[tuple[str, str]]]:
    return {
        stream.name: {(r[stream.parent_key], r["id"]) for r in run.records(stream.name)}
        for stream in ROW_STREAMS
    }


@pytest.mark.parametrize("sorted_cursor", [True, False], ids=["2026-server", "2025-server"])
def test_a_sync_costs_requests_in_proportion_to_what_changed(
    run_tap: Callable[..., TapRun], sorted_cursor: bool
) -> None:
    # The 2025 server gives no cursor on a sorted query: the counts must not change.
    with running_emulator(
        api_key=API_KEY, page_byte_budget=PAGE_BUDGET, sorted_cursor=sorted_cursor
    ) as emu:
        org = generate_wide_org(emu.store)
        target = Target()
        full = run_tap(tap_config(emu))
        assert full.returncode == 0, full.stderr
        full_requests = len(_btql_requests(emu))
        target.load(full.messages)
        assert target.differences(truth(emu)) == []
        floor, floor_rows = _floor_requests(emu)
        assert floor_rows == sum(len(keys) for keys in _keys(full).values())
        assert full_requests <= 1.25 * floor, (full_requests, floor)

        emu.request_log.clear()
        idle = run_tap(tap_config(emu), state=full.final_state)
        assert idle.returncode == 0, idle.stderr
        idle_requests = len(_btql_requests(emu))
        assert idle_requests <= 12

        change = wide_org_small_change(emu.store, org)
        emu.request_log.clear()
        small = run_tap(tap_config(emu), state=idle.final_state)
        assert small.returncode == 0, small.stderr
        small_requests = len(_btql_requests(emu))
        assert small_requests <= 20
        received = _keys(small)
        for source, object_id, row_id in change.changed:
            name = next(s.name for s in ROW_STREAMS if s.source == source)
            assert (object_id, row_id) in received[name], (source, object_id, row_id)
        target.load(small.messages)
        assert target.differences(truth(emu)) == []

        # Rows deleted in 3 datasets and 2 experiments: they arrive marked, at a cost for
        # those objects only: the ids at the old version (a page: it stops at its count),
        # the ids now (a page and the empty one that ends it), the rows' content, and a
        # page more here and there.
        deleted = set()
        targets: tuple[tuple[RowSource, tuple[str, ...]], ...] = (
            ("dataset", org.datasets[:3]),
            ("experiment", org.experiments[:2]),
        )
        for kind, object_ids in targets:
            for object_id in object_ids:
                ids = [row["id"] for row in emu.store.rows(kind, object_id)[:2]]
                emu.store.delete_rows(kind, object_id, ids)
                deleted |= {(object_id, row_id) for row_id in ids}
        emu.request_log.clear()
        after = run_tap(tap_config(emu), state=small.final_state)
        assert after.returncode == 0, after.stderr
        deletes_requests = len(_btql_requests(emu))
        marked = {
            (r[stream.parent_key], r["id"])
            for stream in ROW_STREAMS
            for r in after.records(stream.name)
            if r.get("_sdc_deleted_at")
        }
        assert marked == deleted
        assert deletes_requests <= idle_requests + 5 * 5
    print(  # noqa: T201 - figures for the README and the closing note
        f"\nwide org /btql requests ({'2026' if sorted_cursor else '2025'} server): "
        f"full {full_requests} (floor {floor}), idle {idle_requests}, "
        f"small change {small_requests} ({sum(map(len, received.values()))} rows), "
        f"after deletes in 5 objects {deletes_requests}"
    )


@pytest.mark.parametrize(
    "written_by",
    [
        # One query per object, parent/child streams.
        "3875c35",
        # Objects in groups, sorted reads paged by the server cursor (before keyset paging).
        "861efbf",
    ],
)
def test_a_state_from_an_earlier_release_resumes_without_rereading_anything(
    run_tap: Callable[..., TapRun], written_by: str
) -> None:
    # Written by tap-braintrust at that commit after a full sync of this very emulator:
    # `demo_before_a_run(ManualClock(START))`.
    state = json.loads((DATA / f"state-{written_by}.json").read_text())
    clock = ManualClock(START)
    with demo_before_a_run(clock) as emu:
        in_window = window_keys(emu, state, 60)
        changed = annotate(emu, clock)
        emu.request_log.clear()
        run = run_tap(tap_config(emu), state=state)
        assert run.returncode == 0, run.stderr

        received = _keys(run)
        for name, keys in changed.items():
            assert keys <= received[name], name
        all_changed = set().union(*changed.values())
        again = set().union(*received.values()) - all_changed
        assert again == in_window - all_changed  # only the lookback window comes again
        # Each object resumed from its own watermark, less the lookback; new ones from 0.
        floors = _read_after(emu)
        resumed = resume_floors(state, 60)
        assert {key: floors[key] for key in resumed} == resumed
        assert sorted(floors[key] for key in floors.keys() - resumed.keys()) == [0, 0]
        # Per kind one read of the objects that resume, and for experiments and datasets one
        # of the two new since (no query mixes two starts), each a page and the empty end;
        # and one count per kind, the first of delete detection.
        assert len(_btql_requests(emu)) <= (3 + 2) * 2 + 2
        # The new state keeps one partition per object, under the same context keys.
        for stream in ROW_STREAMS:
            before = [p["context"] for p in state["bookmarks"][stream.name]["partitions"]]
            after = [p["context"] for p in run.final_state["bookmarks"][stream.name]["partitions"]]
            assert all(list(context) == [stream.parent_key] for context in after)
            assert len(after) == len(before) + (stream.name != "project_logs")
            assert all(context in after for context in before)


def test_an_interrupted_run_of_the_previous_release_resumes_where_it_stopped(
    run_tap: Callable[..., TapRun],
) -> None:
    # The last STATE tap-braintrust at 3875c35 wrote before it was killed in the middle of a
    # full sync of this emulator (page_size 50): some objects done, others never started.
    state = json.loads((DATA / "state-3875c35-interrupted.json").read_text())
    clock = ManualClock(START)
    with demo_before_a_run(clock) as emu:
        run = run_tap(tap_config(emu), state=state)
        assert run.returncode == 0, run.stderr
        floors = _read_after(emu)
        resumed = resume_floors(state, 60)
        assert resumed
        assert {key: floors[key] for key in resumed} == resumed
        unstarted = floors.keys() - resumed.keys()
        assert unstarted
        assert all(floors[key] == 0 for key in unstarted)
        received = _keys(run)
        expected = truth(emu)
        for stream in ROW_STREAMS:  # every row of an object never started arrives
            due = {key for key in expected[stream.name] if key[0] in unstarted}
            assert due <= received[stream.name], stream.name


def test_rows_the_cursor_release_never_reached_arrive_in_one_run_after_upgrading(
    run_tap: Callable[..., TapRun],
) -> None:
    # Written by tap-braintrust at 861efbf run after run against a data plane that gives no
    # cursor on a sorted query (the 2025 BTQL reference), until runs brought nothing new:
    # its watermark never passed the rows it had not read, so they are still due.
    state = json.loads((DATA / "state-861efbf-no-cursor.json").read_text())
    clock = ManualClock(START)
    with demo_before_a_run(clock, sorted_cursor=False) as emu:
        due = {
            stream.name: {
                key
                for key, row in truth(emu)[stream.name].items()
                for partition in state["bookmarks"][stream.name]["partitions"]
                if partition["context"][stream.parent_key] == key[0]
                and int(row["_xact_id"]) > int(partition["xact_id_watermark"])
            }
            for stream in ROW_STREAMS
        }
        assert sum(map(len, due.values())) > 100  # what the old release never delivered
        run = run_tap(tap_config(emu), state=state)
        assert run.returncode == 0, run.stderr
        received = _keys(run)
        for name, keys in due.items():
            assert keys <= received[name], name
