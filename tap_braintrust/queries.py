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
    """

    source: RowSource
    objects: tuple[ObjectBound, ...]

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
        if not 1 <= limit <= MAX_PAGE_SIZE:
            msg = f"limit must be 1 to {MAX_PAGE_SIZE}, got {limit}"
            raise ValueError(msg)
        query: dict[str, Any] = {
            "select": [{"op": "star"}],
            "from": {
                "op": "function",
                "name": _ident(self.source),
                "args": [_literal(bound.object_id) for bound in self.objects],
            },
            "filter": self._filter(),
            "sort": [{"expr": _ident("_xact_id"), "dir": "asc"}],
            "limit": limit,
            "cursor": cursor,
        }
        # `brainstore_realtime` includes rows not yet compacted, as the SDKs do.
        return {"query": query, "fmt": "json", "brainstore_realtime": True}

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
        ids = [bound.object_id for bound in self.objects]
        named = ", ".join(json.dumps(i, ensure_ascii=False) for i in ids[:_IDS_DESCRIBED])
        if len(ids) > _IDS_DESCRIBED:
            named += f", and {len(ids) - _IDS_DESCRIBED} more"
        starts = self._starts()
        if len(starts) == 1:
            where = _describe_bounds(*next(iter(starts)))
        else:
            where = " OR ".join(
                f"({len(ids)} {'object' if len(ids) == 1 else 'objects'}: "
                f"{_describe_bounds(after, since)})"
                for (after, since), ids in starts.items()
            )
        return f"{self.source}({named}) WHERE {where} ORDER BY _xact_id ASC"


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
