"""`custom_streams` through `meltano run tap-braintrust target-postgres`, the way users run it.

A row stream (annotated logs, a few columns) and a SQL report (per day and model) are set in
the environment as Meltano reads an array setting, loaded into a real PostgreSQL and read back
with SQL. Between two runs a reviewer tags one more row and some rows are deleted or rescored:
the second run, resuming from Meltano's stored state, adds the newly matching row, and the
report's table, replaced through ACTIVATE_VERSION with `hard_delete`, holds exactly the new
answer: the vanished group's row is gone, not just marked.
"""

from __future__ import annotations

import json
import uuid
from typing import TYPE_CHECKING, Any

import pytest

from tests.activity import START, ManualClock, demo_before_a_run
from tests.conftest import API_KEY, demo_of
from tests.loaded_tables import SCHEMA, PostgresWarehouse
from tests.meltano_project import MeltanoProject, Run
from tests.test_custom_streams import truth_of
from tests.test_report_streams import daily_by_model, expected_daily

if TYPE_CHECKING:
    from pathlib import Path

    from tests.emulator import Emulator
    from tests.postgres import PostgresServer

ANNOTATED_LOGS: dict[str, Any] = {
    "name": "annotated_logs",
    "from": "project_logs",
    "filter": "tags includes 'annotated'",
    "select": ["input", "output", "tags", "metadata.model"],
}
Report = dict[tuple[Any, Any], dict[str, Any]]


def daily_models(project: str) -> dict[str, Any]:
    return {
        "name": "daily_models",
        "sql": daily_by_model(project),
        "primary_keys": ["day", "model"],
    }


@pytest.mark.usefixtures("meltano_plugins")
def test_meltano_loads_custom_streams_and_a_second_run_replaces_the_report(
    postgres: PostgresServer, tmp_path: Path
) -> None:
    clock = ManualClock(START)
    database = f"custom_{uuid.uuid4().hex[:12]}"
    postgres.create_database(database)
    warehouse = PostgresWarehouse(postgres, database)
    target_env = postgres.target_env(database)
    with demo_before_a_run(clock) as emu:
        project_id = demo_of(emu).projects[0]["id"]
        report = daily_models(project_id)
        project = MeltanoProject.copy_to(
            tmp_path / "project",
            TAP_BRAINTRUST_API_URL=emu.url,
            TAP_BRAINTRUST_API_KEY=API_KEY,
            TAP_BRAINTRUST_CUSTOM_STREAMS=json.dumps([ANNOTATED_LOGS, report]),
            **target_env,
        )
        first = project.succeed("run", "tap-braintrust", "target-postgres")
        before_rows = assert_annotated_logs_equal_truth(warehouse, emu)
        before_report = expected_daily(emu, project_id)
        assert_report_equals(warehouse, before_report)
        assert_columns_are_typed(warehouse)
        (first_version,) = table_versions(warehouse)
        first_counts = row_counts(warehouse)

        tagged, vanished, changed = review_and_clean_up(emu, clock, project_id, before_report)
        assert (project_id, tagged) not in before_rows
        second = project.succeed("run", "tap-braintrust", "target-postgres")
        after_rows = assert_annotated_logs_equal_truth(warehouse, emu)
        assert after_rows.keys() - before_rows.keys() == {(project_id, tagged)}
        after_report = expected_daily(emu, project_id)
        assert vanished not in after_report
        assert after_report[changed]["accuracy"] != pytest.approx(
            before_report[changed]["accuracy"]
        )
        loaded = assert_report_equals(warehouse, after_report)
        assert vanished not in loaded  # deleted by hard_delete, not marked in _sdc_deleted_at
        (second_version,) = table_versions(warehouse)
        assert second_version > first_version
        second_counts = row_counts(warehouse)
    secrets = [API_KEY, target_env["TARGET_POSTGRES_PASSWORD"]]
    for run in (first, second):
        assert not [secret for secret in secrets if secret in run.output]
    print_figures(first, first_counts, second, second_counts)


