"""JSON Schemas of every stream, in one place, typed from the Braintrust API contract.

Fields the API marks required are non-nullable; every other field is nullable and may be
absent (older servers omit some), so a missing key never fails a sync.
"""

from __future__ import annotations

import typing as t

from singer_sdk import typing as th
from singer_sdk.singerlib import Metadata

if t.TYPE_CHECKING:
    from singer_sdk.singerlib import MetadataMapping

_TIMESTAMP = th.DateTimeType
_STRINGS = th.ArrayType(th.StringType)
_FREE_OBJECT = th.ObjectType(additional_properties=True)

PROJECT = th.PropertiesList(
    th.Property("id", th.StringType, required=True, description="Project id (UUID)."),
    th.Property("org_id", th.StringType, required=True, description="Owning organization id."),
    th.Property("name", th.StringType, required=True),
    th.Property("description", th.StringType),
    th.Property("created", _TIMESTAMP, description="Creation time, UTC."),
    th.Property("deleted_at", _TIMESTAMP),
    th.Property("user_id", th.StringType, description="Id of the user who created it."),
    th.Property("settings", _FREE_OBJECT, description="Project settings object."),
).to_dict()

EXPERIMENT = th.PropertiesList(
    th.Property("id", th.StringType, required=True, description="Experiment id (UUID)."),
    th.Property("project_id", th.StringType, required=True),
    th.Property("name", th.StringType, required=True),
    th.Property("description", th.StringType),
    th.Property("created", _TIMESTAMP, description="Creation time, UTC."),
    th.Property("repo_info", _FREE_OBJECT, description="Git state when the experiment ran."),
    th.Property("commit", th.StringType),
    th.Property("base_exp_id", th.StringType, description="Experiment compared against."),
    th.Property("deleted_at", _TIMESTAMP),
    th.Property("dataset_id", th.StringType),
    th.Property("dataset_version", th.StringType),
    th.Property("internal_metadata", _FREE_OBJECT),
    th.Property("parameters_id", th.StringType),
    th.Property("parameters_version", th.StringType),
    th.Property("public", th.BooleanType, required=True),
    th.Property("user_id", th.StringType),
    th.Property("metadata", _FREE_OBJECT),
    th.Property("tags", _STRINGS),
).to_dict()

DATASET = th.PropertiesList(
    th.Property("id", th.StringType, required=True, description="Dataset id (UUID)."),
    th.Property("project_id", th.StringType, required=True),
    th.Property("name", th.StringType, required=True),
    th.Property("description", th.StringType),
    th.Property("created", _TIMESTAMP, description="Creation time, UTC."),
    th.Property("deleted_at", _TIMESTAMP),
    th.Property("user_id", th.StringType),
    th.Property("tags", _STRINGS),
    th.Property("metadata", _FREE_OBJECT),
    th.Property("url_slug", th.StringType),
).to_dict()

# Row fields. Free-form values are explicit JSON unions, so targets store them as JSON
# (jsonb in target-postgres) whatever their shape.
_ANY_JSON = th.CustomType(
    {"type": ["object", "array", "string", "number", "integer", "boolean", "null"]}
)
# Arrays of objects without `items`: target-postgres then makes one jsonb, not jsonb[].
_JSON_ARRAY = th.CustomType({"type": ["array", "null"]})
_SCORES = th.CustomType(
    {"type": ["object", "null"], "additionalProperties": {"type": ["number", "null"]}}
)


def _numbers(*fields: tuple[str, str | None]) -> th.ObjectType:
    """An object of named numbers (each with its description), open to more."""
    return th.ObjectType(
        *(
            th.Property(name, th.NumberType, description=description)
            for name, description in fields
        ),
        additional_properties=True,
    )


_METRICS = _numbers(
    ("start", "Span start, unix seconds."),
    ("end", "Span end, unix seconds."),
    ("prompt_tokens", None),
    ("completion_tokens", None),
    ("tokens", None),
    ("estimated_cost", None),
)
_SPAN_ATTRIBUTES = th.ObjectType(
    th.Property("name", th.StringType),
    th.Property("type", th.StringType, description="llm, score, function, eval, task, tool..."),
    additional_properties=True,
)


def _row_properties(*names: str) -> list[th.Property[t.Any]]:
    return [_ROW_PROPERTIES[name] for name in names]


