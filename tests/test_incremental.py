"""Runs chained through STATE: annotations, late rows, new objects and interrupted runs.

Each test rebuilds a target by upsert from every run's output, the way a warehouse loader
does, and compares it with the emulator's truth after the last run. The emulator's clock is
driven by hand so `_xact_id`s (which embed the write's second) are realistic and repeatable.
"""

from __future__ import annotations

import json
import subprocess
from typing import TYPE_CHECKING, Any

import pytest

from tests.activity import (
    DAY,
    START,
    ManualClock,
    annotate,
    demo_before_a_run,
    iso,
    starts_a_read,
    window_keys,
    xact_floors,
)
from tests.conftest import API_KEY, TAP_EXECUTABLE, demo_of, is_delete_check, tap_config
from tests.emulator import generate_logs, running_emulator
from tests.emulator.btql import parse_query
from tests.warehouse import Target, truth

if TYPE_CHECKING:
    from collections.abc import Callable, Iterator
    from pathlib import Path

    from tests.conftest import TapRun
    from tests.emulator import Emulator


@pytest.fixture
def clock() -> ManualClock:
    return ManualClock(START)


@pytest.fixture
def emu(clock: ManualClock, request: pytest.FixtureRequest) -> Iterator[Emulator]:
    """Demo data written a day ago, plus a little activity just before the first run.

    Parametrize it indirectly with False for a server that reports no `freshness_state`.
    """
    with demo_before_a_run(clock, report_freshness=getattr(request, "param", True)) as emulator:
        yield emulator


def _sync(
    run_tap: Callable[..., TapRun], emu: Emulator, state: Any = None, **settings: Any
) -> TapRun:
    run = run_tap(tap_config(emu, **settings), state=state)
    assert run.returncode == 0, run.stderr
    return run


@pytest.mark.parametrize("emu", [True, False], indirect=True, ids=["freshness", "no-freshness"])
def test_second_run_delivers_annotations_late_rows_and_new_objects(
    emu: Emulator, clock: ManualClock, run_tap: Callable[..., TapRun]
) -> None:
    target = Target()
    first = _sync(run_tap, emu)
    target.load(first.messages)
    assert target.differences(truth(emu)) == []
    in_window = window_keys(emu, first.final_state, 60)

    changed = annotate(emu, clock)
    assert target.differences(truth(emu)), "the annotations changed nothing"
    second = _sync(run_tap, emu, first.final_state)
    received = target.load(second.messages)
    assert target.differences(truth(emu)) == []

    for stream, keys in changed.items():
        assert keys <= set(received[stream]), stream
    # Bookmarks never move back, though old rows were re-read.
    before, after = _bookmarks(first.final_state), _bookmarks(second.final_state)
    assert before.keys() < after.keys()  # the new experiment and dataset
    assert all(after[key] >= value for key, value in before.items())
    # Unchanged rows come again only from the lookback window before each watermark.
    again = {key for keys in received.values() for key in keys} - set().union(*changed.values())
    assert again == in_window - set().union(*changed.values())
    total = sum(len(keys) for keys in received.values())
    report = f"incremental run: {total} rows emitted, {len(again)} unchanged rows re-emitted"
    print(f"\n{report}")  # noqa: T201 - a figure for the README and closing note
    # The reviewed rows carry the reviewers' values.
    logs = target.tables["project_logs"]
    project = demo_of(emu).projects[1]["id"]
    reviewed = [logs[key] for key in sorted(changed["project_logs"]) if key[0] == project]
    assert any(row["scores"] and row["scores"].get("human_review") == 0.25 for row in reviewed)
    assert any(row["expected"] == {"answer": "corrected by a reviewer"} for row in reviewed)
    assert any(row["tags"] == ["annotated", "regression"] for row in reviewed)
    assert any(
        any(c["comment"]["text"] == "wrong tool was called" for c in row["comments"] or [])
        for row in reviewed
    )


def _bookmarks(state: dict[str, Any]) -> dict[tuple[str, str], str]:
    return {
        (stream, json.dumps(partition["context"])): partition["replication_key_value"]
        for stream, entry in state["bookmarks"].items()
        for partition in entry.get("partitions", [])
    }


