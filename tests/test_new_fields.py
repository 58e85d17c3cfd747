"""Fields Braintrust adds arrive: a top-level field a stream's schema lacks becomes a column.

The emulator's dataset rows gain a field (`add_row_field`) that some rows have and some do
not, and one experiment a field of its own. Runs of the tap CLI must send a SCHEMA message
with the new property (free-form JSON, or JSON text with `json_fields_as_text`) before the
first record or BATCH that carries it, and the values as they were written, whether the tap
passed Braintrust's text through or decoded the values (stream maps, flattening). A catalog
that selects a list of fields leaves the field out, with a warning. Last, target-postgres
adds the column, through `meltano run`.
"""

from __future__ import annotations

import gzip
import json
import uuid
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

import pytest

from tap_braintrust import schemas
from tests.conftest import API_KEY, demo_of, tap_config
from tests.loaded_tables import SCHEMA, PostgresWarehouse
from tests.meltano_project import MeltanoProject
from tests.test_json_as_text import TEXT_SCHEMA

if TYPE_CHECKING:
    from collections.abc import Callable

    from tests.conftest import TapRun
    from tests.emulator import Emulator
    from tests.postgres import PostgresServer

ROW_FIELD = "review"
REVIEWS: dict[str, Any] = {
    "reviewed-object": {"verdict": "ok", "by": ["ann", None], "score": 0.5},
    "reviewed-text": "approved ✓",
    "reviewed-number": 0.75,
}
"""Rows with the new field, by id, and its value; each row's `expected` holds the same."""
OBJECT_FIELD = "retention"
RETENTION = {"days": 30, "tier": "gold"}
GAINED = {"dataset_events": ROW_FIELD, "experiments": OBJECT_FIELD}
"""The built-in streams that gain a field, and the field."""
NEW_FIELDS_LOG = "Braintrust sent new fields, added to the schema as JSON"


@pytest.fixture
def emu(emulator: Emulator) -> Emulator:
    """The demo, then dataset rows with a new field (and one without it, written after),
    and the experiment listed last (the oldest) with a field of its own."""
    store = emulator.store
    dataset_id = demo_of(emulator).datasets[0]["id"]
    store.add_row_field("dataset", ROW_FIELD)
    store.insert_rows(
        "dataset",
        dataset_id,
        [
            {"id": row_id, "input": {"q": row_id}, "expected": value, ROW_FIELD: value}
            for row_id, value in REVIEWS.items()
        ],
    )
    store.insert_rows("dataset", dataset_id, [{"id": "not-reviewed", "input": {"q": "later"}}])
    # The store has no way to add a field to objects: the stored experiment gains it.
    store._objects["experiment"][oldest_experiment(emulator)][OBJECT_FIELD] = RETENTION
    return emulator


def oldest_experiment(emu: Emulator) -> str:
    """The experiment the listing sends last."""
    return str(emu.store.objects("experiment")[-1]["id"])


def succeed(run_tap: Callable[..., TapRun], config: dict[str, Any], **kwargs: Any) -> TapRun:
    run = run_tap(config, **kwargs)
    assert run.returncode == 0, run.stderr[-3000:]
    return run


def of_stream(run: TapRun, stream: str) -> list[dict[str, Any]]:
    return [m for m in run.messages if m.get("stream") == stream]


def schema_count(run: TapRun, stream: str) -> int:
    return sum(m["type"] == "SCHEMA" for m in of_stream(run, stream))


def widened_schema(run: TapRun, stream: str, field: str) -> dict[str, Any]:
    """The type of `field` in the SCHEMA message that adds it to `stream`.

    Checked: it is the stream's second and last SCHEMA, the same as the first but for the
    field; messages without the field came before it, and none that carries it.
    """
    messages = of_stream(run, stream)
    schema_at = [i for i, m in enumerate(messages) if m["type"] == "SCHEMA"]
    assert len(schema_at) == 2, f"{stream}: {len(schema_at)} SCHEMA messages"
    first, widened = (messages[i] for i in schema_at)
    added: dict[str, Any] = widened["schema"]["properties"][field]
    assert widened["schema"]["properties"] == {**first["schema"]["properties"], field: added}
    assert {k: v for k, v in widened.items() if k != "schema"} == {
        k: v for k, v in first.items() if k != "schema"
    }
    before = messages[schema_at[0] + 1 : schema_at[1]]
    assert before, f"{stream}: the field came with the first message"
    assert not [m for m in before if field in m.get("record", {})]
    return added


