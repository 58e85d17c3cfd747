"""`custom_streams` definitions: checked up front, all problems at once, schemas known offline."""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any

import pytest

from tap_braintrust.custom import ReportStreamSpec, RowStreamSpec, read_custom_streams
from tap_braintrust.schemas import ANY_JSON
from tap_braintrust.tap import STREAM_NAMES
from tests.conftest import API_KEY

if TYPE_CHECKING:
    from collections.abc import Callable

    from tests.conftest import TapRun

NOWHERE = "http://127.0.0.1:9"  # discovery must not need the network
DAILY = (
    "SELECT day(created) AS day, metadata.model AS model, avg(scores.accuracy) AS accuracy, "
    "count(1) AS spans FROM project_logs('p1') WHERE created > now() - interval 7 day "
    "GROUP BY 1, 2"
)


def problems_of(definitions: list[Any]) -> list[str]:
    return read_custom_streams(definitions, STREAM_NAMES)[1]


@pytest.mark.parametrize(
    ("definition", "problem"),
    [
        ({"from": "dataset"}, "custom_streams[0]: needs a `name`"),
        ({"name": "Bad-Name", "from": "dataset"}, "name 'Bad-Name' must be lower-case letters"),
        ({"name": "project_logs", "from": "dataset"}, "is a built-in stream's; choose another"),
        ({"name": "x"}, "needs either `from` (a row stream) or `sql` (a report stream), and has"),
        ({"name": "x", "from": "dataset", "sql": DAILY}, "`sql` (a report stream), not both"),
        ({"name": "x", "from": "spans"}, "`from` must be one of project_logs, experiment, datas"),
        ({"name": "x", "from": "dataset", "shape": "trace"}, "`shape` must be one of spans, tr"),
        ({"name": "x", "from": "dataset", "filters": "a = 1"}, "unknown key 'filters' for a row "),
        ({"name": "x", "from": "dataset", "filters": "a = 1"}, "(did you mean 'filter'?)"),
        ({"name": "x", "from": "dataset", "filter": " "}, "`filter` must be a non-empty BTQL"),
        ({"name": "x", "from": "dataset", "select": ["output"]}, "'output' is not a field of dat"),
        ({"name": "x", "from": "dataset", "select": []}, "`select` must be a non-empty list"),
        ({"name": "x", "from": "dataset", "select": ["input."]}, "path 'input.' has an empty p"),
        (
            {"name": "x", "from": "project_logs", "select": ["metadata.id"]},
            "`select` paths 'id' and 'metadata.id' would both be column 'id'",
        ),
        (
            {"name": "x", "from": "project_logs", "select": ["metadata.model", "input.model"]},
            "'metadata.model' and 'input.model' would both be column 'model'",
        ),
        (
            {"name": "x", "from": "dataset", "shape": "summary", "select": ["input"]},
            "`select` does not apply to shape 'summary'",
        ),
        ({"name": "x", "from": "dataset", "object_ids": "d1"}, "`object_ids` must be a non-emp"),
        ({"name": "x", "sql": DAILY, "shape": "traces"}, "unknown key 'shape' for a report"),
        ({"name": "x", "sql": "DELETE FROM logs"}, "`sql` must be a SQL query: SELECT ... FROM"),
        ({"name": "x", "sql": f"{DAILY} OFFSET 'abc'"}, "`sql` must not have OFFSET"),
        (
            {"name": "x", "sql": "SELECT count(1) FROM project_logs('p1')"},
            "`sql` column 1 (count(1)) needs a name: add AS <name>",
        ),
        (
            {"name": "x", "sql": "SELECT metadata.model, input.model FROM project_logs('p1')"},
            "`sql` has two columns named 'model'",
        ),
        (
            {"name": "x", "sql": DAILY, "primary_keys": ["day", "models"]},
            "primary key 'models' is not a column of the SQL (it has day, model, accuracy, sp",
        ),
        ({"name": "x", "sql": DAILY, "tz_offset": "480"}, "`tz_offset` must be whole minutes"),
        ({"name": "x", "sql": DAILY, "tz_offset": 2000}, "`tz_offset` must be whole minutes"),
        (
            {"name": "x", "sql": "SELECT * FROM project_prompts('p1')"},
            "selects * from a source the tap has no schema for",
        ),
    ],
)
def test_a_bad_definition_is_refused_naming_the_stream(
    definition: dict[str, Any], problem: str
) -> None:
    found = problems_of([definition])
    assert any(problem in line for line in found), found
    if "name" in definition:
        assert all(
            line.startswith(f"custom_streams[0] ({definition['name']!r}): ") for line in found
        )


def test_two_streams_may_not_share_a_name() -> None:
    found = problems_of([{"name": "a", "from": "dataset"}, {"name": "a", "from": "experiment"}])
    assert found == ["custom_streams[1] ('a'): name 'a' is used by another custom stream"]


