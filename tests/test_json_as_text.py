"""`json_fields_as_text`: free-form fields go out as strings holding their JSON text.

For loaders that encode only objects and arrays as JSON (target-duckdb writes a plain-string
`output` unquoted and a boolean as `True`; pipelinewise-target-postgres refuses the load).
Runs of the tap CLI against the emulator, with the setting off and on, compared record by
record: each text is the JSON of exactly the value the setting-off run sends, whether the
tap passed Braintrust's text through or decoded the values (stream maps, flattening), and a
JSON null stays null. The schemas say so, and nothing else changes.
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any

import duckdb
import pytest

from tap_braintrust.client import without_lone_surrogates
from tests.conftest import STREAM_SCHEMAS, demo_of, json_union_fields, tap_config
from tests.test_custom_streams import keyed
from tests.warehouse import ROW_STREAMS

if TYPE_CHECKING:
    from collections.abc import Callable

    from tests.conftest import TapRun
    from tests.emulator import Emulator

TEXT_SCHEMA = {"type": ["string", "null"], "contentMediaType": "application/json"}
CUT_TEXT = "the answer is \ud83d"  # a string cut inside a surrogate pair upstream
# Free-form values of every JSON kind, beside the demo's objects, arrays and plain strings.
LOGGED: list[dict[str, Any]] = [
    {
        "id": "json-booleans",
        "input": True,
        "output": False,
        "expected": "true",  # the string, not the boolean
        "metadata": {"flag": True, "none": None},
        "facets": {"topic": "billing"},
    },
    {
        "id": "json-numbers",
        "input": 0,
        "output": -0.0,
        "expected": 1.0,  # a float written as 1.0, not 1
        "error": 2**70,  # beyond 64 bits
        "metadata": {"ratio": 0.1},
        "classifications": [{"label": "ok", "score": 0.5}],
        "_async_scoring_state": 3,
    },
    {
        "id": "json-strings",
        "input": "",
        "output": "You can reset it from Settings.",
        "expected": 'say "hi"\n\t\\ ✓ é 🚀 \u0007',
        "error": "null",  # the string null, not null
    },
    {
        "id": "json-structures",
        "input": [],
        "output": {},
        "expected": [None, {"a": None, "b": [1, "x", False]}],
        "metadata": {},
    },
    {"id": "json-nulls", "input": None, "output": None, "expected": None, "error": None},
    {"id": "cut-text", "output": CUT_TEXT, "metadata": {"note": CUT_TEXT}},
]
RECORDED: list[dict[str, Any]] = [
    {"id": "json-true", "input": True, "expected": 2.5, "metadata": {"k": [None]}},
    {"id": "json-empty", "input": "", "expected": None, "classifications": "plain"},
]


@pytest.fixture
def emu(emulator: Emulator) -> Emulator:
    """The demo, and rows of each row stream holding every kind of JSON value."""
    demo = demo_of(emulator)
    store = emulator.store
    store.insert_rows("project_logs", demo.projects[0]["id"], LOGGED)
    store.insert_rows("experiment", demo.experiments[0]["id"], LOGGED)
    store.insert_rows("dataset", demo.datasets[0]["id"], RECORDED)
    return emulator


def succeed(run_tap: Callable[..., TapRun], emu: Emulator, **settings: Any) -> TapRun:
    """A run of every stream with `settings`."""
    run = run_tap(tap_config(emu, **settings))
    assert run.returncode == 0, run.stderr[-3000:]
    return run


def text_fields(stream: str) -> set[str]:
    """The free-form fields of a built-in stream: a union of every JSON type."""
    return {
        name
        for name in STREAM_SCHEMAS[stream]["properties"]
        if f"{stream}.{name}" in json_union_fields()
    }


def same_json(text: Any, value: Any) -> bool:
    """Whether `text` is JSON text of exactly `value` (True is not 1, 1.0 is not 1), or both
    are null: a JSON null goes out as null, never as the text `null`. A lone surrogate goes
    out as U+FFFD (see the test of it)."""
    if value is None:
        return text is None
    expected = json.dumps(without_lone_surrogates(value))
    return isinstance(text, str) and json.dumps(json.loads(text)) == expected


def assert_text_of(
    texts: dict[Any, dict[str, Any]],
    values: dict[Any, dict[str, Any]],
    fields: set[str],
    *,
    whole: bool = True,
) -> None:
    """Each record of `texts` holds `fields` as the JSON text of those of `values`, and is
    otherwise the same (`whole`), record by record."""
    assert texts.keys() == values.keys()
    for key, record in values.items():
        text = texts[key]
        assert {f for f in fields if f in text} == {f for f in fields if f in record}, key
        wrong = {
            f: (text[f], record[f])
            for f in fields & record.keys()
            if not same_json(text[f], record[f])
        }
        assert wrong == {}, key
        if whole:
            rest = {f: v for f, v in text.items() if f not in fields}
            assert rest == {f: v for f, v in record.items() if f not in fields}, key


def rows_of(run: TapRun) -> dict[str, dict[tuple[str, str], dict[str, Any]]]:
    """Each row stream's records by key, each key once."""
    return {stream.name: keyed(run, stream.name, stream.parent_key) for stream in ROW_STREAMS}