def test_a_run_with_nothing_new_sends_only_the_lookback_window(
    emu: Emulator, clock: ManualClock, run_tap: Callable[..., TapRun]
) -> None:
    first = _sync(run_tap, emu)
    clock.advance(3600)
    again = _sync(run_tap, emu, first.final_state)
    sent = {(r["project_id"], r["id"]) for r in again.records("project_logs")}
    recent = {(demo_of(emu).projects[0]["id"], f"recent-{n}") for n in range(3)}
    assert sent == recent  # written 30 s before the watermark; the demo, a day before
    assert again.records("experiment_events") == again.records("dataset_events") == []

    none = _sync(run_tap, emu, first.final_state, lookback_seconds=0)
    assert none.records("projects")  # objects are read whole every run
    assert none.records("project_logs") == none.records("experiment_events") == []


def test_a_write_that_becomes_visible_late_is_not_skipped(
    emu: Emulator, clock: ManualClock, run_tap: Callable[..., TapRun]
) -> None:
    project = demo_of(emu).projects[2]["id"]
    slow = emu.store.insert_rows(
        "project_logs", project, [{"id": "slow-1", "input": "committed late"}], visible=False
    )
    clock.advance(600)  # far beyond the lookback: only the server's freshness can save it
    emu.store.insert_rows("project_logs", project, [{"id": "fast-1", "input": "visible"}])
    target = Target()
    first = _sync(run_tap, emu)
    target.load(first.messages)
    assert "slow-1" not in {r["id"] for r in first.records("project_logs")}
    watermarks = {
        int(p["xact_id_watermark"])
        for p in first.final_state["bookmarks"]["project_logs"]["partitions"]
    }
    assert max(watermarks) < int(slow)

    emu.store.publish(slow)
    clock.advance(600)
    second = _sync(run_tap, emu, first.final_state)
    target.load(second.messages)
    assert "slow-1" in {r["id"] for r in second.records("project_logs")}
    assert target.differences(truth(emu)) == []


def test_a_new_experiment_starts_from_start_date_while_old_ones_resume(
    emu: Emulator, clock: ManualClock, run_tap: Callable[..., TapRun]
) -> None:
    start_date = iso(START - 2 * DAY)
    first = _sync(run_tap, emu, start_date=start_date)
    clock.advance(3600)
    experiment = emu.store.add_experiment(demo_of(emu).projects[0]["id"], "new")
    emu.store.insert_rows(
        "experiment",
        experiment["id"],
        [
            {"id": "before", "input": 1, "created": iso(START - 3 * DAY)},
            {"id": "after", "input": 2, "created": iso(START - DAY)},
        ],
    )
    emu.request_log.clear()
    second = _sync(run_tap, emu, first.final_state, start_date=start_date)
    assert [r["id"] for r in second.records("experiment_events")] == ["after"]
    after_xact = {}
    for request in emu.request_log:
        if request.path == "/btql" and not is_delete_check(request.json_body):
            query = parse_query(request.json_body["query"])
            if query.source == "experiment" and starts_a_read(request.json_body["query"]):
                after_xact.update(xact_floors(request.json_body["query"]))
    assert after_xact.pop(experiment["id"]) == 0
    assert after_xact
    assert all(floor > 0 for floor in after_xact.values())


# Interrupted runs ------------------------------------------------------------------------


def _run_until_killed(
    config_path: Path, stop_after: Callable[[list[dict[str, Any]]], bool]
) -> list[dict[str, Any]]:
    """Run the tap and kill it at the first STATE message for which `stop_after` holds.

    Returns the messages up to that STATE: a target commits at STATE, so anything after
    it may be lost with the process.
    """
    command = [TAP_EXECUTABLE, "--config", str(config_path)]
    messages: list[dict[str, Any]] = []
    with subprocess.Popen(
        command, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True
    ) as tap:
        assert tap.stdout is not None
        for line in tap.stdout:
            messages.append(json.loads(line))
            if messages[-1]["type"] == "STATE" and stop_after(messages):
                tap.kill()
                break
        tap.wait()
    assert tap.returncode != 0, "the run ended before it could be killed"
    return messages


