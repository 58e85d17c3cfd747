"""`meltano run tap-braintrust target-postgres` (and target-duckdb), the way users run it.

Meltano, in a throwaway copy of this project, runs the installed tap against the emulator into
a real PostgreSQL or a DuckDB file. The loaded tables are read back with SQL and compared with
the emulator's truth, value by value. Then users review rows, log late and new rows and make
new objects, and a second `meltano run`, resuming from the state Meltano stored, must update
the changed rows in place and add the new ones.
"""

from __future__ import annotations

import json
import uuid
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import TYPE_CHECKING, Any

import pytest

from tests.activity import (
    START,
    ManualClock,
    annotate,
    demo_before_a_run,
    resume_floors,
    window_keys,
    xact_floors,
)
from tests.conftest import API_KEY, OBJECT_STREAMS, STREAM_SCHEMAS
from tests.loaded_tables import (
    SCHEMA,
    DuckDBWarehouse,
    LoadedWarehouse,
    PostgresWarehouse,
    row_tables,
)
from tests.meltano_project import MeltanoProject
from tests.warehouse import ROW_STREAMS, Target, object_truth, scores_by_model, truth

if TYPE_CHECKING:
    from pathlib import Path

    from tests.emulator import Emulator

JSON_FIELDS = ("input", "output", "expected", "metadata", "scores", "metrics")


@dataclass(frozen=True)
class Destination:
    """A loader, the settings that point it at its warehouse, and that warehouse."""

    loader: str
    env: dict[str, str]
    warehouse: LoadedWarehouse
    json_type: str


@pytest.fixture(params=["target-postgres", "target-duckdb"])
def destination(request: pytest.FixtureRequest, tmp_path: Path) -> Destination:
    """An empty database of the session's PostgreSQL, or a new DuckDB file."""
    if request.param == "target-postgres":
        server = request.getfixturevalue("postgres")
        database = f"e2e_{uuid.uuid4().hex[:12]}"
        server.create_database(database)
        warehouse = PostgresWarehouse(server, database)
        return Destination(request.param, server.target_env(database), warehouse, "jsonb")
    path = tmp_path / "warehouse.duckdb"
    env = {"TARGET_DUCKDB_FILEPATH": str(path)}
    return Destination(request.param, env, DuckDBWarehouse(path), "json")


@pytest.mark.usefixtures("meltano_plugins")
def test_meltano_run_loads_everything_then_a_second_run_applies_changes_in_place(
    destination: Destination, tmp_path: Path
) -> None:
    clock = ManualClock(START)
    warehouse = destination.warehouse
    with demo_before_a_run(clock) as emu:
        project = MeltanoProject.copy_to(
            tmp_path / "project",
            TAP_BRAINTRUST_API_URL=emu.url,
            TAP_BRAINTRUST_API_KEY=API_KEY,
            **destination.env,
        )
        first = project.succeed("run", "tap-braintrust", destination.loader)
        assert_warehouse_equals_truth(warehouse, emu)
        assert_columns_are_typed(warehouse, destination.json_type)
        assert_json_is_queryable(warehouse, emu)
        if isinstance(warehouse, DuckDBWarehouse):
            # The README's DuckDB limit: an `output` that is a plain string is not JSON there.
            invalid = f"SELECT count(*) FROM {SCHEMA}.project_logs WHERE NOT json_valid(output)"  # noqa: S608
            assert warehouse.query(invalid)[0][0] > 100
        counts = row_counts(warehouse)
        state = stored_state(project, destination.loader)
        between_runs = datetime.now(timezone.utc).replace(tzinfo=None)

        changed = annotate(emu, clock)
        assert Target(row_tables(warehouse)).differences(warehouse.stored_form(truth(emu)))
        emu.request_log.clear()
        second = project.succeed("run", "tap-braintrust", destination.loader)
        assert_warehouse_equals_truth(warehouse, emu)
        assert_resumed_from(state, emu)
        if isinstance(warehouse, PostgresWarehouse):
            assert_only_changed_rows_were_rewritten(warehouse, emu, state, changed, between_runs)
    secrets = [API_KEY, *(v for k, v in destination.env.items() if k.endswith("PASSWORD"))]
    for run in (first, second):
        assert not [secret for secret in secrets if secret in run.output]
    print(  # noqa: T201 - figures for the README and the closing note
        f"\n{destination.loader}: rows {counts}; first meltano run {first.seconds:.1f} s,"
        f" second {second.seconds:.1f} s"
    )


def row_counts(warehouse: LoadedWarehouse) -> dict[str, int]:
    """Rows in each table."""
    return {
        table: warehouse.query(f"SELECT count(*) FROM {SCHEMA}.{table}")[0][0]  # noqa: S608
        for table in (*OBJECT_STREAMS, *(stream.name for stream in ROW_STREAMS))
    }