def test_free_form_fields_go_out_as_their_json_text(
    emu: Emulator, run_tap: Callable[..., TapRun]
) -> None:
    values = succeed(run_tap, emu)
    texts = succeed(run_tap, emu, json_fields_as_text=True)

    plain_schemas, text_schemas = values.schemas(), texts.schemas()
    assert plain_schemas.keys() == text_schemas.keys() == STREAM_SCHEMAS.keys()
    for name, message in text_schemas.items():
        declared = plain_schemas[name]["schema"]["properties"]
        got = message["schema"]["properties"]
        fields = text_fields(name)
        assert got.keys() == declared.keys()
        assert {f: got[f] for f in got if f not in fields} == {
            f: declared[f] for f in declared if f not in fields
        }, name
        # The field's description, if it has one, stays.
        assert {f: {k: v for k, v in got[f].items() if k != "description"} for f in fields} == (
            dict.fromkeys(fields, TEXT_SCHEMA)
        ), name
        assert {k: v for k, v in message.items() if k != "schema"} == {
            k: v for k, v in plain_schemas[name].items() if k != "schema"
        }
    # Object streams have no free-form fields: their records are the same.
    for listing in ("projects", "experiments", "datasets"):
        assert not text_fields(listing)
        assert texts.records(listing) == values.records(listing)

    by_value, by_text = rows_of(values), rows_of(texts)
    kinds: set[str] = set()
    for stream in ROW_STREAMS:
        fields = text_fields(stream.name)
        assert len(fields) == (5 if stream.name == "dataset_events" else 8)
        assert_text_of(by_text[stream.name], by_value[stream.name], fields)
        kinds |= {
            type(record[f]).__name__
            for record in by_value[stream.name].values()
            for f in fields
            if f in record
        }
    assert kinds == {"dict", "list", "str", "bool", "int", "float", "NoneType"}
    assert len(by_value["project_logs"]) > 1000
    assert texts.final_state == values.final_state


@pytest.mark.parametrize(
    ("settings", "whole"),
    [
        # An identity map: records as they were, but the tap decodes every value for it.
        (
            {"stream_maps": {"project_logs": {}, "experiment_events": {}, "dataset_events": {}}},
            True,
        ),
        # Flattening splits scores and metrics into columns; the free-form texts stay whole.
        ({"flattening_enabled": True, "flattening_max_depth": 1}, False),
    ],
    ids=["stream_maps", "flattening"],
)
def test_decoded_values_go_out_as_the_same_json_text(
    emu: Emulator, run_tap: Callable[..., TapRun], settings: dict[str, Any], whole: bool
) -> None:
    values = succeed(run_tap, emu)
    texts = succeed(run_tap, emu, json_fields_as_text=True, **settings)
    by_value, by_text = rows_of(values), rows_of(texts)
    for stream in ROW_STREAMS:
        fields = text_fields(stream.name)
        assert_text_of(by_text[stream.name], by_value[stream.name], fields, whole=whole)
        schema = texts.schemas()[stream.name]["schema"]["properties"]
        assert {f: schema[f]["type"] for f in fields} == dict.fromkeys(fields, TEXT_SCHEMA["type"])
    if not whole:  # flattened indeed
        assert any("metrics__start" in record for record in by_text["project_logs"].values())


