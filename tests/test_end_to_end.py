"""`meltano run tap-braintrust target-postgres` (and the other loaders), the way users run it.

Meltano, in a throwaway copy of this project, runs the installed tap against the emulator into
a real PostgreSQL or a DuckDB file. target-postgres stores free-form JSON as jsonb; for
pipelinewise-target-postgres and target-duckdb, which encode only objects and arrays as JSON,
the pipeline starts from `tap-braintrust--json-text` (`json_fields_as_text`), so those fields
land as JSON text. The loaded tables are read back with SQL and compared with the emulator's
truth, value by value, as it is. Then users review rows, log late and new rows and make new
objects, and a second `meltano run`, resuming from the state Meltano stored, must update the
changed rows in place and add the new ones.
"""

from __future__ import annotations

import json
import uuid
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import TYPE_CHECKING, Any

import pytest

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
from tests.conftest import (
    API_KEY,
    OBJECT_STREAMS,
    STREAM_SCHEMAS,
    demo_of,
    json_union_fields,
    require_loader,
)
from tests.loaded_tables import (
    SCHEMA,
    DuckDBWarehouse,
    LoadedWarehouse,
    PostgresWarehouse,
    json_text_columns,
    row_tables,
)
from tests.meltano_project import MeltanoProject
from tests.warehouse import ROW_STREAMS, Target, object_truth, scores_by_model, truth

if TYPE_CHECKING:
    from pathlib import Path

    from tests.emulator import Emulator
    from tests.postgres import PostgresServer

TAP = "tap-braintrust"
JSON_TEXT_TAP = "tap-braintrust--json-text"  # meltano.yml's, with json_fields_as_text: true
OBJECT_FIELDS = ("scores", "metrics")  # typed objects: JSON in every warehouse
# Free-form values target-duckdb and pipelinewise wrote as invalid JSON (or refused) when
# sent as JSON scalars: with json_fields_as_text each must come back as it was logged.
SCALAR_ROWS: list[dict[str, Any]] = [
    {"id": "scalar-booleans", "input": {"q": "ok?"}, "output": True, "expected": False},
    {"id": "scalar-numbers", "input": 0, "output": -1.5, "expected": 2**70, "error": 1.0},
    {"id": "scalar-strings", "input": "", "output": "null", "expected": 'say "hi"\n\t\\ é'},
    {"id": "nested-nulls", "output": [None, {"a": None}], "metadata": {"model": None}},
]
# No text cut inside a surrogate pair: the tap sends it as a `\ud83d` escape, which neither
# database's JSON accepts (see tests/test_json_as_text.py).


@dataclass(frozen=True)
class Destination:
    """A pipeline (extractor and loader), the settings that point the loader at its
    warehouse, that warehouse, and how the loader types what it loads."""

    extractor: str
    loader: str
    env: dict[str, str]
    warehouse: LoadedWarehouse
    json_type: str  # the database's JSON type, of scores and metrics
    free_form_type: str  # of input, output, metadata, ...: JSON, or text holding JSON
    as_json: str = "{}"  # SQL reading a free-form column as JSON, `{}` the column
    stamps_rewrites: bool = True  # whether `_sdc_extracted_at` dates each row's last write
    loader_config: dict[str, str] = field(default_factory=dict)  # `meltano config set`


@pytest.fixture(
    params=[
        "target-postgres",
        "target-postgres-system",
        "target-postgres-pipelinewise",
        "target-duckdb",
    ]
)
def destination(request: pytest.FixtureRequest, tmp_path: Path) -> Destination:
    """An empty database of the session's PostgreSQL (the wheel's, or Debian's when it is
    installed, so both majors stay covered), or a new DuckDB file."""
    if request.param in {"target-postgres-pipelinewise", "target-duckdb"}:
        require_loader(request.param)  # pins packages with no wheel for the newest Pythons
    if request.param.startswith("target-postgres"):
        fixture = "system_postgres" if request.param.endswith("system") else "postgres"
        server = request.getfixturevalue(fixture)
        database = f"e2e_{uuid.uuid4().hex[:12]}"
        server.create_database(database)
        warehouse = PostgresWarehouse(server, database)
        if request.param.endswith("pipelinewise"):
            return Destination(
                JSON_TEXT_TAP,
                request.param,
                pipelinewise_env(server, database),
                warehouse,
                "jsonb",
                "varchar",  # `character varying`; its operators need a cast to read JSON
                as_json="CAST({} AS jsonb)",
                # Off by default (not a setting meltano.yml declares): on, it stamps rows.
                loader_config={"add_metadata_columns": "true"},
            )
        env = server.target_env(database)
        return Destination(TAP, "target-postgres", env, warehouse, "jsonb", "jsonb")
    path = tmp_path / "warehouse.duckdb"
    env = {"TARGET_DUCKDB_FILEPATH": str(path)}
    # DuckDB's JSON functions and `->>` take JSON text in a VARCHAR as they take a JSON
    # column (1.0, target-duckdb's, and this environment's): `metadata->>'model'` needs no
    # cast. They fail the whole query on one invalid value, as the scalars written without
    # json_fields_as_text were. target-duckdb records no write time of its own.
    duckdb_file = DuckDBWarehouse(path)
    return Destination(
        JSON_TEXT_TAP, request.param, env, duckdb_file, "json", "varchar", stamps_rewrites=False
    )


