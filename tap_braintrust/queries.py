"""The BTQL queries the tap sends to `POST /btql`, built as JSON ASTs.

The AST is what Braintrust's own SDKs send: ids and timestamps travel as JSON literals, so no
value from config or from the API is ever pasted into query text, and no quoting rule can be
got wrong. Values are still checked, so a bad one fails here with a clear message rather than
as a 400 from the server.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any, Literal

from tap_braintrust.incremental import MAX_XACT_ID
from tap_braintrust.timestamps import normalize_timestamp

RowSource = Literal["project_logs", "experiment", "dataset"]
"""A BTQL row source: the function in `FROM`, taking one or several object ids."""

TraceShape = Literal["traces", "summary"]
"""Whole-trace shapes: every span of a matching trace, or one summary row per trace."""

FieldPath = tuple[str, ...]
"""A field path such as ("metadata", "user_id"), returned as a column named by its last part."""

MAX_PAGE_SIZE = 1000
"""The service's cap on `limit`."""


OBJECT_ID_FIELD: dict[RowSource, str] = {
    "project_logs": "project_id",
    "experiment": "experiment_id",
    "dataset": "dataset_id",
}
"""The row field that names the object a row belongs to, for each source."""

_IDS_DESCRIBED = 3
"""Ids named in a query's description before the rest are counted."""


def _ident(*path: str) -> dict[str, Any]:
    return {"op": "ident", "name": list(path)}


def _literal(value: str) -> dict[str, Any]:
    return {"op": "literal", "value": value}


def _compare(op: str, field: str, value: str) -> dict[str, Any]:
    return {"op": op, "left": _ident(field), "right": _literal(value)}


def _and(*nodes: dict[str, Any] | None) -> dict[str, Any] | None:
    """The conjunction of the nodes given (None ones left out); None when there are none."""
    present = [node for node in nodes if node is not None]
    return _balanced("and", present) if present else None


def _user_filter(text: str | None) -> dict[str, Any] | None:
    """A filter as the user wrote it, in BTQL text: one operand, so `a OR b` stays whole."""
    return None if text is None else {"btql": text}


def _select(columns: tuple[FieldPath, ...] | None) -> list[dict[str, Any]]:
    """Star, or each path under its last part's name (Braintrust's implicit alias)."""
    if columns is None:
        return [{"op": "star"}]
    return [{"expr": _ident(*path), "alias": path[-1]} for path in columns]


def _describe_filter(text: str | None) -> str:
    return "" if text is None else f" AND ({text})"


def _describe_select(columns: tuple[FieldPath, ...] | None) -> str:
    if columns is None:
        return ""
    return f"SELECT {', '.join('.'.join(path) for path in columns)} FROM "  # noqa: S608 - words


def _source(source: RowSource, object_ids: list[str], shape: str | None = None) -> dict[str, Any]:
    node: dict[str, Any] = {
        "op": "function",
        "name": _ident(source),
        "args": [_literal(object_id) for object_id in object_ids],
    }
    if shape is not None:
        node["shape"] = shape
    return node


def _checked_limit(limit: int) -> int:
    if not 1 <= limit <= MAX_PAGE_SIZE:
        msg = f"limit must be 1 to {MAX_PAGE_SIZE}, got {limit}"
        raise ValueError(msg)
    return limit


def _request(query: dict[str, Any] | str, **options: Any) -> dict[str, Any]:
    # `brainstore_realtime` includes rows not yet compacted, as the SDKs do.
    return {"query": query, "fmt": "json", "brainstore_realtime": True, **options}


def _named(ids: list[str]) -> str:
    """Object ids for a description: the first few, then how many more."""
    named = ", ".join(json.dumps(i, ensure_ascii=False) for i in ids[:_IDS_DESCRIBED])
    if len(ids) > _IDS_DESCRIBED:
        named += f", and {len(ids) - _IDS_DESCRIBED} more"
    return named


def _balanced(op: str, nodes: list[dict[str, Any]]) -> dict[str, Any]:
    """`nodes` joined by a binary `op`, as a tree of depth log2(n) rather than n."""
    if len(nodes) == 1:
        return nodes[0]
    middle = len(nodes) // 2
    return {"op": op, "left": _balanced(op, nodes[:middle]), "right": _balanced(op, nodes[middle:])}