def assert_warehouse_equals_truth(warehouse: LoadedWarehouse, emu: Emulator) -> None:
    """Every value of every object and row, once each."""
    objects = warehouse.stored_form(object_truth(emu))
    for table in OBJECT_STREAMS:
        loaded = warehouse.records(table)
        assert len(loaded) == len(objects[table]), table
        assert {record["id"]: record for record in loaded} == objects[table], table
    for stream in ROW_STREAMS:
        duplicates = warehouse.query(
            f"SELECT {stream.parent_key}, id FROM {SCHEMA}.{stream.name}"  # noqa: S608
            f" GROUP BY {stream.parent_key}, id HAVING count(*) > 1"
        )
        assert duplicates == [], stream.name
    loaded_rows = Target(row_tables(warehouse))
    assert loaded_rows.differences(warehouse.stored_form(truth(emu))) == []


def assert_columns_are_typed(warehouse: LoadedWarehouse, json_type: str) -> None:
    """One table per stream; free-form JSON is the database's JSON type; `created` a timestamp."""
    tables = warehouse.query(
        f"SELECT table_name FROM information_schema.tables WHERE table_schema = '{SCHEMA}'"  # noqa: S608
    )
    assert sorted(name for (name,) in tables) == sorted(
        [*OBJECT_STREAMS, *(s.name for s in ROW_STREAMS)]
    )
    for stream in ROW_STREAMS:
        types = warehouse.column_types(stream.name)
        # Dataset records have no output, scores or metrics.
        fields = [f for f in JSON_FIELDS if f in STREAM_SCHEMAS[stream.name]["properties"]]
        assert len(fields) == (3 if stream.name == "dataset_events" else 6)
        assert {f: types[f] for f in fields} == dict.fromkeys(fields, json_type), stream.name
        assert types["created"] == "timestamp", stream.name


def assert_json_is_queryable(warehouse: LoadedWarehouse, emu: Emulator) -> None:
    """Scores and metadata answer SQL questions directly (`scores->>'accuracy'`)."""
    answer = warehouse.query(
        f"""
        SELECT metadata->>'model' AS model, count(*), avg(CAST(scores->>'accuracy' AS FLOAT8))
        FROM {SCHEMA}.project_logs
        WHERE scores->>'accuracy' IS NOT NULL
        GROUP BY 1
        """  # noqa: S608 - a constant
    )
    by_model = scores_by_model(truth(emu)["project_logs"].values(), "accuracy")
    assert len(by_model) > 2
    assert {model: count for model, count, _ in answer} == {
        model: len(values) for model, values in by_model.items()
    }
    assert {model: mean for model, _, mean in answer} == pytest.approx(
        {model: sum(values) / len(values) for model, values in by_model.items()}
    )


def stored_state(project: MeltanoProject, loader: str) -> dict[str, Any]:
    """The Singer state Meltano keeps for this pipeline in its own store."""
    got = project.succeed("state", "get", f"dev:tap-braintrust-to-{loader}")
    state: dict[str, Any] = json.loads(got.stdout)["singer_state"]
    return state


def assert_resumed_from(state: dict[str, Any], emu: Emulator) -> None:
    """Each object known to the first run was read from its stored watermark less the lookback.

    Objects made since start from nothing.
    """
    resumed_at = resume_floors(state, 60)
    read_after = {}
    for request in emu.request_log:
        if request.path == "/btql":
            read_after.update(xact_floors(request.json_body["query"]))
    new_objects = read_after.keys() - resumed_at.keys()
    assert len(new_objects) == 2  # the experiment and the dataset made between the runs
    assert {read_after[object_id] for object_id in new_objects} == {0}
    assert {k: v for k, v in read_after.items() if k in resumed_at} == resumed_at


def assert_only_changed_rows_were_rewritten(
    warehouse: PostgresWarehouse,
    emu: Emulator,
    state: dict[str, Any],
    changed: dict[str, set[tuple[str, str]]],
    between_runs: datetime,
) -> None:
    """target-postgres stamps each row it writes: the second run wrote the changed rows and
    the lookback window again, over the rows already there, and nothing else."""
    rewritten: set[tuple[str, str]] = set()
    for stream in ROW_STREAMS:
        rewritten |= set(
            warehouse.query(
                f"SELECT {stream.parent_key}, id FROM {SCHEMA}.{stream.name}"  # noqa: S608
                f" WHERE _sdc_extracted_at > '{between_runs.isoformat()}'"
            )
        )
    every_change = set().union(*changed.values())
    assert every_change <= rewritten
    assert rewritten <= every_change | window_keys(emu, state, 60)
