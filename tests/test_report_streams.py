"""Report streams (`custom_streams` with `sql`): the answer, whole, each run, then ACTIVATE_VERSION.

Answers are compared with aggregates computed here from the store's rows.
"""

from __future__ import annotations

from datetime import datetime, timedelta, timezone
from typing import TYPE_CHECKING, Any

import pytest

from tests.activity import START, ManualClock, demo_before_a_run
from tests.conftest import API_KEY, demo_of
from tests.emulator import generate_logs, running_emulator
from tests.test_custom_streams import btql_requests, run_custom

if TYPE_CHECKING:
    from collections.abc import Callable, Iterator

    from tests.conftest import TapRun
    from tests.emulator import Emulator


@pytest.fixture
def clock() -> ManualClock:
    return ManualClock(START)


@pytest.fixture
def emu(clock: ManualClock) -> Iterator[Emulator]:
    with demo_before_a_run(clock) as emulator:
        yield emulator


def daily_by_model(project: str) -> str:
    select = "SELECT day(created) AS day, metadata.model AS model, avg(scores.accuracy) AS accuracy"
    return (
        f"{select}, count(1) AS spans FROM project_logs('{project}') "
        "WHERE created > now() - interval 7 day GROUP BY 1, 2"
    )


def expected_daily(emu: Emulator, project: str, tz_offset: int = 0) -> dict[tuple[Any, Any], Any]:
    """Per day (its boundaries moved `tz_offset` minutes west) and model: mean accuracy, count."""
    now = datetime.fromtimestamp(emu.store.clock(), tz=timezone.utc)
    shift = timedelta(minutes=tz_offset)
    groups: dict[tuple[Any, Any], list[Any]] = {}
    for row in emu.store.rows("project_logs", project):
        created = datetime.fromisoformat(row["created"].replace("Z", "+00:00"))
        if created <= now - timedelta(days=7):
            continue
        start = (created - shift).replace(hour=0, minute=0, second=0, microsecond=0) + shift
        day = start.strftime("%Y-%m-%dT%H:%M:%S.000Z")
        model = (row.get("metadata") or {}).get("model")
        groups.setdefault((day, model), []).append((row.get("scores") or {}).get("accuracy"))
    answer = {}
    for key, values in groups.items():
        numbers = [value for value in values if value is not None]
        mean = sum(numbers) / len(numbers) if numbers else None
        answer[key] = {"accuracy": mean, "spans": len(values)}
    return answer


def report_rows(run: TapRun, stream: str) -> dict[tuple[Any, Any], Any]:
    records = run.records(stream)
    table = {
        (r["day"], r["model"]): {"accuracy": r["accuracy"], "spans": r["spans"]} for r in records
    }
    assert len(table) == len(records)
    return table


@pytest.mark.parametrize("tz_offset", [None, 480])
def test_a_per_day_per_model_report_is_braintrusts_answer(
    emu: Emulator, run_tap: Callable[..., TapRun], tz_offset: int | None
) -> None:
    project = demo_of(emu).projects[0]["id"]
    spec: dict[str, Any] = {
        "name": "daily_models",
        "sql": daily_by_model(project),
        "primary_keys": ["day", "model"],
    }
    if tz_offset is not None:
        spec["tz_offset"] = tz_offset
    run = run_custom(run_tap, emu, [spec])
    want = expected_daily(emu, project, tz_offset or 0)
    got = report_rows(run, "daily_models")
    assert got.keys() == want.keys()
    for key, value in want.items():
        assert got[key] == pytest.approx(value), key
    assert len({day for day, _ in want}) >= 2  # more than one day, so boundaries matter
    (body,) = btql_requests(emu)  # one request: an aggregate answer has no cursor
    assert body.get("tz_offset") == tz_offset
    print(f"\ndaily_models (tz_offset {tz_offset}): {len(got)} rows, 1 /btql request")  # noqa: T201
    # The records carry a table version, and ACTIVATE_VERSION for it follows the last one.
    messages = [m for m in run.messages if m.get("stream") == "daily_models"]
    versions = {m["version"] for m in messages if m["type"] == "RECORD"}
    assert len(versions) == 1
    assert messages[-1] == {
        "type": "ACTIVATE_VERSION",
        "stream": "daily_models",
        "version": versions.pop(),
    }


@pytest.fixture
def big_project() -> Iterator[tuple[Emulator, str]]:
    """1,100 log rows in one project, served in short pages (about 40 rows each)."""
    with running_emulator(api_key=API_KEY, page_byte_budget=60_000) as emulator:
        project = emulator.store.add_project("busy")["id"]
        generate_logs(emulator.store, project, 1100, seed=3, row_bytes=1500)
        yield emulator, project


def test_a_report_of_rows_is_read_to_the_end_with_the_cursor(
    big_project: tuple[Emulator, str], run_tap: Callable[..., TapRun]
) -> None:
    emu, project = big_project
    sql = f"SELECT id, created, input FROM project_logs('{project}') WHERE created > '2000-01-01'"  # noqa: S608 - a test query
    run = run_custom(run_tap, emu, [{"name": "all_inputs", "sql": sql, "primary_keys": ["id"]}])
    truth = {row["id"]: row["input"] for row in emu.store.rows("project_logs", project)}
    records = run.records("all_inputs")
    assert len(records) == len(truth) == 1100
    assert {r["id"]: r["input"] for r in records} == truth
    bodies = btql_requests(emu)
    assert len(bodies) > 2  # short pages, each the next by the server's cursor
    assert bodies[0]["query"] == sql
    assert all(body["query"].startswith(f"{sql}\nOFFSET '") for body in bodies[1:])


def test_a_report_with_a_limit_stops_at_it(
    big_project: tuple[Emulator, str], run_tap: Callable[..., TapRun]
) -> None:
    emu, project = big_project
    sql = f"SELECT id FROM project_logs('{project}') WHERE created > '2000-01-01' LIMIT 50;"  # noqa: S608 - a test query
    run = run_custom(run_tap, emu, [{"name": "some", "sql": sql}])
    newest = [row["id"] for row in emu.store.rows("project_logs", project)][:50]
    assert [r["id"] for r in run.records("some")] == newest
    # One page holds the 50 rows; the next, asked for ahead, may or may not have gone out
    # before the run ended, and none after it.
    assert len(btql_requests(emu)) in {1, 2}


def test_a_full_page_without_a_cursor_stops_the_run_and_activates_nothing(
    big_project: tuple[Emulator, str], run_tap: Callable[..., TapRun]
) -> None:
    emu, project = big_project
    sql = f"SELECT id AS id, count(1) AS n FROM project_logs('{project}') GROUP BY 1"  # noqa: S608 - a test query
    run = run_custom(run_tap, emu, [{"name": "per_row", "sql": sql}], succeed=False)
    assert run.returncode == 1
    assert (
        "with a full page (1000 rows) and no cursor, so the report may be cut short" in run.stderr
    )
    assert "narrow the query" in run.stderr
    assert [m for m in run.messages if m["type"] in {"RECORD", "ACTIVATE_VERSION"}] == []