_ROW_PROPERTIES: dict[str, th.Property[t.Any]] = {
    prop.name: prop
    for prop in (
        th.Property(
            "id", th.StringType, required=True, description="Row id, unique in its object."
        ),
        th.Property(
            "_xact_id",
            th.StringType,
            description="Transaction of the row's latest write (a decimal 64-bit integer; "
            "every merge moves it, so the highest is the newest version).",
        ),
        th.Property("_pagination_key", th.StringType),
        th.Property(
            "created",
            _TIMESTAMP,
            description="When the row was logged, by the logging client's clock, UTC.",
        ),
        th.Property("org_id", th.StringType),
        th.Property("project_id", th.StringType, required=True),
        th.Property("experiment_id", th.StringType, required=True),
        th.Property("dataset_id", th.StringType, required=True),
        th.Property("log_id", th.StringType),
        th.Property("span_id", th.StringType),
        th.Property("root_span_id", th.StringType, description="The trace's root span."),
        th.Property("span_parents", _STRINGS),
        th.Property("is_root", th.BooleanType),
        th.Property("input", _ANY_JSON),
        th.Property("output", _ANY_JSON),
        th.Property("expected", _ANY_JSON, description="The reference answer; users correct it."),
        th.Property("error", _ANY_JSON),
        th.Property("scores", _SCORES, description="Score name to a number 0..1 (or null)."),
        th.Property("metrics", _METRICS),
        th.Property("metadata", _ANY_JSON),
        th.Property("tags", _STRINGS),
        th.Property("span_attributes", _SPAN_ATTRIBUTES),
        th.Property("context", _FREE_OBJECT),
        th.Property("origin", _FREE_OBJECT, description="The dataset row an eval case came from."),
        th.Property("comments", _JSON_ARRAY, description="Comments left on the row."),
        th.Property("audit_data", _JSON_ARRAY),
        th.Property("facets", _ANY_JSON),
        th.Property("classifications", _ANY_JSON),
        th.Property("_async_scoring_state", _ANY_JSON),
    )
}

_SPAN_FIELDS = (
    "span_id",
    "root_span_id",
    "span_parents",
    "is_root",
    "input",
    "output",
    "expected",
    "error",
    "scores",
    "metrics",
    "metadata",
    "tags",
    "span_attributes",
    "context",
    "origin",
    "comments",
    "audit_data",
    "facets",
    "classifications",
    "_async_scoring_state",
)

PROJECT_LOG = th.PropertiesList(
    *_row_properties(
        "id", "_xact_id", "_pagination_key", "created", "org_id", "project_id", "log_id"
    ),
    *_row_properties(*_SPAN_FIELDS),
).to_dict()

EXPERIMENT_EVENT = th.PropertiesList(
    *_row_properties("id", "_xact_id", "_pagination_key", "created", "project_id", "experiment_id"),
    *_row_properties(*_SPAN_FIELDS),
).to_dict()

DATASET_EVENT = th.PropertiesList(
    *_row_properties(
        "id",
        "_xact_id",
        "_pagination_key",
        "created",
        "project_id",
        "dataset_id",
        "input",
        "expected",
        "metadata",
        "tags",
        "origin",
        "span_id",
        "root_span_id",
        "is_root",
        "comments",
        "audit_data",
        "facets",
        "classifications",
    ),
).to_dict()

ROW_SCHEMAS: dict[str, dict[str, t.Any]] = {
    "project_logs": PROJECT_LOG,
    "experiment": EXPERIMENT_EVENT,
    "dataset": DATASET_EVENT,
}
"""Each row source's full row schema, the base of custom streams' schemas."""

ANY_JSON: dict[str, t.Any] = _ANY_JSON.type_dict

DELETED_AT = "_sdc_deleted_at"
"""Set on a record of something deleted in Braintrust: when a run found it gone."""


def with_deleted_at(schema: dict[str, t.Any]) -> dict[str, t.Any]:
    """`schema` with the deletion marker, which target-postgres and others act on."""
    marker = th.Property(
        DELETED_AT,
        _TIMESTAMP,
        description="When a run found it deleted in Braintrust, UTC; null while it exists.",
    ).to_dict()
    return {**schema, "properties": {**schema["properties"], **marker}}


