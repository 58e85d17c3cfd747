"""`custom_streams`: user-defined streams, read from the setting and checked before any request.

A row stream is a built-in row stream narrowed (a BTQL filter, chosen columns, a trace
shape); a report stream is a user's SQL, replaced whole every run. Every problem of every
definition is reported at once, each naming its stream, so a config is fixed in one go.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from difflib import get_close_matches
from typing import TYPE_CHECKING, Any, Literal, get_args

from tap_braintrust import schemas
from tap_braintrust.queries import OBJECT_ID_FIELD, FieldPath, RowSource

if TYPE_CHECKING:
    from collections.abc import Collection, Mapping

Shape = Literal["spans", "traces", "summary"]
SHAPES: tuple[Shape, ...] = get_args(Shape)
ROW_SOURCES: tuple[RowSource, ...] = get_args(RowSource)

KEPT_FIELDS = ("id", "_xact_id", "created")
"""Kept in every row stream's columns (with the object id), for keys and incremental state."""

_NAME = re.compile(r"[a-z][a-z0-9_]*")
_ROW_KEYS = frozenset({"name", "from", "object_ids", "filter", "select", "shape"})
_REPORT_KEYS = frozenset({"name", "sql", "primary_keys", "tz_offset"})
_MAX_TZ_OFFSET = 24 * 60


@dataclass(frozen=True)
class RowStreamSpec:
    """Rows of every object of one kind (or of `object_ids`), incremental like built-ins.

    Attributes:
        name: the stream name.
        source: which kind of object's rows.
        object_ids: only these objects (None: every object of the selected projects).
        row_filter: a BTQL expression, sent as written.
        columns: the selected field paths, kept fields included (None: every field).
        shape: spans, traces or summary.
    """

    name: str
    source: RowSource
    object_ids: frozenset[str] | None
    row_filter: str | None
    columns: tuple[FieldPath, ...] | None
    shape: Shape

    @property
    def primary_keys(self) -> tuple[str, str]:
        """A row is a span, or, for summaries, a trace."""
        row_key = "root_span_id" if self.shape == "summary" else "id"
        return OBJECT_ID_FIELD[self.source], row_key

    @property
    def schema(self) -> dict[str, Any]:
        """The records' schema, known without asking Braintrust."""
        if self.shape == "summary":
            return schemas.summary_schema(self.source)
        return schemas.columns_schema(self.source, self.columns)


@dataclass(frozen=True)
class ReportColumn:
    """A column of a report: its name and, for a plain field path, that path."""

    name: str
    path: FieldPath | None


@dataclass(frozen=True)
class ReportStreamSpec:
    """A SQL report: full table, its old rows replaced by each run's answer.

    Attributes:
        name: the stream name.
        sql: the query as written, without a trailing semicolon.
        primary_keys: the columns that identify a row, if any.
        tz_offset: minutes west of UTC for day boundaries (None: UTC).
        source: the row kind the SQL reads, when it is one of them.
        columns: the select list (None: `*`, every field of `source`).
        limit: the SQL's own top-level LIMIT, if any.
    """

    name: str
    sql: str
    primary_keys: tuple[str, ...]
    tz_offset: int | None
    source: RowSource | None
    columns: tuple[ReportColumn, ...] | None
    limit: int | None

    @property
    def schema(self) -> dict[str, Any]:
        """The records' schema, from the SQL's select list."""
        if self.columns is None:
            assert self.source is not None  # noqa: S101 - checked when read
            return schemas.columns_schema(self.source, None)
        return schemas.report_schema(
            self.source, [(column.name, column.path) for column in self.columns]
        )


CustomStreamSpec = RowStreamSpec | ReportStreamSpec


def read_custom_streams(
    value: Any, reserved_names: Collection[str]
) -> tuple[list[CustomStreamSpec], list[str]]:
    """The definitions in `custom_streams`, and every problem found in them.

    A definition with a problem is left out of the list; the problems say what to fix.
    """
    if value is None:
        return [], []
    if not isinstance(value, list):
        return [], ["custom_streams must be a list of stream definitions"]
    specs: list[CustomStreamSpec] = []
    problems: list[str] = []
    seen: set[str] = set()
    for index, item in enumerate(value):
        where = f"custom_streams[{index}]"
        if not isinstance(item, dict):
            problems.append(f"{where} must be an object with a `name`")
            continue
        name = item.get("name")
        if isinstance(name, str):
            where += f" ({name!r})"
        own = _name_problems(name, reserved_names, seen)
        spec, more = _read_definition(item, str(name))
        own += more
        problems += [f"{where}: {problem}" for problem in own]
        if spec is not None and not own:
            specs.append(spec)
    return specs, problems