def review_and_clean_up(
    emu: Emulator, clock: ManualClock, project_id: str, report: Report
) -> tuple[str, tuple[Any, Any], tuple[Any, Any]]:
    """Between the runs: a reviewer tags an old row; a (day, model) group's rows are deleted;
    another group's row gets a new accuracy. Returns the tagged id and the two groups."""
    clock.advance(3600)
    store = emu.store
    rows = store.rows("project_logs", project_id)
    groups: dict[tuple[Any, Any], list[dict[str, Any]]] = {}
    for row in rows:
        if (key := report_key(row)) in report:
            groups.setdefault(key, []).append(row)
    # The smallest group none of whose rows the row stream holds (a deleted row would stay),
    # past the window's first day, whose rows the moving 7-day window may drop by itself.
    first_day = min(day for day, _ in groups)
    vanished = min(
        (
            key
            for key, members in groups.items()
            if key[0] != first_day and not any(is_annotated(r) for r in members)
        ),
        key=lambda key: (report[key]["spans"], str(key)),
    )
    store.delete_rows("project_logs", project_id, [row["id"] for row in groups[vanished]])
    # The newest day's biggest group with a model: it stays in the report's 7-day window.
    changed = max(
        (key for key in groups if key != vanished and key[1] is not None),
        key=lambda key: (key[0], report[key]["spans"], str(key[1])),
    )
    rescored = groups[changed][0]
    store.merge_rows(
        "project_logs", project_id, [{"id": rescored["id"], "scores": {"accuracy": 0.001}}]
    )
    gone = {row["id"] for row in groups[vanished]} | {rescored["id"]}
    old = min(
        (r for r in rows if not is_annotated(r) and r["id"] not in gone),
        key=lambda row: str(row["created"]),
    )
    store.merge_rows("project_logs", project_id, [{"id": old["id"], "tags": ["annotated"]}])
    clock.advance(600)
    return old["id"], vanished, changed


def report_key(row: dict[str, Any]) -> tuple[Any, Any]:
    """The (day, model) group of a log row, as expected_daily names it (UTC days)."""
    day = f"{row['created'][:10]}T00:00:00.000Z"
    return day, (row.get("metadata") or {}).get("model")


def is_annotated(row: dict[str, Any]) -> bool:
    return "annotated" in (row.get("tags") or [])


def assert_annotated_logs_equal_truth(
    warehouse: PostgresWarehouse, emu: Emulator
) -> dict[tuple[str, str], dict[str, Any]]:
    """The row stream's table holds each matching row once, with the selected values."""
    duplicates = warehouse.query(
        f"SELECT project_id, id FROM {SCHEMA}.annotated_logs"  # noqa: S608 - a test query
        " GROUP BY project_id, id HAVING count(*) > 1"
    )
    assert duplicates == []
    loaded = {(r["project_id"], r["id"]): r for r in warehouse.records("annotated_logs")}
    want = warehouse.stored_form({"annotated_logs": truth_of(emu, ANNOTATED_LOGS)})
    assert len(want["annotated_logs"]) > 2
    assert loaded == want["annotated_logs"]
    return loaded


def assert_report_equals(warehouse: PostgresWarehouse, want: Report) -> Report:
    """The report's table holds exactly `want`: one row per (day, model), no stale ones."""
    records = warehouse.records("daily_models")
    loaded = {
        (r["day"], r.get("model")): {"accuracy": r.get("accuracy"), "spans": r["spans"]}
        for r in records
    }
    assert len(loaded) == len(records)
    assert loaded.keys() == want.keys()
    for key, value in want.items():
        assert loaded[key] == pytest.approx(value), key
    assert len({day for day, _ in want}) >= 2
    return loaded


def assert_columns_are_typed(warehouse: PostgresWarehouse) -> None:
    """Selected columns named by their last part; `created` a timestamp; JSON as jsonb."""
    logs = warehouse.column_types("annotated_logs")
    assert {name for name in logs if not name.startswith("_sdc_")} == {
        "project_id",
        "id",
        "_xact_id",
        "created",
        "input",
        "output",
        "tags",
        "model",
    }
    assert logs["created"] == "timestamp"
    assert {f: logs[f] for f in ("input", "output", "model")} == dict.fromkeys(
        ("input", "output", "model"), "jsonb"
    )
    report = warehouse.column_types("daily_models")
    assert {name: kind for name, kind in report.items() if not name.startswith("_sdc_")} == (
        dict.fromkeys(("day", "model", "accuracy", "spans"), "jsonb")
    )
    assert "_sdc_table_version" in report


def table_versions(warehouse: PostgresWarehouse) -> list[int]:
    """The distinct `_sdc_table_version`s of the report's rows."""
    rows = warehouse.query(f"SELECT DISTINCT _sdc_table_version FROM {SCHEMA}.daily_models")  # noqa: S608 - a test query
    return [version for (version,) in rows]


def row_counts(warehouse: PostgresWarehouse) -> dict[str, int]:
    return {
        table: warehouse.query(f"SELECT count(*) FROM {SCHEMA}.{table}")[0][0]  # noqa: S608 - a test query
        for table in ("annotated_logs", "daily_models")
    }


def print_figures(first: Run, before: dict[str, int], second: Run, after: dict[str, int]) -> None:
    print(  # noqa: T201 - figures for the closing note
        f"\ncustom streams via meltano: first run rows {before}, {first.seconds:.1f} s;"
        f" second run rows {after}, {second.seconds:.1f} s"
    )