def deleted_at_automatic(metadata: MetadataMapping) -> MetadataMapping:
    """The marker always selected: a field list leaving it out would make deletes look live."""
    entry = metadata.get(("properties", DELETED_AT))
    if entry is not None:
        entry.inclusion = Metadata.InclusionType.AUTOMATIC
    return metadata


def field_schema(source: str, path: tuple[str, ...]) -> dict[str, t.Any]:
    """The type of a field path of a source's rows: the row schema's where it says, else any JSON.

    Nested values may be missing, so a nested path's type always admits null.
    """
    schema: dict[str, t.Any] | None = ROW_SCHEMAS[source]["properties"].get(path[0])
    for part in path[1:]:
        if schema is None:
            break
        nested = schema.get("properties", {}).get(part)
        extra = schema.get("additionalProperties")
        schema = nested if nested is not None else (extra if isinstance(extra, dict) else None)
    if schema is None:
        return ANY_JSON
    types = schema.get("type", [])
    types = [types] if isinstance(types, str) else list(types)
    if len(path) == 1 or "null" in types:
        return schema
    return {**schema, "type": [*types, "null"]}


def columns_schema(source: str, columns: tuple[tuple[str, ...], ...] | None) -> dict[str, t.Any]:
    """A source's rows cut to `columns` (paths, each named by its last part); None: whole rows."""
    if columns is None:
        return ROW_SCHEMAS[source]
    return {
        "type": "object",
        "properties": {path[-1]: field_schema(source, path) for path in columns},
    }


def report_schema(
    source: str | None, columns: list[tuple[str, tuple[str, ...] | None]]
) -> dict[str, t.Any]:
    """A report's columns: a plain field path typed as that field, anything computed any JSON."""
    return {
        "type": "object",
        "properties": {
            name: field_schema(source, path) if source and path else ANY_JSON
            for name, path in columns
        },
    }


_SUMMARY_METRICS = _numbers(
    ("start", "First span's start, unix seconds."),
    ("end", "Last span's end, unix seconds."),
    *((name, None) for name in ("prompt_tokens", "completion_tokens", "total_tokens")),
    *((name, None) for name in ("estimated_cost", "llm_calls", "tool_calls", "errors")),
    ("llm_duration", None),
    ("time_to_first_token", None),
)

_SUMMARY_FIELDS = th.PropertiesList(
    th.Property("root_span_id", th.StringType, required=True, description="The trace."),
    th.Property("span_type_info", _FREE_OBJECT, description="`cached`, `has_error`."),
    th.Property("scores", _SCORES, description="Each score averaged over the trace's spans."),
    th.Property("metrics", _SUMMARY_METRICS, description="Aggregated over the trace's spans."),
).to_dict()["properties"]

_SUMMARY_ROOT_FIELDS = (
    "id",
    "_xact_id",
    "_pagination_key",
    "created",
    "org_id",
    "project_id",
    "experiment_id",
    "dataset_id",
    "log_id",
    "span_attributes",
    "tags",
    "input",
    "output",
    "expected",
    "error",
    "metadata",
)


def summary_schema(source: str) -> dict[str, t.Any]:
    """One row per trace, as Braintrust's `summary` shape returns it.

    The root span's fields (those the source's rows have) and the trace's aggregates, as
    Braintrust computes them: nothing is recomputed here.
    """
    row_fields = ROW_SCHEMAS[source]["properties"]
    properties = {name: row_fields[name] for name in _SUMMARY_ROOT_FIELDS if name in row_fields}
    properties.update(_SUMMARY_FIELDS)
    return {"type": "object", "properties": properties}


def json_text_fields(schema: dict[str, t.Any]) -> frozenset[str]:
    """The top-level fields that may hold any JSON value, plain strings and booleans too."""
    scalars_and_structures = {"object", "array", "string", "boolean"}
    return frozenset(
        name
        for name, field in schema["properties"].items()
        if scalars_and_structures <= set(field.get("type", ()))
    )


def with_json_as_text(schema: dict[str, t.Any], fields: frozenset[str]) -> dict[str, t.Any]:
    """`schema` with each of `fields` a string that holds its JSON text (null stays null)."""
    if not fields:
        return schema
    properties = schema["properties"]
    return {
        **schema,
        "properties": {
            name: {
                "type": ["string", "null"],
                "contentMediaType": "application/json",
                **({"description": field["description"]} if "description" in field else {}),
            }
            if name in fields
            else field
            for name, field in properties.items()
        },
    }