def test_a_lone_surrogate_becomes_a_replacement_character_valid_to_duckdb(
    emu: Emulator, run_tap: Callable[..., TapRun]
) -> None:
    """Its escape is JSON to Python but not to DuckDB or PostgreSQL: U+FFFD replaces it."""
    run = succeed(run_tap, emu, json_fields_as_text=True)
    key = (demo_of(emu).projects[0]["id"], "cut-text")
    record = rows_of(run)["project_logs"][key]
    replaced = CUT_TEXT.replace("\ud83d", "\ufffd")
    assert json.loads(record["output"]) == replaced
    assert json.loads(record["metadata"]) == {"note": replaced}
    with duckdb.connect() as connection:
        valid = connection.execute("SELECT json_valid(?)", [record["output"]]).fetchall()
    assert valid == [(True,)]


def test_custom_streams_send_their_free_form_columns_as_text(
    emu: Emulator, run_tap: Callable[..., TapRun]
) -> None:
    project = demo_of(emu).projects[0]["id"]
    report = {
        "name": "per_kind",
        # A computed column (any JSON), a free-form nested field, and a typed one (a string).
        "sql": f"SELECT span_attributes.type AS kind, metadata.model AS model, count(*) AS n"  # noqa: S608 - a test query
        f" FROM project_logs('{project}') GROUP BY 1, 2",
        "primary_keys": ["kind", "model"],
    }
    rows = {
        "name": "selected_logs",
        "from": "project_logs",
        "select": ["input", "output", "metadata.model", "scores.accuracy", "tags"],
    }
    values = succeed(run_tap, emu, custom_streams=[report, rows])
    texts = succeed(run_tap, emu, custom_streams=[report, rows], json_fields_as_text=True)
    schemas = texts.schemas()
    plain = values.schemas()

    report_schema = schemas["per_kind"]["schema"]["properties"]
    assert report_schema["model"] == report_schema["n"] == TEXT_SCHEMA
    assert report_schema["kind"] == plain["per_kind"]["schema"]["properties"]["kind"]
    assert "string" in report_schema["kind"]["type"]
    # Keyed by the report's primary key, its text read back in the runs with the setting.
    report_texts = {
        (r["kind"], None if r["model"] is None else json.loads(r["model"])): r
        for r in texts.records("per_kind")
    }
    report_values = {(r["kind"], r["model"]): r for r in values.records("per_kind")}
    assert len(report_values) == len(values.records("per_kind")) > 2
    assert_text_of(report_texts, report_values, {"model", "n"})
    assert {type(json.loads(r["n"])) for r in report_texts.values()} == {int}

    row_schema = schemas["selected_logs"]["schema"]["properties"]
    fields = {"input", "output", "model"}
    assert {f: row_schema[f] for f in fields} == dict.fromkeys(fields, TEXT_SCHEMA)
    declared = plain["selected_logs"]["schema"]["properties"]
    assert {f: row_schema[f] for f in row_schema if f not in fields} == {
        f: declared[f] for f in declared if f not in fields
    }
    assert {"accuracy", "tags", "project_id", "id", "created"} <= row_schema.keys() - fields
    assert_text_of(
        keyed(texts, "selected_logs", "project_id"),
        keyed(values, "selected_logs", "project_id"),
        fields,
    )
