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
"""A BTQL row source: the function in `FROM`, taking its object's id."""

MAX_PAGE_SIZE = 1000
"""The service's cap on `limit`."""


def _ident(*path: str) -> dict[str, Any]:
    return {"op": "ident", "name": list(path)}


def _literal(value: str) -> dict[str, Any]:
    return {"op": "literal", "value": value}


def _compare(op: str, field: str, value: str) -> dict[str, Any]:
    return {"op": op, "left": _ident(field), "right": _literal(value)}


@dataclass(frozen=True)
class RowsQuery:
    """Every row of one object written after a transaction, oldest write first.

    Sorting by `_xact_id` ascending is cursor-compatible, and it makes progress a watermark:
    once a row is read, every row with a smaller `_xact_id` has been read before it.

    Attributes:
        source: which kind of object's rows.
        object_id: the project, experiment or dataset id.
        after_xact_id: only rows whose latest write is above this `_xact_id` (0: all). Also
            the range filter project_logs queries need to avoid a full-history scan.
        created_since: only rows with `created` at or after this ISO-8601 time.
        limit: rows per page, 1 to 1000.
    """

    source: RowSource
    object_id: str
    after_xact_id: int = 0
    created_since: str | None = None
    limit: int = MAX_PAGE_SIZE

    def __post_init__(self) -> None:
        """Refuse values that cannot make a meaningful query."""
        if self.source not in ("project_logs", "experiment", "dataset"):
            msg = f"unknown row source {self.source!r}"
            raise ValueError(msg)
        if not isinstance(self.object_id, str) or not self.object_id.strip():
            msg = f"{self.source} needs a non-empty object id, got {self.object_id!r}"
            raise ValueError(msg)
        if not 0 <= self.after_xact_id <= MAX_XACT_ID:
            msg = f"_xact_id must be a 64-bit unsigned integer, got {self.after_xact_id}"
            raise ValueError(msg)
        if self.created_since is not None:
            # Normalising also rejects anything that is not an ISO-8601 time.
            object.__setattr__(self, "created_since", normalize_timestamp(self.created_since))
        if not 1 <= self.limit <= MAX_PAGE_SIZE:
            msg = f"limit must be 1 to {MAX_PAGE_SIZE}, got {self.limit}"
            raise ValueError(msg)

    def body(self, cursor: str | None = None) -> dict[str, Any]:
        """The `/btql` request body for the page after `cursor` (None: the first page)."""
        condition = _compare("gt", "_xact_id", str(self.after_xact_id))
        if self.created_since is not None:
            since = _compare("ge", "created", self.created_since)
            condition = {"op": "and", "left": condition, "right": since}
        query: dict[str, Any] = {
            "select": [{"op": "star"}],
            "from": {
                "op": "function",
                "name": _ident(self.source),
                "args": [_literal(self.object_id)],
            },
            "filter": condition,
            "sort": [{"expr": _ident("_xact_id"), "dir": "asc"}],
            "limit": self.limit,
            "cursor": cursor,
        }
        # `brainstore_realtime` includes rows not yet compacted, as the SDKs do.
        return {"query": query, "fmt": "json", "brainstore_realtime": True}

    def describe(self) -> str:
        """The query in SQL-like words, for logs and error messages.

        The page size is left out: it is how the rows are fetched, not which rows, and it
        changes during a read when the server fails big pages.
        """
        where = f"_xact_id > {self.after_xact_id}"
        if self.created_since is not None:
            where += f" AND created >= {json.dumps(self.created_since)}"
        return (
            f"{self.source}({json.dumps(self.object_id, ensure_ascii=False)}) WHERE {where}"
            " ORDER BY _xact_id ASC"
        )
