"""The `/btql` constructs Braintrust is proven to accept, each with its evidence, in one place.

A strict emulator (the default) answers 400, as Braintrust does to syntax it does not know,
to any request that uses a construct not listed in `EVIDENCED`. The evidence is
`shared/query-evidence.md` (row numbers `#n`, `Rn`, source short names as there): recorded
real traffic (RECORDED), an official client that sends it (OFFICIAL-CLIENT), Braintrust's
docs or AST schema (DOCUMENTED). A construct the evidence contests is listed only where the
tap falls back when it is refused (CONTESTED+FALLBACK). Text the user wrote (a `{"btql": ...}`
filter, a report's SQL) is not checked; what the tap adds to it is.

To let the tap send something new, add it here with its citation.
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any, Literal

Evidence = Literal["RECORDED", "OFFICIAL-CLIENT", "DOCUMENTED", "CONTESTED+FALLBACK"]


@dataclass(frozen=True)
class Construct:
    """One evidenced construct: its class and where the evidence is."""

    evidence: Evidence
    citation: str


EVIDENCED: dict[str, Construct] = {
    # The request envelope.
    "body query": Construct("RECORDED", "#1, #2: py-cassette, rb-cassettes, java-cassettes"),
    "body fmt json": Construct("OFFICIAL-CLIENT", "#3: bt src/http.rs btql_with_query"),
    "body brainstore_realtime": Construct("RECORDED", "#4: py-cassette"),
    "body use_columnstore": Construct("RECORDED", "#4: py-cassette (sent with false)"),
    "body tz_offset": Construct("DOCUMENTED", "#5: sql-ref-2026 parameter list"),
    "body version": Construct("OFFICIAL-CLIENT", "R1: py-sdk ObjectFetcher._refetch"),
    "version on one object": Construct(
        "OFFICIAL-CLIENT",
        "R1: py-sdk ObjectFetcher._refetch, js-sdk fetchRecordsFromApi, rb-sdk datasets.rb "
        "(one object each); sql-ref-2026 (experiment and dataset); KB "
        "recovering-deleted-experiment-rows. R2 (several ids) has no evidence: refused",
    ),
    "body api_version": Construct(
        "OFFICIAL-CLIENT", "braintrust SDK 0.47.0 sends it (tests/test_sdk_fidelity.py)"
    ),
    "body query_source": Construct("OFFICIAL-CLIENT", "migrate EventsStreamState.query_source"),
    # Query text.
    "SQL text": Construct("RECORDED", "#2: java-cassettes; #27 the user's SQL, sent as written"),
    "OFFSET cursor on a line of its own": Construct(
        "DOCUMENTED", "#28: sql-ref-2026 (string-literal cursor); bt README.md `bt sql`"
    ),
    # Not checked (SQL text is taken as written): the evidence of the tap's own count query.
    "SQL count grouped by the object id": Construct(
        "DOCUMENTED",
        "R3: KB aggregate-scores (`FROM experiment('id1','id2','id3') ... GROUP BY "
        "experiment_id`); btql-ref-2025; an aggregate without GROUP BY is RECORDED "
        "(java-cassettes btql-16c41b2ba2cc)",
    ),
    # AST keys.
    "AST select": Construct("RECORDED", "#9, #10: py-cassette, rb-cassettes"),
    "AST from": Construct("RECORDED", "#12: py-cassette, rb-cassettes"),
    "AST filter": Construct("RECORDED", "rb-cassettes datasets/*.yml; py-btx _fetch_once"),
    "AST sort": Construct("OFFICIAL-CLIENT", "#24: bt src/sync.rs build_root_spans_query"),
    "AST limit 1..1000": Construct("RECORDED", "#8: rb-cassettes (1, 2, 1000), py-cassette"),
    "AST cursor null": Construct("RECORDED", "#6: py-cassette"),
    "AST without a sort": Construct("RECORDED", "#1: py-cassette, rb-cassettes (no sort)"),
    "AST cursor without a sort": Construct(
        "RECORDED",
        "#7: py-cassette page 2, rb-cassettes datasets/fetch_pagination.yml; "
        "btql-ref-2025 (cursors only without a sort)",
    ),
    "AST preview_length positive": Construct(
        "OFFICIAL-CLIENT", "#15: bt src/traces.rs build_summary_query (125)"
    ),
    "AST preview_length -1 on summary": Construct(
        "CONTESTED+FALLBACK",
        "#15: bt sends -1 for dataset rows, no client on summary; the tap falls back to a "
        "positive length on a 400",
    ),
    # select and from.
    "select star": Construct("RECORDED", "#9: py-cassette, rb-cassettes"),
    "select ident with alias": Construct(
        "OFFICIAL-CLIENT", "#10, #11: bt dataset_rows_select_fields; ast-schema aliasExpr"
    ),
    "source with one id": Construct("RECORDED", "#12: py-cassette, rb-cassettes, py-btx"),
    "source with 2..1000 ids": Construct(
        "DOCUMENTED",
        "#13: sql-ref-2026 FROM list, KB aggregate-scores; migrate sends up to 1000 "
        "(config.py events_fetch_group_size)",
    ),
    "shape spans": Construct("OFFICIAL-CLIENT", "#14: bt src/sync/discovery.rs"),
    "shape summary": Construct("DOCUMENTED", "#14: ast-schema; bt src/traces.rs (text)"),
    "shape traces": Construct("DOCUMENTED", "#14, #25: ast-schema; sql-ref-2026"),
    # Filters.
    "comparison of a field with a string": Construct(
        "OFFICIAL-CLIENT", "#16, #17, #18: py-sdk trace.py, bt build_dataset_rows_query"
    ),
    "_pagination_key > string (keyset)": Construct(
        "OFFICIAL-CLIENT",
        "migrate streaming_utils.py build_btql_sorted_page_query; contract 3.6",
    ),
    "in on root_span_id with an array literal of 1..100 strings": Construct(
        "OFFICIAL-CLIENT",
        "#20: bt pipeline.rs root_span_id_filter, ROOT_FETCH_CHUNK_SIZE 100; py-sdk trace.py",
    ),
    "in on id with an array literal of 1..100 strings": Construct(
        "OFFICIAL-CLIENT",
        "#16, #20: the `in` node with an array literal bt root_span_id_filter and py-sdk/js-sdk "
        "SpanFetcher send (there on root_span_id; no client is seen sending it on `id`); "
        "ast-schema comparisonExprSchema takes any field",
    ),
    "and/or with children": Construct(
        "OFFICIAL-CLIENT", "#19: py-sdk trace.py, js-sdk trace.ts, bt pipeline.rs"
    ),
    "and/or with left and right": Construct(
        "OFFICIAL-CLIENT", "#19: py-btx _fetch_once, spec-guide step 4"
    ),
    "btql text as the whole filter": Construct("OFFICIAL-CLIENT", "R0: bt discovery_window_filter"),
    "btql text as a child of and": Construct(
        "OFFICIAL-CLIENT", "#22: bt pipeline.rs discovery_filter (children form)"
    ),
    # Sorts.
    "sort on _xact_id": Construct("OFFICIAL-CLIENT", "#23: bt (`_xact_id desc`, limit 1)"),
    "sort on _pagination_key": Construct(
        "OFFICIAL-CLIENT", "#24: bt build_root_spans_query; migrate (no cursor)"
    ),
    "sort on _xact_id then _pagination_key": Construct(
        "DOCUMENTED", "query-evidence.md risk 1(b): multi-key sorts are documented"
    ),
}
"""Every construct a strict emulator takes, with its evidence."""

_OBJECT_ID_COLUMNS = frozenset({"project_id", "experiment_id", "dataset_id"})
_COMPARISONS = frozenset({"eq", "ne", "gt", "ge", "lt", "le"})
_XACT_ID = re.compile(r"[0-9]{19}")
_TRAILING_OFFSET = re.compile(r"(\n?)[ \t]*OFFSET\s+'(?:[^'\\]|\\.)*'\s*$", re.IGNORECASE)
_MAX_IDS = 1000
_MAX_LIST = 100


class NotEvidenced(ValueError):  # noqa: N818 - reads as what it says
    """A request uses a construct outside `EVIDENCED`."""


def check(body: Mapping[str, Any]) -> None:
    """Refuse a `/btql` body with any construct not in `EVIDENCED`, naming it."""
    for construct in constructs(body):
        _check(construct)


def check_version(object_ids: int) -> None:
    """Refuse a pinned `version` over several objects (R2); for SQL text, once parsed."""
    _check(_version(object_ids))


def _check(construct: str) -> None:
    if construct not in EVIDENCED:
        msg = (
            f"{construct}: not in the evidenced dialect (tests/emulator/dialect.py, "
            "query-evidence.md)"
        )
        raise NotEvidenced(msg)


def _version(object_ids: int) -> str:
    return "version on one object" if object_ids == 1 else f"version on {object_ids} objects"


def constructs(body: Mapping[str, Any]) -> Iterator[str]:
    """The name of each construct a `/btql` body uses, the user's own text aside."""
    for key, value in body.items():
        if key == "fmt":
            yield f"body fmt {value}"
        else:
            yield f"body {key}"
    query = body.get("query")
    if isinstance(query, str):
        yield "SQL text"
        offset = _TRAILING_OFFSET.search(query)
        if offset:
            yield "OFFSET cursor on a line of its own" if offset.group(1) else "OFFSET inline"
    elif isinstance(query, Mapping):
        yield from _ast(query)
        source = query.get("from")
        if body.get("version") is not None and isinstance(source, Mapping):
            yield _version(len(source.get("args") or []))