def _name_problems(name: Any, reserved_names: Collection[str], seen: set[str]) -> list[str]:
    if name is None:
        return ["needs a `name`"]
    if not isinstance(name, str) or not _NAME.fullmatch(name):
        return [f"name {name!r} must be lower-case letters, digits and _, starting with a letter"]
    if name in reserved_names:
        return [f"name {name!r} is a built-in stream's; choose another"]
    if name in seen:
        return [f"name {name!r} is used by another custom stream"]
    seen.add(name)
    return []


def _read_definition(
    item: Mapping[str, Any], name: str
) -> tuple[CustomStreamSpec | None, list[str]]:
    has_from, has_sql = "from" in item, "sql" in item
    if has_from == has_sql:
        return None, [
            "needs either `from` (a row stream) or `sql` (a report stream), "
            + ("not both" if has_from else "and has neither")
        ]
    allowed = _ROW_KEYS if has_from else _REPORT_KEYS
    problems = [_unknown_key(key, allowed, has_from) for key in item if key not in allowed]
    reader = _row_stream if has_from else _report_stream
    spec, more = reader(item, name)
    return spec, problems + more


def _unknown_key(key: str, allowed: frozenset[str], row_stream: bool) -> str:  # noqa: FBT001
    kind = "a row stream (with `from`)" if row_stream else "a report stream (with `sql`)"
    problem = f"unknown key {key!r} for {kind}"
    if close := get_close_matches(key, allowed, n=1):
        problem += f" (did you mean {close[0]!r}?)"
    return problem


def _row_stream(item: Mapping[str, Any], name: str) -> tuple[RowStreamSpec | None, list[str]]:
    problems: list[str] = []
    source = item["from"]
    if source not in ROW_SOURCES:
        return None, [f"`from` must be one of {', '.join(ROW_SOURCES)}, not {source!r}"]
    shape = item.get("shape", "spans")
    if shape not in SHAPES:
        problems.append(f"`shape` must be one of {', '.join(SHAPES)}, not {shape!r}")
    object_ids = _strings(item, "object_ids", problems)
    row_filter = item.get("filter")
    if row_filter is not None and (not isinstance(row_filter, str) or not row_filter.strip()):
        problems.append("`filter` must be a non-empty BTQL expression (a string)")
    columns = None
    if "select" in item:
        if shape == "summary":
            problems.append("`select` does not apply to shape 'summary' (its fields are fixed)")
        columns = _columns(source, _strings(item, "select", problems), problems)
    if problems:
        return None, problems
    return RowStreamSpec(
        name,
        source,
        None if object_ids is None else frozenset(object_ids),
        row_filter,
        columns,
        shape,
    ), []


def _strings(item: Mapping[str, Any], key: str, problems: list[str]) -> list[str] | None:
    values = item.get(key)
    if values is None:
        return None
    if (
        not isinstance(values, list)
        or not values
        or not all(isinstance(v, str) and v.strip() for v in values)
    ):
        problems.append(f"`{key}` must be a non-empty list of non-empty strings")
        return None
    if len(set(values)) != len(values):
        problems.append(f"`{key}` lists a value more than once")
    return values


def _columns(
    source: RowSource, paths: list[str] | None, problems: list[str]
) -> tuple[FieldPath, ...] | None:
    """The selected paths after the kept fields; each column named by its last part."""
    if paths is None:
        return None
    fields = schemas.ROW_SCHEMAS[source]["properties"]
    kept: list[FieldPath] = [(OBJECT_ID_FIELD[source],), *((f,) for f in KEPT_FIELDS)]
    columns = {path[-1]: path for path in kept}
    for text in paths:
        path = tuple(text.split("."))
        if not all(path):
            problems.append(f"`select` path {text!r} has an empty part")
        elif path[0] not in fields:
            problems.append(
                f"`select` path {text!r}: {path[0]!r} is not a field of {source} rows "
                f"(they have {', '.join(fields)})"
            )
        elif columns.setdefault(path[-1], path) != path:
            problems.append(
                f"`select` paths {'.'.join(columns[path[-1]])!r} and {text!r} would both be "
                f"column {path[-1]!r}"
            )
    return tuple(columns.values())


def _report_stream(item: Mapping[str, Any], name: str) -> tuple[ReportStreamSpec | None, list[str]]:
    problems: list[str] = []
    sql = item["sql"]
    if not isinstance(sql, str) or not sql.strip():
        return None, ["`sql` must be a SQL query (a non-empty string)"]
    sql = sql.strip().rstrip(";").rstrip()
    parsed = parse_report_sql(sql, problems)
    tz_offset = item.get("tz_offset")
    if tz_offset is not None and (
        isinstance(tz_offset, bool)
        or not isinstance(tz_offset, int)
        or abs(tz_offset) > _MAX_TZ_OFFSET
    ):
        problems.append(
            "`tz_offset` must be whole minutes west of UTC (480 = US Pacific standard time), "
            f"-{_MAX_TZ_OFFSET} to {_MAX_TZ_OFFSET}"
        )
    primary_keys = _strings(item, "primary_keys", problems) or []
    if parsed is not None:
        source, columns, _ = parsed
        names = (
            [c.name for c in columns]
            if columns is not None
            else list(schemas.ROW_SCHEMAS[str(source)]["properties"])
        )
        problems += [
            f"primary key {key!r} is not a column of the SQL (it has {', '.join(names)})"
            for key in primary_keys
            if key not in names
        ]
    if problems or parsed is None:
        return None, problems
    source, columns, limit = parsed
    return ReportStreamSpec(name, sql, tuple(primary_keys), tz_offset, source, columns, limit), []