def values_of(records: list[dict[str, Any]], field: str) -> dict[str, Any]:
    """The field's value in each record that has it, by id."""
    return {record["id"]: record[field] for record in records if field in record}


def said(run: TapRun, text: str) -> int:
    """How many lines of the run's log hold `text`."""
    return sum(text in line for line in run.stderr.splitlines())


def test_new_fields_arrive_after_a_schema_message_with_them(
    emu: Emulator, run_tap: Callable[..., TapRun]
) -> None:
    dataset_id = demo_of(emu).datasets[0]["id"]
    custom = [
        {"name": "dataset_rows", "from": "dataset"},
        {"name": "dataset_inputs", "from": "dataset", "select": ["input"]},
        {"name": "dataset_report", "sql": f"SELECT * FROM dataset('{dataset_id}')"},  # noqa: S608
    ]
    # No setting needs decoded values: row values pass through as Braintrust's JSON text.
    run = succeed(run_tap, tap_config(emu, custom_streams=custom))

    for stream in ("dataset_events", "dataset_rows", "dataset_report"):
        assert widened_schema(run, stream, ROW_FIELD) == schemas.ANY_JSON, stream
        records = run.records(stream)
        assert values_of(records, ROW_FIELD) == REVIEWS, stream
        assert {"not-reviewed", *REVIEWS} < {record["id"] for record in records}
        assert said(run, f"{stream}: {NEW_FIELDS_LOG}: {ROW_FIELD}") == 1
    assert widened_schema(run, "experiments", OBJECT_FIELD) == schemas.ANY_JSON
    assert values_of(run.records("experiments"), OBJECT_FIELD) == {
        oldest_experiment(emu): RETENTION
    }
    assert said(run, f"experiments: {NEW_FIELDS_LOG}: {OBJECT_FIELD}") == 1
    # A custom stream with `select` reads only its columns: nothing new comes.
    assert schema_count(run, "dataset_inputs") == 1
    assert run.records("dataset_inputs")
    assert not values_of(run.records("dataset_inputs"), ROW_FIELD)
    assert said(run, "new fields") == 4
    for stream in ("projects", "datasets", "project_logs", "experiment_events"):
        assert schema_count(run, stream) == 1


@pytest.mark.parametrize(
    ("settings", "alias"),
    [
        # An identity map, and a second stream made from dataset_events: both rebuilt.
        (
            {
                "stream_maps": {
                    "dataset_events": {},
                    "experiments": {},
                    "dataset_copy": {"__source__": "dataset_events"},
                }
            },
            "dataset_copy",
        ),
        # Flattening turns objects it does not split into JSON text, the new field's too.
        ({"flattening_enabled": True, "flattening_max_depth": 1}, None),
    ],
    ids=["stream_maps", "flattening"],
)
def test_decoded_new_fields_reach_stream_maps_and_flattening(
    emu: Emulator, run_tap: Callable[..., TapRun], settings: dict[str, Any], alias: str | None
) -> None:
    run = succeed(run_tap, tap_config(emu, **settings))
    flattened = "flattening_enabled" in settings
    # Typed as the free-form `expected` is, once flattening has had its say.
    schema = [m for m in of_stream(run, "dataset_events") if m["type"] == "SCHEMA"][-1]
    free_form = {
        k: v for k, v in schema["schema"]["properties"]["expected"].items() if k != "description"
    }
    assert (free_form == schemas.ANY_JSON) != flattened
    for stream in (*GAINED, *([alias] if alias else [])):
        field = GAINED.get(stream, ROW_FIELD)
        assert widened_schema(run, stream, field) == free_form, stream
    for stream in ("dataset_events", *([alias] if alias else [])):
        records = {record["id"]: record for record in run.records(stream)}
        # Treated as the free-form `expected` with the same value is.
        assert values_of(list(records.values()), ROW_FIELD) == {
            row_id: records[row_id]["expected"] for row_id in REVIEWS
        }
        if flattened:
            assert json.loads(records["reviewed-object"][ROW_FIELD]) == REVIEWS["reviewed-object"]
        else:
            assert values_of(list(records.values()), ROW_FIELD) == REVIEWS
    retention = values_of(run.records("experiments"), OBJECT_FIELD)[oldest_experiment(emu)]
    assert (json.loads(retention) if flattened else retention) == RETENTION