def _ast(query: Mapping[str, Any]) -> Iterator[str]:
    sort = query.get("sort") or []
    for key, value in query.items():
        if key == "limit":
            ok = isinstance(value, int) and not isinstance(value, bool) and 1 <= value <= 1000
            yield "AST limit 1..1000" if ok else f"AST limit {value!r}"
        elif key == "cursor":
            if value is None:
                yield "AST cursor null"
            else:
                yield "AST cursor with a sort" if sort else "AST cursor without a sort"
        elif key == "preview_length":
            yield _preview(value, query.get("from"))
        else:
            yield f"AST {key}"
    yield from _select(query.get("select"))
    yield from _from(query.get("from"))
    if "filter" in query:
        yield from _filter(query["filter"], parent=None)
    yield _sort(sort)


def _preview(value: Any, source: Any) -> str:
    if isinstance(value, int) and value > 0:
        return "AST preview_length positive"
    summary = isinstance(source, Mapping) and source.get("shape") == "summary"
    return f"AST preview_length {value!r}{' on summary' if summary else ''}"


def _select(items: Any) -> Iterator[str]:
    for item in items or []:
        if isinstance(item, Mapping) and item.get("op") == "star":
            yield "select star"
        elif isinstance(item, Mapping) and _is_ident(item.get("expr")) and "alias" in item:
            yield "select ident with alias"
        else:
            yield "select of a computed value"