def _last_state(messages: list[dict[str, Any]]) -> dict[str, Any]:
    return next(m["value"] for m in reversed(messages) if m["type"] == "STATE")


@pytest.mark.parametrize("states_to_see", [2, 4, 5])
def test_a_killed_run_resumed_from_its_last_state_loses_nothing(
    emu: Emulator,
    clock: ManualClock,
    run_tap: Callable[..., TapRun],
    tmp_path: Path,
    states_to_see: int,
) -> None:
    config_path = tmp_path / "config.json"
    config_path.write_text(json.dumps(tap_config(emu, page_size=50)))
    target = Target()
    messages = _run_until_killed(
        config_path, lambda seen: sum(m["type"] == "STATE" for m in seen) == states_to_see
    )
    target.load(messages)
    annotate(emu, clock)
    resumed = _sync(run_tap, emu, _last_state(messages), page_size=50)
    target.load(resumed.messages)
    assert target.differences(truth(emu)) == []


def _kill_inside_project_logs(emu: Emulator, tmp_path: Path) -> list[dict[str, Any]]:
    """Kill a run with no lookback at its first STATE inside project_logs (after 10,000 rows)."""
    config_path = tmp_path / "config.json"
    config_path.write_text(json.dumps(tap_config(emu, lookback_seconds=0)))
    return _run_until_killed(
        config_path,
        lambda seen: any(m["type"] == "RECORD" and m["stream"] == "project_logs" for m in seen),
    )


def test_a_run_killed_inside_a_big_project_resumes_from_its_watermark(
    clock: ManualClock, run_tap: Callable[..., TapRun], tmp_path: Path
) -> None:
    with running_emulator(api_key=API_KEY, clock=clock) as emu:
        project = emu.store.add_project("busy")
        generate_logs(emu.store, project["id"], 25_000, row_bytes=300)  # 25 writes of 1000
        clock.advance(3600)
        # All 25 writes share one clock second, so any lookback would re-read them all;
        # without one, the resumed run must start exactly after the watermark.
        target = Target()
        messages = _kill_inside_project_logs(emu, tmp_path)
        target.load(messages)
        assert len(target.tables["project_logs"]) == 10_000
        state = _last_state(messages)
        (partition,) = state["bookmarks"]["project_logs"]["partitions"]
        # Rows come about 1000 per write, so the watermark is the write before the current.
        watermark = int(partition["xact_id_watermark"])
        rows = emu.store.rows("project_logs", project["id"])
        after = {row["id"] for row in rows if int(row["_xact_id"]) > watermark}
        assert 14_000 < len(after) < 16_500

        resumed = _sync(run_tap, emu, state, lookback_seconds=0)
        target.load(resumed.messages)
        assert target.differences(truth(emu)) == []
        assert {row["id"] for row in resumed.records("project_logs")} == after


def test_a_run_killed_inside_an_object_misses_no_write_that_became_visible_late(
    clock: ManualClock, run_tap: Callable[..., TapRun], tmp_path: Path
) -> None:
    with running_emulator(api_key=API_KEY, clock=clock) as emu:
        project = emu.store.add_project("busy")["id"]
        slow = ""
        for write in range(15):  # 15 writes of 1000 rows, a minute apart
            rows = [{"id": f"w{write}-{n}", "input": n} for n in range(1000)]
            xact_id = emu.store.insert_rows("project_logs", project, rows, visible=write != 2)
            slow = xact_id if write == 2 else slow
            clock.advance(60)
        target = Target()
        messages = _kill_inside_project_logs(emu, tmp_path)
        target.load(messages)
        assert len(target.tables["project_logs"]) == 10_000  # writes 0, 1 and 3 to 10
        (partition,) = _last_state(messages)["bookmarks"]["project_logs"]["partitions"]
        # Rows of write 10 are still coming, but write 2 is not visible yet: the server's
        # freshness holds the watermark below it.
        assert int(partition["xact_id_watermark"]) < int(slow)

        emu.store.publish(slow)
        resumed = _sync(run_tap, emu, _last_state(messages), lookback_seconds=0)
        target.load(resumed.messages)
        assert target.differences(truth(emu)) == []
        assert {r["id"] for r in resumed.records("project_logs")} >= {
            f"w2-{n}" for n in range(1000)
        }