def test_with_json_fields_as_text_a_new_field_is_json_text(
    emu: Emulator, run_tap: Callable[..., TapRun]
) -> None:
    run = succeed(run_tap, tap_config(emu, json_fields_as_text=True))
    for stream, field in GAINED.items():
        assert widened_schema(run, stream, field) == TEXT_SCHEMA, stream
        assert said(run, f"{stream}: {NEW_FIELDS_LOG} text: {field}") == 1
    texts = values_of(run.records("dataset_events"), ROW_FIELD)
    assert {row_id: json.loads(text) for row_id, text in texts.items()} == REVIEWS
    assert all(isinstance(text, str) for text in texts.values())
    (retention,) = values_of(run.records("experiments"), OBJECT_FIELD).values()
    assert json.loads(retention) == RETENTION


def test_each_later_field_widens_the_schema_again(
    emulator: Emulator, run_tap: Callable[..., TapRun]
) -> None:
    store = emulator.store
    dataset_id = demo_of(emulator).datasets[0]["id"]
    for field in ("first_new", "second_new"):
        store.add_row_field("dataset", field)
    store.insert_rows("dataset", dataset_id, [{"id": "one", "first_new": 1}])
    store.insert_rows("dataset", dataset_id, [{"id": "two", "first_new": 2, "second_new": []}])
    run = succeed(run_tap, tap_config(emulator))
    messages = of_stream(run, "dataset_events")
    schemas_at = [i for i, m in enumerate(messages) if m["type"] == "SCHEMA"]
    assert len(schemas_at) == 3
    assert [m["record"]["id"] for m in messages[schemas_at[1] + 1 : schemas_at[2]]] == ["one"]
    first, widened, again = (messages[i]["schema"]["properties"] for i in schemas_at)
    assert widened == {**first, "first_new": schemas.ANY_JSON}
    assert again == {**widened, "second_new": schemas.ANY_JSON}
    records = run.records("dataset_events")
    assert values_of(records, "first_new") == {"one": 1, "two": 2}
    assert values_of(records, "second_new") == {"two": []}
    assert said(run, f"dataset_events: {NEW_FIELDS_LOG}: first_new") == 1
    assert said(run, f"dataset_events: {NEW_FIELDS_LOG}: second_new") == 1


def catalog_of(
    run_tap: Callable[..., TapRun], *, deselect: dict[str, str] | None
) -> dict[str, Any]:
    """The discovered catalog with only the streams that gain a field selected: every field
    of each (Meltano's `stream.*`), or all but the field `deselect` names for it."""
    catalog: dict[str, Any] = json.loads(run_tap(None, "--discover").stdout)
    for entry in catalog["streams"]:
        stream = entry["tap_stream_id"]
        for item in entry["metadata"]:
            crumb, metadata = item["breadcrumb"], item["metadata"]
            if not crumb:
                metadata["selected"] = stream in GAINED
            else:
                metadata["selected"] = deselect is None or crumb[-1] != deselect.get(stream)
    return catalog


def test_a_catalog_of_every_field_takes_new_ones(
    emu: Emulator, run_tap: Callable[..., TapRun]
) -> None:
    run = succeed(run_tap, tap_config(emu), catalog=catalog_of(run_tap, deselect=None))
    assert {m["stream"] for m in run.messages if m["type"] == "SCHEMA"} == GAINED.keys()
    for stream, field in GAINED.items():
        assert widened_schema(run, stream, field) == schemas.ANY_JSON
    assert values_of(run.records("dataset_events"), ROW_FIELD) == REVIEWS
    assert values_of(run.records("experiments"), OBJECT_FIELD) == {
        oldest_experiment(emu): RETENTION
    }