def _from(node: Any) -> Iterator[str]:
    if not isinstance(node, Mapping):
        return
    ids = len(node.get("args") or [])
    yield (
        "source with one id"
        if ids == 1
        else "source with 2..1000 ids"
        if 1 < ids <= _MAX_IDS
        else f"source with {ids} ids"
    )
    if "shape" in node:
        yield f"shape {node['shape']}"


def _sort(sort: list[Any]) -> str:
    fields = [
        ".".join(item["expr"]["name"])
        if isinstance(item, Mapping) and _is_ident(item.get("expr"))
        else "?"
        for item in sort
    ]
    if not fields:
        return "AST without a sort"
    return f"sort on {' then '.join(fields)}"


def _is_ident(node: Any) -> bool:
    return isinstance(node, Mapping) and node.get("op") == "ident"


def _filter(node: Any, parent: str | None) -> Iterator[str]:
    """Each node of a filter, named by what it is and where it sits."""
    if not isinstance(node, Mapping):
        yield "filter that is not an object"
        return
    if "btql" in node:
        yield {
            None: "btql text as the whole filter",
            "and children": "btql text as a child of and",
        }.get(parent, f"btql text under {parent}")
        return
    op = node.get("op")
    if op in {"and", "or"}:
        if op == "or" and parent in {"or", "or children"}:
            yield "or nested in or (a tree of ors)"
        form = "children" if "children" in node else "left/right"
        yield f"and/or with {'children' if form == 'children' else 'left and right'}"
        operands = (
            node.get("children") or []
            if form == "children"
            else [
                node.get("left"),
                node.get("right"),
            ]
        )
        for operand in operands:
            yield from _filter(operand, f"{op} children" if form == "children" else op)
        return
    if op in _COMPARISONS:
        yield _comparison(op, node)
        return
    if op == "in":
        yield _in(node)
        return
    yield f"filter op {op!r}"


def _comparison(op: str, node: Mapping[str, Any]) -> str:
    left, right = node.get("left"), node.get("right")
    if not _is_ident(left) or not isinstance(right, Mapping) or right.get("op") != "literal":
        return f"{op} of something other than a field and a literal"
    field = ".".join(left["name"])  # type: ignore[index]  # an ident, checked above
    value = right.get("value")
    if field in _OBJECT_ID_COLUMNS:
        return f"comparison on the object id column {field}"
    if not isinstance(value, str):
        return f"comparison of {field} with a non-string literal"
    if field == "_xact_id" and not _XACT_ID.fullmatch(value):
        return f"_xact_id compared with {value!r}, not an _xact_id"
    if field == "_pagination_key" and op == "gt":
        return "_pagination_key > string (keyset)"
    return "comparison of a field with a string"


def _in(node: Mapping[str, Any]) -> str:
    left, right = node.get("left"), node.get("right")
    values = right.get("value") if isinstance(right, Mapping) else None
    if not _is_ident(left) or not isinstance(values, list):
        return "in without a field and an array literal"
    if ".".join(left["name"]) in _OBJECT_ID_COLUMNS:  # type: ignore[index]  # an ident
        return "in on an object id column"
    if not all(isinstance(value, str) for value in values):
        return "in with non-string values"
    if not 1 <= len(values) <= _MAX_LIST:
        return f"in with an array literal of {len(values)} values"
    return f"in on {'.'.join(left['name'])} with an array literal of 1..100 strings"  # type: ignore[index]