def test_good_definitions_are_read() -> None:
    specs, problems = read_custom_streams(
        [
            {
                "name": "corrections",
                "from": "project_logs",
                "select": ["input", "metadata.user_id"],
                "filter": "metadata.user_correction = true",
            },
            {"name": "daily", "sql": f" {DAILY} ;\n", "primary_keys": ["day", "model"]},
        ],
        STREAM_NAMES,
    )
    assert problems == []
    rows, report = specs
    assert isinstance(rows, RowStreamSpec)
    assert rows.columns == (
        ("project_id",),
        ("id",),
        ("_xact_id",),
        ("created",),
        ("input",),
        ("metadata", "user_id"),
    )
    assert rows.primary_keys == ("project_id", "id")
    assert isinstance(report, ReportStreamSpec)
    assert report.sql == DAILY  # the trailing semicolon goes: the tap may append OFFSET
    assert [column.name for column in report.columns or ()] == ["day", "model", "accuracy", "spans"]
    assert report.source == "project_logs"
    assert report.limit is None


def test_report_columns_keep_known_types_and_make_computed_ones_any_json() -> None:
    sql = (
        "SELECT created, scores.user_rating, metadata.model, count(1) AS n, "
        'percentile(scores.accuracy, 0.5) AS "median accuracy" '
        "FROM project_logs('p1') WHERE tags INCLUDES 'x' LIMIT 50"
    )
    (spec,), problems = read_custom_streams([{"name": "r", "sql": sql}], STREAM_NAMES)
    assert problems == []
    assert isinstance(spec, ReportStreamSpec)
    assert spec.limit == 50
    properties = spec.schema["properties"]
    assert list(properties) == ["created", "user_rating", "model", "n", "median accuracy"]
    assert properties["created"]["format"] == "date-time"
    assert properties["user_rating"]["type"] == ["number", "null"]
    assert properties["model"] == ANY_JSON  # metadata is free-form
    assert properties["n"] == properties["median accuracy"] == ANY_JSON


def test_every_problem_is_reported_in_one_run_before_any_request(
    run_tap: Callable[..., TapRun],
) -> None:
    config = {
        "api_key": API_KEY,
        "api_url": NOWHERE,
        "custom_streams": [
            {"name": "datasets", "from": "dataset"},
            {"name": "ok", "from": "dataset", "select": ["output"]},
            {"name": "report", "sql": "SELECT count(1) FROM dataset('d')"},
        ],
    }
    run = run_tap(config)
    assert run.returncode == 1
    for problem in (
        "custom_streams[0] ('datasets'): name 'datasets' is a built-in stream's",
        "custom_streams[1] ('ok'): `select` path 'output': 'output' is not a field",
        "custom_streams[2] ('report'): `sql` column 1 (count(1)) needs a name",
    ):
        assert problem in run.stderr
    assert "Traceback" not in run.stderr
    assert run.messages == []


def test_discovery_lists_custom_streams_without_the_network(
    run_tap: Callable[..., TapRun],
) -> None:
    config = {
        "api_key": API_KEY,
        "api_url": NOWHERE,
        "custom_streams": [
            {"name": "training_set", "from": "dataset", "select": ["input", "expected"]},
            {"name": "rated_traces", "from": "experiment", "shape": "traces"},
            {"name": "trace_summaries", "from": "project_logs", "shape": "summary"},
            {"name": "daily", "sql": DAILY, "primary_keys": ["day", "model"]},
        ],
    }
    run = run_tap(config, "--discover")
    assert run.returncode == 0, run.stderr
    entries = {entry["tap_stream_id"]: entry for entry in json.loads(run.stdout)["streams"]}
    assert set(entries) == {
        *STREAM_NAMES,
        "training_set",
        "rated_traces",
        "trace_summaries",
        "daily",
    }
    assert entries["training_set"]["key_properties"] == ["dataset_id", "id"]
    assert list(entries["training_set"]["schema"]["properties"]) == [
        "dataset_id",
        "id",
        "_xact_id",
        "created",
        "input",
        "expected",
    ]
    assert entries["rated_traces"]["key_properties"] == ["experiment_id", "id"]
    assert entries["trace_summaries"]["key_properties"] == ["project_id", "root_span_id"]
    summary = entries["trace_summaries"]["schema"]["properties"]
    assert {"scores", "metrics", "span_type_info", "root_span_id", "input"} <= set(summary)
    assert "num_spans" not in summary
    assert entries["daily"]["key_properties"] == ["day", "model"]
    replication = {
        name: next(m for m in entry["metadata"] if m["breadcrumb"] == [])["metadata"]
        for name, entry in entries.items()
    }
    assert replication["daily"].get("replication-key") is None
    assert replication["training_set"]["valid-replication-keys"] == ["created"]


def test_a_catalog_may_select_a_custom_stream(run_tap: Callable[..., TapRun]) -> None:
    config = {
        "api_key": API_KEY,
        "api_url": NOWHERE,
        "custom_streams": [{"name": "training_set", "from": "dataset"}],
    }
    catalog = json.loads(run_tap(config, "--discover").stdout)
    others = {**config, "custom_streams": []}
    run = run_tap(others, catalog=catalog)
    # Without the definition, the catalog names a stream the tap does not have.
    assert run.returncode == 2
    assert "names stream 'training_set', which tap-braintrust does not have" in run.stderr