def test_a_catalog_that_lists_fields_leaves_new_ones_out(
    emu: Emulator, run_tap: Callable[..., TapRun]
) -> None:
    deselect = {"dataset_events": "tags", "experiments": "description"}
    run = succeed(run_tap, tap_config(emu), catalog=catalog_of(run_tap, deselect=deselect))
    for stream, field in GAINED.items():
        assert schema_count(run, stream) == 1
        (schema,) = (m["schema"] for m in of_stream(run, stream) if m["type"] == "SCHEMA")
        assert field not in schema["properties"]
        assert deselect[stream] not in schema["properties"]
        records = run.records(stream)
        assert records
        assert not values_of(records, field)
        assert not values_of(records, deselect[stream])
        warnings = [line for line in run.stderr.splitlines() if "left out" in line]
        assert len([line for line in warnings if f"{stream}: " in line]) == 1
        assert f"`select: [{stream}.{field}]`" in run.stderr
    assert said(run, NEW_FIELDS_LOG) == 0
    assert len(run.records("dataset_events")) > len(REVIEWS)


def test_with_batch_messages_the_schema_precedes_the_batch_holding_the_field(
    emu: Emulator, run_tap: Callable[..., TapRun], tmp_path: Path
) -> None:
    root = tmp_path / "batches"
    root.mkdir()
    batch_config = {
        "encoding": {"format": "jsonl", "compression": "gzip"},
        "storage": {"root": root.as_uri(), "prefix": "rows-"},
        "batch_size": 40,
    }
    run = succeed(run_tap, tap_config(emu, batch_config=batch_config))
    assert not run.records("dataset_events")
    messages = of_stream(run, "dataset_events")
    widened = widened_schema(run, "dataset_events", ROW_FIELD)
    assert widened == schemas.ANY_JSON
    schema_at = [i for i, m in enumerate(messages) if m["type"] == "SCHEMA"][-1]
    batched: list[tuple[int, list[dict[str, Any]]]] = []
    for at, message in enumerate(messages):
        if message["type"] == "BATCH":
            for url in message["manifest"]:
                with gzip.open(Path(urlsplit(url).path)) as lines:
                    batched.append((at, [json.loads(line) for line in lines]))
    with_field = [at for at, rows in batched if values_of(rows, ROW_FIELD)]
    assert with_field
    assert min(with_field) > schema_at
    assert [at for at, _ in batched if at < schema_at], "no batch came before the field"
    rows = [row for _, rows in batched for row in rows]
    assert values_of(rows, ROW_FIELD) == REVIEWS


@pytest.mark.usefixtures("meltano_plugins")
def test_target_postgres_adds_the_column(
    emu: Emulator, postgres: PostgresServer, tmp_path: Path
) -> None:
    database = f"new_fields_{uuid.uuid4().hex[:12]}"
    postgres.create_database(database)
    warehouse = PostgresWarehouse(postgres, database)
    project = MeltanoProject.copy_to(
        tmp_path / "project",
        TAP_BRAINTRUST_API_URL=emu.url,
        TAP_BRAINTRUST_API_KEY=API_KEY,
        **postgres.target_env(database),
    )
    project.succeed("run", "tap-braintrust", "target-postgres")
    loaded: dict[str, dict[str, Any]] = {}
    for table, field in GAINED.items():
        assert warehouse.column_types(table)[field] == "jsonb", table
        # psycopg reads SQL NULL (rows loaded before the column came) and JSON null alike.
        statement = f"SELECT id, {field} FROM {SCHEMA}.{table}"  # noqa: S608
        loaded[table] = dict(warehouse.query(statement))
    reviews = loaded["dataset_events"]
    assert {row_id: value for row_id, value in reviews.items() if value is not None} == REVIEWS
    assert reviews["not-reviewed"] is None
    assert len(reviews) > len(REVIEWS) + 1
    assert {row_id: value for row_id, value in loaded["experiments"].items() if value} == {
        oldest_experiment(emu): RETENTION
    }
    assert len(loaded["experiments"]) > 1