# --- the select list of a report's SQL -------------------------------------------------------

_TOKEN = re.compile(
    r"""\s+|'(?:[^'\\]|\\.|'')*'|"(?:[^"]|"")*"|[A-Za-z_][A-Za-z0-9_]*|\d+(?:\.\d+)?|.""",
    re.DOTALL,
)
_PLAIN_PATH = re.compile(r"[A-Za-z_][A-Za-z0-9_]*(?:\.[A-Za-z_][A-Za-z0-9_]*)*")
_ALIAS = re.compile(r"(?is)(.*\S)\s+as\s+([A-Za-z_][A-Za-z0-9_]*|\"(?:[^\"]|\"\")+\")")
_SOURCE = re.compile(r"(?i)(project_logs|experiment|dataset)\s*\(")


def _top_level(sql: str) -> list[tuple[str, int]]:
    """The SQL's tokens outside parentheses and quotes, with their offsets (lower-cased words)."""
    depth = 0
    tokens = []
    for match in _TOKEN.finditer(sql):
        text = match.group()
        if text == "(":
            depth += 1
        elif text == ")":
            depth -= 1
        elif depth == 0 and not text.isspace():
            tokens.append((text.lower(), match.start()))
    return tokens


def parse_report_sql(
    sql: str, problems: list[str]
) -> tuple[RowSource | None, tuple[ReportColumn, ...] | None, int | None] | None:
    """The row kind, select list and LIMIT of a report's SQL, read without a server.

    Only what the schema and paging need is read; Braintrust parses the query itself.
    """
    tokens = _top_level(sql)
    words = [text for text, _ in tokens]
    if not words or words[0] != "select" or "from" not in words:
        problems.append("`sql` must be a SQL query: SELECT ... FROM <source>(...) ...")
        return None
    if "offset" in words:
        problems.append("`sql` must not have OFFSET: the tap pages with the server's cursor itself")
    from_at = tokens[words.index("from")][1]
    found = _SOURCE.match(sql[from_at + len("from") :].lstrip())
    source: RowSource | None = found.group(1).lower() if found else None  # type: ignore[assignment]
    limit = None
    if "limit" in words:
        after = words[words.index("limit") + 1 : words.index("limit") + 2]
        limit = int(after[0]) if after and after[0].isdigit() else None
    items = _split_select(sql[tokens[0][1] + len("select") : from_at])
    if items == ["*"]:
        if source is None:
            problems.append(
                "`sql` selects * from a source the tap has no schema for; list its columns"
            )
            return None
        return source, None, limit
    columns: list[ReportColumn] = []
    for position, item in enumerate(items, 1):
        column = _report_column(item)
        if column is None:
            problems.append(
                f"`sql` column {position} ({' '.join(item.split())}) needs a name: add AS <name>"
            )
        elif column.name in {c.name for c in columns}:
            problems.append(f"`sql` has two columns named {column.name!r}")
        else:
            columns.append(column)
    return source, tuple(columns), limit


def _split_select(text: str) -> list[str]:
    """A select list's items, split at commas outside parentheses and quotes."""
    items, start, depth = [], 0, 0
    for match in _TOKEN.finditer(text):
        part = match.group()
        depth += {"(": 1, ")": -1}.get(part, 0)
        if part == "," and depth == 0:
            items.append(text[start : match.start()].strip())
            start = match.end()
    items.append(text[start:].strip())
    return items


def _report_column(item: str) -> ReportColumn | None:
    expression, name = item, None
    if (aliased := _ALIAS.fullmatch(item)) and _balanced_parentheses(aliased.group(1)):
        expression, name = aliased.group(1).strip(), aliased.group(2).strip('"')
    path = tuple(expression.split(".")) if _PLAIN_PATH.fullmatch(expression) else None
    if name is None and path is not None:
        name = path[-1]  # Braintrust's implicit alias: the path's last part
    return None if name is None else ReportColumn(name, path)


def _balanced_parentheses(text: str) -> bool:
    depth = 0
    for match in _TOKEN.finditer(text):
        depth += {"(": 1, ")": -1}.get(match.group(), 0)
    return depth == 0