@dataclass(frozen=True)
class ObjectBound:
    """Which rows of one object a query reads: those written after a transaction.

    Attributes:
        object_id: the project, experiment or dataset id.
        after_xact_id: only rows whose latest write is above this `_xact_id` (0: all). Also
            the range filter project_logs queries need to avoid a full-history scan.
        created_since: only rows with `created` at or after this ISO-8601 time.
    """

    object_id: str
    after_xact_id: int = 0
    created_since: str | None = None

    def __post_init__(self) -> None:
        """Refuse values that cannot make a meaningful query."""
        if not isinstance(self.object_id, str) or not self.object_id.strip():
            msg = f"a query needs non-empty object ids, got {self.object_id!r}"
            raise ValueError(msg)
        if not 0 <= self.after_xact_id <= MAX_XACT_ID:
            msg = f"_xact_id must be a 64-bit unsigned integer, got {self.after_xact_id}"
            raise ValueError(msg)
        if self.created_since is not None:
            # Normalising also rejects anything that is not an ISO-8601 time.
            object.__setattr__(self, "created_since", normalize_timestamp(self.created_since))

    @property
    def start(self) -> tuple[int, str]:
        """Where the object's read starts; objects that share it share one condition."""
        return self.after_xact_id, self.created_since or ""


@dataclass(frozen=True)
class RowsQuery:
    """The rows of several objects of one kind, each after its own bound, oldest write first.

    Sorting by `_xact_id` ascending is cursor-compatible, and it makes progress a watermark:
    once a row is read, every row of every object with a smaller `_xact_id` has been read
    before it. Objects that start from the same place share one condition, so the usual
    query (every object caught up to the same watermark) filters on `_xact_id` alone.

    Attributes:
        source: which kind of object's rows.
        objects: the objects and where each one's rows start.
        user_filter: a BTQL expression the rows must also match (a custom stream's), sent
            as written.
        columns: the fields to return (None: all).
    """

    source: RowSource
    objects: tuple[ObjectBound, ...]
    user_filter: str | None = None
    columns: tuple[FieldPath, ...] | None = None

    def __post_init__(self) -> None:
        """Refuse values that cannot make a meaningful query."""
        if self.source not in OBJECT_ID_FIELD:
            msg = f"unknown row source {self.source!r}"
            raise ValueError(msg)
        ids = [bound.object_id for bound in self.objects]
        if not ids or len(set(ids)) != len(ids):
            msg = f"a query needs distinct object ids, got {ids!r}"
            raise ValueError(msg)

    @property
    def id_field(self) -> str:
        """The row field holding the object id."""
        return OBJECT_ID_FIELD[self.source]

    def body(self, cursor: str | None, limit: int = MAX_PAGE_SIZE) -> dict[str, Any]:
        """The `/btql` request body for the page after `cursor` (None: the first page)."""
        query: dict[str, Any] = {
            "select": _select(self.columns),
            "from": _source(self.source, [bound.object_id for bound in self.objects]),
            "filter": _and(self._filter(), _user_filter(self.user_filter)),
            "sort": [{"expr": _ident("_xact_id"), "dir": "asc"}],
            "limit": _checked_limit(limit),
            "cursor": cursor,
        }
        return _request(query)

    def _starts(self) -> dict[tuple[int, str], list[str]]:
        """The objects' ids by where they start, in order."""
        starts: dict[tuple[int, str], list[str]] = {}
        for bound in self.objects:
            starts.setdefault(bound.start, []).append(bound.object_id)
        return starts

    def _filter(self) -> dict[str, Any]:
        starts = self._starts()
        if len(starts) == 1:
            return _bounds(*next(iter(starts)))
        # One range every object's rows lie in, so the server can skip older segments,
        # then each start's own bounds for its objects.
        lowest = min(after for after, _ in starts)
        each = [
            {
                "op": "and",
                "left": _balanced("or", [_compare("eq", self.id_field, i) for i in ids]),
                "right": _bounds(after, since),
            }
            for (after, since), ids in starts.items()
        ]
        return {
            "op": "and",
            "left": _compare("gt", "_xact_id", str(lowest)),
            "right": _balanced("or", each),
        }

    def describe(self) -> str:
        """The query in SQL-like words, for logs and error messages.

        The page size is left out: it is how the rows are fetched, not which rows, and it
        changes during a read when the server fails big pages.
        """
        named = _named([bound.object_id for bound in self.objects])
        starts = self._starts()
        if len(starts) == 1:
            where = _describe_bounds(*next(iter(starts)))
        else:
            where = " OR ".join(
                f"({len(ids)} {'object' if len(ids) == 1 else 'objects'}: "
                f"{_describe_bounds(after, since)})"
                for (after, since), ids in starts.items()
            )
        return (
            f"{_describe_select(self.columns)}{self.source}({named}) "
            f"WHERE {where}{_describe_filter(self.user_filter)} ORDER BY _xact_id ASC"
        )


