"""The BTQL queries the tap sends to `POST /btql`, built as JSON ASTs in Braintrust's own dialect.

The AST is what Braintrust's own SDKs send: ids and timestamps travel as JSON literals, so no
value from config or from the API is ever pasted into query text, and no quoting rule can be
got wrong. Values are still checked, so a bad one fails here with a clear message rather than
as a 400 from the server.

Every node is one that Braintrust's own clients send or its docs show (the README's "What the
tap sends Braintrust" names the evidence for each): `and`/`or` with `children`, comparisons of
a field with a string literal, `in` with an array literal of at most `MAX_IDS_PER_LIST` ids, the
user's filter as a `{"btql": ...}` child. No read sorts and follows the server cursor at once:
sorted reads page by keyset (the last row's keys), and only unsorted reads use the cursor.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal, Protocol, TypeVar

from tap_braintrust.errors import BraintrustError
from tap_braintrust.incremental import MAX_XACT_ID, parse_xact_id, xact_at
from tap_braintrust.timestamps import normalize_timestamp

if TYPE_CHECKING:
    from collections.abc import Mapping, Sequence

RowSource = Literal["project_logs", "experiment", "dataset"]
"""A BTQL row source: the function in `FROM`, taking one or several object ids."""

FieldPath = tuple[str, ...]
"""A field path such as ("metadata", "user_id"), returned as a column named by its last part."""

MAX_PAGE_SIZE = 1000
"""The service's cap on `limit`."""

MAX_IDS_PER_LIST = 100
"""Most ids in one `in` list: what the `bt` CLI sends (`ROOT_FETCH_CHUNK_SIZE`)."""

FULL_PREVIEWS = -1
"""`preview_length` for whole summary values, as the `bt` CLI asks for dataset rows."""

FALLBACK_PREVIEW_LENGTH = 1_000_000
"""`preview_length` when a server refuses `FULL_PREVIEWS`: longer values are cut to this."""

OBJECT_ID_FIELD: dict[RowSource, str] = {
    "project_logs": "project_id",
    "experiment": "experiment_id",
    "dataset": "dataset_id",
}
"""The row field that names the object a row belongs to, for each source."""

_IDS_DESCRIBED = 3
"""Ids named in a query's description before the rest are counted."""

Node = dict[str, Any]
After = TypeVar("After")
"""Where a read's next page starts: a position of keyset paging, or the server's cursor."""


def _ident(*path: str) -> Node:
    return {"op": "ident", "name": list(path)}


def _literal(value: str | list[str]) -> Node:
    return {"op": "literal", "value": value}


def _compare(op: str, field: str, value: str) -> Node:
    return {"op": op, "left": _ident(field), "right": _literal(value)}


def _all(*nodes: Node | None) -> Node | None:
    """The conjunction of the nodes given (None ones left out), as `bt` sends it."""
    present = [node for node in nodes if node is not None]
    if len(present) <= 1:
        return present[0] if present else None
    return {"op": "and", "children": present}


def _in(field: str, values: Sequence[str]) -> Node:
    """`field IN [values]`: one node with an array literal, as `bt` and the SDKs send it."""
    if not 1 <= len(values) <= MAX_IDS_PER_LIST:
        msg = f"an id list holds 1 to {MAX_IDS_PER_LIST} ids, got {len(values)}"
        raise ValueError(msg)
    return {"op": "in", "left": _ident(field), "right": _literal(list(values))}


def _user_filter(text: str | None) -> Node | None:
    """A filter as the user wrote it, in BTQL text: one child, so `a OR b` stays whole."""
    return None if text is None else {"btql": text}


def _select(columns: tuple[FieldPath, ...] | None) -> list[Node]:
    """Star, or each path under its last part's name (Braintrust's implicit alias)."""
    if columns is None:
        return [{"op": "star"}]
    return [{"expr": _ident(*path), "alias": path[-1]} for path in columns]


