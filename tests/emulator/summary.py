"""Rows of the ``summary`` shape: one per trace, rolled up from the trace's visible spans.

The contract only says what is known of a summary row (averaged scores, aggregated metrics,
previews of the root span's payloads, no ``num_spans``); the rest is chosen here, strictly,
and listed as unverified in the README so the tap does not lean on it.
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any

from tests.emulator.store import FIELD_SCHEMAS, ROW_FIELDS

if TYPE_CHECKING:
    from collections.abc import Sequence

    from tests.emulator.store import RowSource, StoredRow

DEFAULT_PREVIEW_LENGTH = 124
PREVIEW_FIELDS = ("input", "output", "expected", "error", "metadata")
_OBJECT_FIELDS = ("org_id", "project_id", "experiment_id", "dataset_id", "log_id")
_TOKEN_METRICS = ("prompt_tokens", "completion_tokens")
_SUMS = ("prompt_tokens", "completion_tokens", "total_tokens", "estimated_cost")
_COUNTS = ("llm_calls", "tool_calls", "errors")


def representative(spans: Sequence[StoredRow]) -> StoredRow:
    """The span a summary row shows: the root (``span_id == root_span_id``).

    With the root deleted (its children stay alive) it is the trace's span with the smallest
    `_pagination_key`, the oldest written.
    """
    roots = [span for span in spans if span.row.get("span_id") == span.row.get("root_span_id")]
    return min(roots or spans, key=lambda span: span.pagination_key)


def _number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def preview(value: Any, length: int) -> Any:
    """A string cut to ``length`` characters; other non-null JSON as its compact text, cut.

    ``length`` -1 keeps the value whole and unchanged.
    """
    if length == -1 or value is None:
        return value
    text = (
        value
        if isinstance(value, str)
        else json.dumps(value, ensure_ascii=False, separators=(",", ":"))
    )
    return text[:length]


def _scores(spans: Sequence[StoredRow]) -> dict[str, float]:
    """Per score name, the mean of the spans' numbers (NULLs and non-numbers ignored)."""
    found: dict[str, list[float]] = {}
    for span in spans:
        for name, value in (span.row.get("scores") or {}).items():
            if _number(value):
                found.setdefault(name, []).append(value)
    return {name: sum(values) / len(values) for name, values in sorted(found.items())}


def _sums(spans: Sequence[StoredRow]) -> dict[str, float]:
    """Token and cost sums; `total_tokens` takes a span's `tokens`, else prompt + completion."""
    found: dict[str, list[float]] = {}
    for span in spans:
        metrics = span.row.get("metrics") or {}
        for name in (*_TOKEN_METRICS, "estimated_cost"):
            if _number(metrics.get(name)):
                found.setdefault(name, []).append(metrics[name])
        parts = [metrics[name] for name in _TOKEN_METRICS if _number(metrics.get(name))]
        total = metrics.get("tokens") if _number(metrics.get("tokens")) else None
        if total is not None or parts:
            found.setdefault("total_tokens", []).append(sum(parts) if total is None else total)
    return {name: sum(found[name]) for name in _SUMS if name in found}


def _metrics(spans: Sequence[StoredRow]) -> dict[str, Any]:
    """Sums, counts and the time span of a trace; a metric without inputs is left out."""
    result: dict[str, Any] = _sums(spans)
    kinds = [(span.row.get("span_attributes") or {}).get("type") for span in spans]
    result["llm_calls"] = kinds.count("llm")
    result["tool_calls"] = kinds.count("tool")
    result["errors"] = sum(span.row.get("error") is not None for span in spans)
    every = [span.row.get("metrics") or {} for span in spans]
    starts = [m["start"] for m in every if _number(m.get("start"))]
    ends = [m["end"] for m in every if _number(m.get("end"))]
    if starts:
        result["start"] = min(starts)
    if ends:
        result["end"] = max(ends)
    if starts and ends:
        result["duration"] = result["end"] - result["start"]
    return result


def summary_row(
    source: RowSource, spans: Sequence[StoredRow], preview_length: int | None
) -> dict[str, Any]:
    """The summary row of one trace from all its visible spans (only the source's fields)."""
    rep = representative(spans)
    row = rep.row
    columns = ROW_FIELDS[source]
    length = DEFAULT_PREVIEW_LENGTH if preview_length is None else preview_length
    result: dict[str, Any] = {
        "id": row["id"],
        "_xact_id": str(max(span.xact_id for span in spans)),
        "_pagination_key": row["_pagination_key"],
        "created": row["created"],
        **{name: row.get(name) for name in _OBJECT_FIELDS if name in columns},
        "root_span_id": row.get("root_span_id") or row["id"],
    }
    for name in ("span_attributes", "tags"):
        if name in columns:
            result[name] = row.get(name)
    for name in PREVIEW_FIELDS:
        if name in columns:
            result[name] = preview(row.get(name), length)
    if "scores" in columns:
        result["scores"] = _scores(spans)
    if "metrics" in columns:
        metrics = _metrics(spans)
        result["metrics"] = metrics
        cached = any((span.row.get("metrics") or {}).get("cached") for span in spans)
        result["span_type_info"] = {"cached": cached, "has_error": metrics["errors"] > 0}
    return result


_PREVIEW_SCHEMA = {"type": ["string", "null"]}
_NUMBER_OR_NULL = {"type": ["number", "null"]}
_METRICS_SCHEMA = {
    "type": "object",
    "properties": {
        **{name: {"type": "number"} for name in _SUMS},
        **{name: {"type": "integer"} for name in _COUNTS},
        **{name: {"type": "number"} for name in ("start", "end", "duration")},
    },
}
_SPAN_TYPE_INFO_SCHEMA = {
    "type": "object",
    "properties": {"cached": {"type": "boolean"}, "has_error": {"type": "boolean"}},
}


def summary_schema(source: RowSource, preview_length: int | None) -> dict[str, dict[str, Any]]:
    """JSON Schema properties of a summary row (previews are strings unless -1)."""
    columns = ROW_FIELDS[source]
    names = [
        "id",
        "_xact_id",
        "_pagination_key",
        "created",
        *(name for name in _OBJECT_FIELDS if name in columns),
        "root_span_id",
        *(name for name in ("span_attributes", "tags", *PREVIEW_FIELDS) if name in columns),
    ]
    properties = {name: FIELD_SCHEMAS[name] for name in names}
    if preview_length != -1:
        properties.update({name: _PREVIEW_SCHEMA for name in PREVIEW_FIELDS if name in columns})
    if "scores" in columns:
        properties["scores"] = {"type": "object", "additionalProperties": _NUMBER_OR_NULL}
    if "metrics" in columns:
        properties["metrics"] = _METRICS_SCHEMA
        properties["span_type_info"] = _SPAN_TYPE_INFO_SCHEMA
    return properties