def _bounds(after_xact_id: int, created_since: str) -> dict[str, Any]:
    condition = _compare("gt", "_xact_id", str(after_xact_id))
    if created_since:
        since = _compare("ge", "created", created_since)
        condition = {"op": "and", "left": condition, "right": since}
    return condition


def _describe_bounds(after_xact_id: int, created_since: str) -> str:
    where = f"_xact_id > {after_xact_id}"
    if created_since:
        where += f" AND created >= {json.dumps(created_since)}"
    return where


@dataclass(frozen=True)
class TracesQuery:
    """Whole traces of several objects: all their spans, or one summary row each.

    Which traces: those with a span matching `user_filter`, among `root_span_ids` (the
    traces written since the last run) or, with None, all of them. Sorted by
    `_pagination_key`, the order whole-trace shapes page in with the server cursor.

    Attributes:
        source: which kind of object's rows.
        object_ids: the objects read.
        shape: "traces" or "summary".
        user_filter: a BTQL expression, sent as written.
        root_span_ids: the traces to read; None: every trace.
        columns: the fields of each row to return (None: all).
    """

    source: RowSource
    object_ids: tuple[str, ...]
    shape: TraceShape
    user_filter: str | None = None
    root_span_ids: tuple[str, ...] | None = None
    columns: tuple[FieldPath, ...] | None = None

    def __post_init__(self) -> None:
        """Refuse values that cannot make a meaningful query."""
        if not self.object_ids or self.root_span_ids == ():
            msg = "a traces query needs object ids, and root span ids unless it reads all"
            raise ValueError(msg)

    def body(self, cursor: str | None, limit: int = MAX_PAGE_SIZE) -> dict[str, Any]:
        """The `/btql` request body for the page after `cursor` (None: the first page)."""
        if self.root_span_ids is None:
            # Every trace: still a range, so the server can skip segment lookups.
            traces = _compare("gt", "_xact_id", "0")
        else:
            traces = _balanced(
                "or", [_compare("eq", "root_span_id", i) for i in self.root_span_ids]
            )
        query: dict[str, Any] = {
            "select": _select(self.columns),
            "from": _source(self.source, list(self.object_ids), self.shape),
            "filter": _and(traces, _user_filter(self.user_filter)),
            "sort": [{"expr": _ident("_pagination_key"), "dir": "asc"}],
            "limit": _checked_limit(limit),
            "cursor": cursor,
        }
        if self.shape == "summary":
            # Whole values, not previews cut to 124 characters (what the `bt` CLI asks for).
            query["preview_length"] = -1
        return _request(query)

    def describe(self) -> str:
        """The query in SQL-like words, for logs and error messages."""
        traces = (
            "every trace"
            if self.root_span_ids is None
            else f"{len(self.root_span_ids)} traces written since the last run"
        )
        matching = (
            "" if self.user_filter is None else f" that have a span matching ({self.user_filter})"
        )
        return (
            f"{_describe_select(self.columns)}{self.source}({_named(list(self.object_ids))}, "
            f"shape => '{self.shape}'): {traces}{matching}"
        )


@dataclass(frozen=True)
class ReportQuery:
    """A user's SQL report, paged (when the server gives a cursor) by `OFFSET '<cursor>'`.

    Attributes:
        sql: the query as the user wrote it, without a trailing semicolon.
        tz_offset: minutes west of UTC for day boundaries, or None.
    """

    sql: str
    tz_offset: int | None = None

    def body(self, cursor: str | None, limit: int = MAX_PAGE_SIZE) -> dict[str, Any]:  # noqa: ARG002 - the SQL sets its own LIMIT
        """The `/btql` request body for the page after `cursor` (None: the first page)."""
        text = self.sql if cursor is None else f"{self.sql} OFFSET {sql_string(cursor)}"
        options = {} if self.tz_offset is None else {"tz_offset": self.tz_offset}
        return _request(text, **options)

    def describe(self) -> str:
        """The report's SQL on one line, for logs and error messages."""
        return f"the SQL {' '.join(self.sql.split())!r}"


def sql_string(value: str) -> str:
    """A single-quoted SQL string literal, its quotes and backslashes escaped."""
    escaped = value.replace("\\", "\\\\").replace("'", "\\'")
    return f"'{escaped}'"