def _sort(*fields: str) -> list[Node]:
    return [{"expr": _ident(field), "dir": "asc"} for field in fields]


def _describe_select(columns: tuple[FieldPath, ...] | None) -> str:
    if columns is None:
        return ""
    return f"SELECT {', '.join('.'.join(path) for path in columns)} FROM "  # noqa: S608 - words


def _source(source: RowSource, object_ids: Sequence[str], shape: str | None = None) -> Node:
    node: Node = {
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


def _request(query: Node | str, **options: Any) -> dict[str, Any]:
    # `brainstore_realtime` includes rows not yet compacted, as the SDKs do.
    return {"query": query, "fmt": "json", "brainstore_realtime": True, **options}


def _pinned(version: int | None) -> dict[str, str]:
    """The body's `version`: a top-level `_xact_id` string, as the SDKs send it (R1)."""
    return {} if version is None else {"version": str(version)}


def key_bound(xact_id: int) -> str:
    """The highest `_pagination_key` a row first written up to `xact_id` can have.

    A key is `(unix_seconds << 32) | (xact_counter << 16) | row_num` of the row's first
    write (contract section 8), so keys follow first writes' `_xact_id` order.
    """
    return f"p{((xact_id & 0xFFFFFFFFFFFF) << 16) | 0xFFFF:020d}"


def _ast(
    source: Node, columns: tuple[FieldPath, ...] | None, condition: Node | None, limit: int
) -> Node:
    """An AST without sort or cursor; a filter only when there is a condition."""
    query: Node = {"select": _select(columns), "from": source}
    if condition is not None:
        query["filter"] = condition
    query["limit"] = _checked_limit(limit)
    return query


def _named(ids: Sequence[str]) -> str:
    """Object ids for a description: the first few, then how many more."""
    named = ", ".join(json.dumps(i, ensure_ascii=False) for i in ids[:_IDS_DESCRIBED])
    if len(ids) > _IDS_DESCRIBED:
        named += f", and {len(ids) - _IDS_DESCRIBED} more"
    return named


def _distinct_ids(ids: Sequence[str], what: str) -> None:
    if not ids or len(set(ids)) != len(ids):
        msg = f"a query needs distinct {what}, got {list(ids)!r}"
        raise ValueError(msg)


def _check_traces(object_ids: Sequence[str], root_span_ids: Sequence[str] | None) -> None:
    _distinct_ids(object_ids, "object ids")
    if root_span_ids is not None:
        _in("root_span_id", root_span_ids)  # checks the count


def _describe_traces(root_span_ids: Sequence[str] | None) -> str:
    if root_span_ids is None:
        return "every trace"
    return f"{len(root_span_ids)} traces written since the last run"


def pagination_key_of(row: Mapping[str, Any]) -> str:
    """A row's `_pagination_key`, which keyset paging continues from."""
    key = row.get("_pagination_key")
    if not isinstance(key, str) or not key:
        msg = (
            f"Braintrust sent row {row.get('id')!r} without a `_pagination_key` "
            f"({key!r}), which paging needs; is `api_url` a Braintrust data plane?"
        )
        raise BraintrustError(msg)
    return key


def row_keys(row: Mapping[str, Any]) -> tuple[int, str]:
    """A row's place in a change read: its `_xact_id` and `_pagination_key`."""
    xact_id = parse_xact_id(row.get("_xact_id"))
    if xact_id is None:
        msg = (
            f"Braintrust sent row {row.get('id')!r} without a valid _xact_id "
            f"({row.get('_xact_id')!r}), which change tracking needs"
        )
        raise BraintrustError(msg)
    return xact_id, pagination_key_of(row)


class Page(Protocol):
    """What a page of an answer tells the next request: its rows and its cursor."""

    @property
    def rows(self) -> list[dict[str, Any]]:
        """The page's rows."""
        ...

    @property
    def cursor(self) -> str | None:
        """The server's cursor, None at the end."""
        ...

    @property
    def last_processed_xact_id(self) -> int | None:
        """The server's freshness: every write up to it is visible (None: not reported)."""
        ...


class PagedQuery(Protocol[After]):
    """A `/btql` query read page by page, each page starting where the last one ended."""

    @property
    def kind(self) -> str:
        """What it reads, in words, for the log."""
        ...

    @property
    def paging(self) -> str:
        """How it pages, in words, for the log."""
        ...

    def body(self, after: After | None, limit: int) -> dict[str, Any]:
        """The request body for the page after `after` (None: the first page)."""
        ...

    def next_after(self, after: After | None, page: Page) -> After | None:
        """Where the page after `page` starts; None when `page` is the last."""
        ...

    def describe(self) -> str:
        """The query in words, for logs and error messages."""
        ...


@dataclass(frozen=True)
class ChangePosition:
    """The last row a sorted change read has passed, and the transaction the read ends at.

    `_pagination_key` is unique per row and survives merges (contract section 4), also
    across the objects of one multi-id source (braintrust-migrate pages such sources on it
    alone), so (`_xact_id`, `_pagination_key`) orders every row of a read with no ties.

    Attributes:
        xact_id: the last row's `_xact_id`.
        pagination_key: the last row's `_pagination_key`.
        through: the highest `_xact_id` the read goes to, fixed after its first page, so a
            read of an object written all the while still ends (see `RowsQuery.end`).
    """

    xact_id: int
    pagination_key: str
    through: int

    def __str__(self) -> str:
        """The pair, for logs and the repeat guard."""
        return f"({self.xact_id}, {self.pagination_key})"

    def rows_after(self) -> Node:
        """`_xact_id >= X AND _xact_id <= T AND (_xact_id > X OR _pagination_key > P)`.

        The rows after (X, P) in (`_xact_id`, `_pagination_key`) order, up to T, with plain
        ranges on `_xact_id` for the server's segment elimination.
        """
        xact_id = str(self.xact_id)
        return {
            "op": "and",
            "children": [
                _compare("ge", "_xact_id", xact_id),
                _compare("le", "_xact_id", str(self.through)),
                {
                    "op": "or",
                    "children": [
                        _compare("gt", "_xact_id", xact_id),
                        _compare("gt", "_pagination_key", self.pagination_key),
                    ],
                },
            ],
        }


@dataclass(frozen=True)
class ObjectBound:
    """Which rows of one object a query reads: those written after a transaction.

    Attributes:
        object_id: the project, experiment or dataset id.
        after_xact_id: only rows whose latest write is above this `_xact_id` (0: all, with
            no range: a first read scans all history anyway).
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
        """Where the object's read starts; only objects that share it share a query."""
        return self.after_xact_id, self.created_since or ""


@dataclass(frozen=True)
class RowsQuery:
    """The rows of objects of one kind that start alike, oldest write first, paged by keyset.

    Sorting by `_xact_id` makes progress a watermark: once a row is read, every row of every
    object with a smaller `_xact_id` has been read before it. `_pagination_key` orders the
    rows of one transaction, so each page continues after the last row of the one before
    without the server cursor, which sorted reads cannot count on (the 2025 BTQL reference
    allows a cursor only without a sort). A filter on the object id column is unproven, so
    objects from different starts go in different queries.

    Attributes:
        source: which kind of object's rows.
        objects: the objects, all with the same start.
        user_filter: a BTQL expression the rows must also match (a custom stream's), sent
            as written.
        columns: the fields to return (None: all).
    """

    source: RowSource
    objects: tuple[ObjectBound, ...]
    user_filter: str | None = None
    columns: tuple[FieldPath, ...] | None = None
    ends_by: int = field(default_factory=lambda: xact_at(time.time() - 1), compare=False)
    """The last second before the read began, by this clock: it ends no earlier."""
    kind = "reads of rows written since the watermark"
    paging = "keyset on (_xact_id, _pagination_key), sorted, no server cursor"

    def __post_init__(self) -> None:
        """Refuse values that cannot make a meaningful query."""
        if self.source not in OBJECT_ID_FIELD:
            msg = f"unknown row source {self.source!r}"
            raise ValueError(msg)
        _distinct_ids([bound.object_id for bound in self.objects], "object ids")
        if len({bound.start for bound in self.objects}) != 1:
            msg = "the objects of one query must start from the same place"
            raise ValueError(msg)

    @property
    def start(self) -> tuple[int, str]:
        """Where every object of the query starts."""
        return self.objects[0].start

    def body(self, after: ChangePosition | None, limit: int = MAX_PAGE_SIZE) -> dict[str, Any]:
        """The `/btql` request body for the page after `after` (None: the first page)."""
        after_xact_id, created_since = self.start
        condition = _all(
            # `_xact_id > 0` would filter nothing: a first read goes without it.
            _compare("gt", "_xact_id", str(after_xact_id)) if after_xact_id else None,
            _compare("ge", "created", created_since) if created_since else None,
            None if after is None else after.rows_after(),
            _user_filter(self.user_filter),
        )
        source = _source(self.source, [bound.object_id for bound in self.objects])
        query = _ast(source, self.columns, condition, limit)
        query["sort"] = _sort("_xact_id", "_pagination_key")
        return _request(query)

    def next_after(self, after: ChangePosition | None, page: Page) -> ChangePosition | None:
        """After the page's last row; None after an empty page, the end.

        The read goes up to the later of when it began (this clock) and what its first page
        says the server has made visible: writes after both wait for the next run.
        """
        if not page.rows:
            return None
        through = after.through if after else self.end(page.last_processed_xact_id)
        return ChangePosition(*row_keys(page.rows[-1]), through)

    def end(self, visible_xact_id: int | None) -> int:
        """The last `_xact_id` the read goes to, given what the server says is visible."""
        return max(visible_xact_id or 0, self.ends_by)

    def describe(self) -> str:
        """The query in SQL-like words, for logs and error messages.

        The page size is left out: it is how the rows are fetched, not which rows, and it
        changes during a read when the server fails big pages.
        """
        after_xact_id, created_since = self.start
        where = [f"_xact_id > {after_xact_id}"] if after_xact_id else []
        if created_since:
            where.append(f"created >= {json.dumps(created_since)}")
        if self.user_filter is not None:
            where.append(f"({self.user_filter})")
        return (
            f"{_describe_select(self.columns)}{self.source}"
            f"({_named([bound.object_id for bound in self.objects])})"
            f"{' WHERE ' + ' AND '.join(where) if where else ''} "
            "ORDER BY _xact_id, _pagination_key"
        )


@dataclass(frozen=True)
class TraceSpansQuery:
    """Every span of some traces (or of all), paged by keyset on `_pagination_key`.

    How the `bt` CLI fetches whole traces: the spans shape, the traces' root ids as one `in`
    list, sorted by `_pagination_key`. With `user_filter`, only the spans matching it:
    the way to find which traces have such a span.

    Attributes:
        source: which kind of object's rows.
        object_ids: the objects read.
        root_span_ids: the traces (at most `MAX_IDS_PER_LIST`); None: every trace.
        user_filter: a BTQL expression, sent as written.
        columns: the fields of each row to return (None: all).
        through: only spans written up to this `_xact_id` (None: all), so a read of traces
            written all the while still ends; later spans are above the watermarks, so the
            next run reads their traces again.
    """

    source: RowSource
    object_ids: tuple[str, ...]
    root_span_ids: tuple[str, ...] | None = None
    user_filter: str | None = None
    columns: tuple[FieldPath, ...] | None = None
    through: int | None = None
    kind = "reads of whole traces"
    paging = "keyset on _pagination_key, sorted, no server cursor"

    def __post_init__(self) -> None:
        """Refuse values that cannot make a meaningful query."""
        _check_traces(self.object_ids, self.root_span_ids)

    def body(self, after: str | None, limit: int = MAX_PAGE_SIZE) -> dict[str, Any]:
        """The `/btql` request body for the page after the `_pagination_key` `after`."""
        condition = _all(
            None if self.root_span_ids is None else _in("root_span_id", self.root_span_ids),
            None if self.through is None else _compare("le", "_xact_id", str(self.through)),
            None if after is None else _compare("gt", "_pagination_key", after),
            _user_filter(self.user_filter),
        )
        query = _ast(_source(self.source, self.object_ids), self.columns, condition, limit)
        query["sort"] = _sort("_pagination_key")
        return _request(query)

    def next_after(self, after: str | None, page: Page) -> str | None:  # noqa: ARG002
        """After the page's last row; None after an empty page, the end."""
        return pagination_key_of(page.rows[-1]) if page.rows else None

    def describe(self) -> str:
        """The query in words, for logs and error messages."""
        traces = _describe_traces(self.root_span_ids)
        matching = "" if self.user_filter is None else f", spans matching ({self.user_filter})"
        return (
            f"{_describe_select(self.columns)}{self.source}({_named(self.object_ids)}): "
            f"{traces}{matching}"
        )


@dataclass(frozen=True)
class SummaryQuery:
    """One summary row per trace that has a span matching `user_filter`.

    Unsorted, so the server cursor is the documented kind (the 2025 BTQL reference allows
    it only without a sort). With `by_remaining_roots` (and root ids) it needs no cursor:
    each page asks again for the traces not yet answered, until none are left or an answer
    is empty.

    Attributes:
        source: which kind of object's rows.
        object_ids: the objects read.
        root_span_ids: the traces (at most `MAX_IDS_PER_LIST`); None: every trace.
        user_filter: a BTQL expression, sent as written.
        preview_length: `FULL_PREVIEWS`, or the length values are cut to.
        by_remaining_roots: page without the cursor (needs `root_span_ids`).
    """

    source: RowSource
    object_ids: tuple[str, ...]
    root_span_ids: tuple[str, ...] | None = None
    user_filter: str | None = None
    preview_length: int = FULL_PREVIEWS
    by_remaining_roots: bool = False
    kind = "reads of trace summaries"

    def __post_init__(self) -> None:
        """Refuse values that cannot make a meaningful query."""
        _check_traces(self.object_ids, self.root_span_ids)
        if self.root_span_ids is None and self.by_remaining_roots:
            msg = "paging by remaining roots needs the root ids"
            raise ValueError(msg)

    @property
    def paging(self) -> str:
        """How it pages, in words."""
        if self.by_remaining_roots:
            return "the traces not yet answered, unsorted, no server cursor"
        return "the server cursor, unsorted"

    def body(
        self, after: str | frozenset[str] | None, limit: int = MAX_PAGE_SIZE
    ) -> dict[str, Any]:
        """The body for the page after `after`: a cursor, or the roots already answered."""
        roots = self.root_span_ids
        if self.by_remaining_roots and isinstance(after, frozenset):
            roots = tuple(root for root in roots or () if root not in after)
        condition = _all(
            None if roots is None else _in("root_span_id", roots),
            _user_filter(self.user_filter),
        )
        query = _ast(_source(self.source, self.object_ids, "summary"), None, condition, limit)
        if not self.by_remaining_roots:
            query["cursor"] = after
        query["preview_length"] = self.preview_length
        return _request(query)

    def next_after(
        self, after: str | frozenset[str] | None, page: Page
    ) -> str | frozenset[str] | None:
        """The cursor, or the roots answered so far (None once all are, or on an empty page)."""
        if not self.by_remaining_roots:
            return page.cursor
        if not page.rows:
            return None
        answered = set(after) if isinstance(after, frozenset) else set()
        new = {root_of(row) for row in page.rows} - answered
        if not new:
            msg = (
                f"Braintrust answered {self.describe()} with summaries of traces it had "
                "already sent; stopping instead of looping"
            )
            raise BraintrustError(msg)
        answered |= new
        if answered >= set(self.root_span_ids or ()):
            return None
        return frozenset(answered)

    def describe(self) -> str:
        """The query in words, for logs and error messages."""
        traces = _describe_traces(self.root_span_ids)
        matching = (
            "" if self.user_filter is None else f" that have a span matching ({self.user_filter})"
        )
        return f"{self.source}({_named(self.object_ids)}, shape => 'summary'): {traces}{matching}"


def root_of(row: Mapping[str, Any]) -> str:
    """The trace a span or summary row belongs to: its `root_span_id`, else its own `id`."""
    return str(row.get("root_span_id") or row.get("id"))


@dataclass(frozen=True)
class ReportQuery:
    """A user's SQL report, paged (when the server gives a cursor) by `OFFSET '<cursor>'`.

    Attributes:
        sql: the query as the user wrote it, without a trailing semicolon.
        tz_offset: minutes west of UTC for day boundaries, or None.
    """

    sql: str
    tz_offset: int | None = None
    kind = "reports"
    paging = "the server cursor as OFFSET, in the report's own order"

    def body(self, after: str | None, limit: int = MAX_PAGE_SIZE) -> dict[str, Any]:  # noqa: ARG002 - the SQL sets its own LIMIT
        """The `/btql` request body for the page after the cursor `after`.

        `OFFSET` goes on a line of its own, so a `-- comment` ending the SQL cannot hide it.
        """
        text = self.sql if after is None else f"{self.sql}\nOFFSET {sql_string(after)}"
        options = {} if self.tz_offset is None else {"tz_offset": self.tz_offset}
        return _request(text, **options)

    def next_after(self, after: str | None, page: Page) -> str | None:  # noqa: ARG002
        """The page's cursor; None at the end."""
        return page.cursor

    def describe(self) -> str:
        """The report's SQL on one line, for logs and error messages."""
        return f"the SQL {' '.join(self.sql.split())!r}"


def sql_string(value: str) -> str:
    """A single-quoted SQL string literal, its quotes and backslashes escaped."""
    escaped = value.replace("\\", "\\\\").replace("'", "\\'")
    return f"'{escaped}'"


@dataclass(frozen=True)
class KeyRange:
    """The rows of one object whose `_pagination_key` is in (`above`, `through`].

    Keys are given at a row's first write and kept, so a range holds the same rows at every
    version, less the deleted ones: comparing a range at two versions finds deletes.
    """

    above: str | None
    through: str

    def condition(self) -> list[Node]:
        """The range as AST comparisons."""
        lower = [] if self.above is None else [_compare("gt", "_pagination_key", self.above)]
        return [*lower, _compare("le", "_pagination_key", self.through)]

    def holds(self, key: str) -> bool:
        """Whether `key` is in the range."""
        return (self.above is None or key > self.above) and key <= self.through

    def sql(self) -> list[str]:
        """The range as SQL conditions."""
        lower = [] if self.above is None else [f"_pagination_key > {sql_string(self.above)}"]
        return [*lower, f"_pagination_key <= {sql_string(self.through)}"]

    def __str__(self) -> str:
        """The range in words."""
        return f"_pagination_key in ({self.above or 'start'}, {self.through}]"


@dataclass(frozen=True)
class CountQuery:
    """How many rows each object has in a key range, and their lowest and highest keys.

    `SELECT <id column>, count(1) ... GROUP BY 1` over a multi-id source is the documented
    form (R3); `max` of a key column beside `count(*)` is recorded (java-cassettes). With
    `version`, one object only: a pinned read names one object (R1, R2). The answer is one
    row per object with rows, so it needs no paging.
    """

    source: RowSource
    object_ids: tuple[str, ...]
    keys: KeyRange
    created_since: str | None = None
    version: int | None = None
    kind = "counts of rows per object (delete detection)"
    paging = "one answer, no paging"

    def __post_init__(self) -> None:
        """Refuse values that cannot make a meaningful query."""
        _distinct_ids(self.object_ids, "object ids")
        if self.version is not None and len(self.object_ids) != 1:
            msg = "a count at a version names one object"
            raise ValueError(msg)

    def body(self, after: None, limit: int = MAX_PAGE_SIZE) -> dict[str, Any]:  # noqa: ARG002
        """The SQL count; a top-level `version` when pinned."""
        column = OBJECT_ID_FIELD[self.source]
        where = self.keys.sql()
        if self.created_since is not None:
            where.append(f"created >= {sql_string(self.created_since)}")
        ids = ", ".join(sql_string(object_id) for object_id in self.object_ids)
        text = (
            f"SELECT {column} AS object_id, count(1) AS row_count, "  # noqa: S608 - quoted
            "min(_pagination_key) AS first_key, max(_pagination_key) AS last_key "
            f"FROM {self.source}({ids}) WHERE {' AND '.join(where)} GROUP BY 1"
        )
        return _request(text, **_pinned(self.version))

    def next_after(self, after: None, page: Page) -> None:  # noqa: ARG002
        """An aggregate is one answer."""
        return

    def describe(self) -> str:
        """The count in words."""
        at = "" if self.version is None else f" at version {self.version}"
        return f"count of {self.source}({_named(self.object_ids)}) rows, {self.keys}{at}"


@dataclass(frozen=True)
class KeyScanQuery:
    """Rows of one object in a key range (or with given ids), in key order, paged by keyset.

    With `version`, as they were at that `_xact_id`, deleted ones included (R1). With
    `expected`, the read ends once that many rows came, without asking for an empty page.
    """

    source: RowSource
    object_id: str
    keys: KeyRange
    ids: tuple[str, ...] | None = None
    columns: tuple[FieldPath, ...] | None = None
    created_since: str | None = None
    version: int | None = None
    expected: int | None = None
    kind = "reads of row ids and deleted rows' content (delete detection)"
    paging = "keyset on _pagination_key, sorted, no server cursor"

    def __post_init__(self) -> None:
        """Refuse values that cannot make a meaningful query."""
        if self.ids is not None:
            _in("id", self.ids)  # checks the count

    def body(self, after: tuple[str, int] | None, limit: int = MAX_PAGE_SIZE) -> dict[str, Any]:
        """The body for the page after (the `_pagination_key`, rows so far) `after`."""
        condition = _all(
            *self.keys.condition(),
            None if self.ids is None else _in("id", self.ids),
            _compare("ge", "created", self.created_since) if self.created_since else None,
            None if after is None else _compare("gt", "_pagination_key", after[0]),
        )
        query = _ast(_source(self.source, [self.object_id]), self.columns, condition, limit)
        query["sort"] = _sort("_pagination_key")
        return _request(query, **_pinned(self.version))

    def next_after(self, after: tuple[str, int] | None, page: Page) -> tuple[str, int] | None:
        """After the page's last row; None after an empty page or the expected rows."""
        if not page.rows:
            return None
        read = (after[1] if after else 0) + len(page.rows)
        if self.expected is not None and read >= self.expected:
            return None
        return pagination_key_of(page.rows[-1]), read

    def describe(self) -> str:
        """The read in words."""
        which = "" if self.ids is None else f"{len(self.ids)} ids, "
        at = "" if self.version is None else f" at version {self.version}"
        return (
            f"{_describe_select(self.columns)}{self.source}({_named([self.object_id])}): "
            f"{which}{self.keys}{at}"
        )