def pipelinewise_env(server: PostgresServer, database: str) -> dict[str, str]:
    """pipelinewise-target-postgres settings, as Meltano reads them from the environment."""
    return {
        "TARGET_POSTGRES_PIPELINEWISE_HOST": server.host,
        "TARGET_POSTGRES_PIPELINEWISE_PORT": str(server.port),
        "TARGET_POSTGRES_PIPELINEWISE_USER": server.user,
        "TARGET_POSTGRES_PIPELINEWISE_PASSWORD": server.password,
        "TARGET_POSTGRES_PIPELINEWISE_DBNAME": database,
    }


@pytest.mark.usefixtures("meltano_plugins")
def test_meltano_run_loads_everything_then_a_second_run_applies_changes_in_place(
    destination: Destination, tmp_path: Path
) -> None:
    clock = ManualClock(START)
    warehouse = destination.warehouse
    pipeline = (destination.extractor, destination.loader)
    with demo_before_a_run(clock) as emu:
        if destination.extractor == JSON_TEXT_TAP:
            emu.store.insert_rows("project_logs", demo_of(emu).projects[0]["id"], SCALAR_ROWS)
        project = MeltanoProject.copy_to(
            tmp_path / "project",
            TAP_BRAINTRUST_API_URL=emu.url,
            TAP_BRAINTRUST_API_KEY=API_KEY,
            **destination.env,
        )
        for name, value in destination.loader_config.items():
            project.succeed("config", "set", destination.loader, name, value)
        first = project.succeed("run", *pipeline)
        assert_warehouse_equals_truth(warehouse, emu)
        assert_columns_are_typed(destination)
        assert_json_is_queryable(destination, emu)
        if destination.free_form_type != destination.json_type:
            assert_free_form_text_is_json(destination)
        counts = row_counts(warehouse)
        state = stored_state(project, destination)
        between_runs = datetime.now(timezone.utc).replace(tzinfo=None)

        changed = annotate(emu, clock)
        assert Target(row_tables(warehouse)).differences(warehouse.stored_form(truth(emu)))
        emu.request_log.clear()
        second = project.succeed("run", *pipeline)
        assert_warehouse_equals_truth(warehouse, emu)
        assert_resumed_from(state, emu)
        if destination.stamps_rewrites:
            assert_only_changed_rows_were_rewritten(warehouse, emu, state, changed, between_runs)
    secrets = [API_KEY, *(v for k, v in destination.env.items() if k.endswith("PASSWORD"))]
    for run in (first, second):
        assert not [secret for secret in secrets if secret in run.output]
    print(  # noqa: T201 - figures for the README and the closing note
        f"\n{' '.join(pipeline)}: rows {counts}; first meltano run {first.seconds:.1f} s,"
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


def assert_columns_are_typed(destination: Destination) -> None:
    """One table per stream; free-form fields JSON, or text holding JSON; scores and metrics
    the database's JSON type; `created` a timestamp (without time zone, in UTC)."""
    warehouse = destination.warehouse
    tables = warehouse.query(
        f"SELECT table_name FROM information_schema.tables WHERE table_schema = '{SCHEMA}'"  # noqa: S608
    )
    assert sorted(name for (name,) in tables) == sorted(
        [*OBJECT_STREAMS, *(s.name for s in ROW_STREAMS)]
    )
    unions = json_union_fields()
    for stream in ROW_STREAMS:
        types = warehouse.column_types(stream.name)
        properties = STREAM_SCHEMAS[stream.name]["properties"]
        free_form = [f for f in properties if f"{stream.name}.{f}" in unions]
        # Dataset records have no output, error or scoring state, scores or metrics.
        objects = [f for f in OBJECT_FIELDS if f in properties]
        assert (len(free_form), len(objects)) == (
            (5, 0) if stream.name == "dataset_events" else (8, 2)
        )
        want = {
            **dict.fromkeys(free_form, destination.free_form_type),
            **dict.fromkeys(objects, destination.json_type),
        }
        assert {f: types[f] for f in want} == want, stream.name
        assert types["created"] == "timestamp", stream.name


def assert_json_is_queryable(destination: Destination, emu: Emulator) -> None:
    """Scores and metadata answer SQL questions directly (`scores->>'accuracy'`)."""
    model = destination.as_json.format("metadata")
    answer = destination.warehouse.query(
        f"""
        SELECT {model}->>'model' AS model, count(*), avg(CAST(scores->>'accuracy' AS FLOAT8))
        FROM {SCHEMA}.project_logs
        WHERE scores->>'accuracy' IS NOT NULL
        GROUP BY 1
        """  # noqa: S608 - constants
    )
    by_model = scores_by_model(truth(emu)["project_logs"].values(), "accuracy")
    assert len(by_model) > 2
    assert {model: count for model, count, _ in answer} == {
        model: len(values) for model, values in by_model.items()
    }
    assert {model: mean for model, _, mean in answer} == pytest.approx(
        {model: sum(values) / len(values) for model, values in by_model.items()}
    )


def assert_free_form_text_is_json(destination: Destination) -> None:
    """Every value of every free-form text column is JSON to the database itself: it casts
    to the JSON type (which fails the query on one invalid value), and DuckDB's `json_valid`
    finds none invalid."""
    warehouse = destination.warehouse
    for stream in ROW_STREAMS:
        columns = sorted(json_text_columns(stream.name, warehouse.column_types(stream.name)))
        assert len(columns) == (5 if stream.name == "dataset_events" else 8), stream.name
        cast = ", ".join(
            f"count({c}), count(CAST({c} AS {destination.json_type}))" for c in columns
        )
        counts = warehouse.query(f"SELECT {cast} FROM {SCHEMA}.{stream.name}")[0]  # noqa: S608
        assert counts[0::2] == counts[1::2], stream.name
        assert sum(counts[0::2]) > 0, stream.name
        if isinstance(warehouse, DuckDBWarehouse):
            invalid = ", ".join(f"count(*) FILTER (WHERE NOT json_valid({c}))" for c in columns)
            found = warehouse.query(f"SELECT {invalid} FROM {SCHEMA}.{stream.name}")  # noqa: S608
            assert found == [(0,) * len(columns)], stream.name


def stored_state(project: MeltanoProject, destination: Destination) -> dict[str, Any]:
    """The Singer state Meltano keeps for this pipeline in its own store."""
    pipeline = f"dev:{destination.extractor}-to-{destination.loader}"
    got = project.succeed("state", "get", pipeline)
    state: dict[str, Any] = json.loads(got.stdout)["singer_state"]
    return state


def assert_resumed_from(state: dict[str, Any], emu: Emulator) -> None:
    """Each object known to the first run was read from its stored watermark less the lookback.

    Objects made since start from nothing.
    """
    resumed_at = resume_floors(state, 60)
    read_after = {}
    for request in emu.request_log:
        if request.path == "/btql" and starts_a_read(request.json_body["query"]):
            read_after.update(xact_floors(request.json_body["query"]))
    new_objects = read_after.keys() - resumed_at.keys()
    assert len(new_objects) == 2  # the experiment and the dataset made between the runs
    assert {read_after[object_id] for object_id in new_objects} == {0}
    assert {k: v for k, v in read_after.items() if k in resumed_at} == resumed_at


def assert_only_changed_rows_were_rewritten(
    warehouse: LoadedWarehouse,
    emu: Emulator,
    state: dict[str, Any],
    changed: dict[str, set[tuple[str, str]]],
    between_runs: datetime,
) -> None:
    """The PostgreSQL loaders stamp each row they write (`_sdc_extracted_at`: the tap's
    `time_extracted`): the second run wrote the changed rows and the lookback window again,
    over the rows already there, and nothing else."""
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
