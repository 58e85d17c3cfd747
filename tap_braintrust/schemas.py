"""JSON Schemas of every stream, in one place, typed from the Braintrust API contract.

Fields the API marks required are non-nullable; every other field is nullable and may be
absent (older servers omit some), so a missing key never fails a sync.
"""

from __future__ import annotations

from singer_sdk import typing as th

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
