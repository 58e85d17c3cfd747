"""Parser and evaluator for the three query forms of Braintrust's ``POST /btql``.

The emulator must refuse what the real service refuses and answer the rest the way it does,
so parsing is strict (a tokenizer and a recursive-descent parser whose errors say where) and
evaluation follows SQL-like NULL semantics with Braintrust's timestamp and ``_xact_id`` rules.
"""

from __future__ import annotations

import json
import operator
import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, fields
from datetime import datetime, timedelta, timezone
from functools import lru_cache, partial
from typing import Any, NamedTuple, NoReturn, TypeAlias


class BTQLError(ValueError):
    """A query the service would refuse; ``str(exc)`` is the 400 response's ``Message``."""


Path: TypeAlias = tuple[str, ...]


@dataclass(frozen=True)
class Ident:
    """A field path such as ``("metadata", "model")``."""

    path: Path


@dataclass(frozen=True)
class Literal:
    """A constant from the query text or the JSON AST."""

    value: str | int | float | bool | None


@dataclass(frozen=True)
class Now:
    """``now()``: the emulator clock at evaluation time."""


@dataclass(frozen=True)
class Interval:
    """``interval N unit``, the unit normalised to its singular form."""

    amount: float
    unit: str


@dataclass(frozen=True)
class Arith:
    """``+`` or ``-`` between timestamps, intervals and numbers."""

    op: str
    left: Expr
    right: Expr


@dataclass(frozen=True)
class Compare:
    """A binary comparison named as in the JSON AST: eq ne gt ge lt le like ilike includes."""

    op: str
    left: Expr
    right: Expr


@dataclass(frozen=True)
class InList:
    """``expr [NOT] IN (values)``."""

    expr: Expr
    values: tuple[Expr, ...]
    negated: bool


@dataclass(frozen=True)
class IsNull:
    """``expr IS [NOT] NULL``."""

    expr: Expr
    negated: bool


@dataclass(frozen=True)
class And:
    """Three-valued AND."""

    left: Expr
    right: Expr


@dataclass(frozen=True)
class Or:
    """Three-valued OR."""

    left: Expr
    right: Expr


@dataclass(frozen=True)
class Not:
    """Three-valued NOT."""

    expr: Expr


@dataclass(frozen=True)
class Bucket:
    """``hour|day|week|month(expr)``: the start of the time bucket holding a timestamp.

    Boundaries move with the request's ``tz_offset``; the value is that start in UTC.
    """

    unit: str
    expr: Expr


@dataclass(frozen=True)
class Aggregate:
    """An aggregate call of a SQL select list; ``arg`` None is ``count(*)``.

    ``fraction`` is percentile's ``p``. Computed per group, never per row.
    """

    func: str
    arg: Expr | None
    fraction: float | None = None


_EXPR_TYPES = (
    Ident,
    Literal,
    Now,
    Interval,
    Arith,
    Compare,
    InList,
    IsNull,
    And,
    Or,
    Not,
    Bucket,
    Aggregate,
)
Expr: TypeAlias = (
    Ident
    | Literal
    | Now
    | Interval
    | Arith
    | Compare
    | InList
    | IsNull
    | And
    | Or
    | Not
    | Bucket
    | Aggregate
)


@dataclass(frozen=True)
class SortKey:
    """One ``ORDER BY`` / ``sort:`` key."""

    path: Path
    descending: bool


@dataclass(frozen=True)
class SelectItem:
    """One selected expression and the column name it is returned under."""

    expr: Expr
    alias: str


@dataclass(frozen=True)
class Query:
    """A parsed query, whichever of the three forms it came in.

    ``aggregate`` (SQL only) says the select list is computed per ``group_by`` group (one group
    without GROUP BY); its ``sort`` then names select aliases. ``preview_length`` (None: the
    default) only matters to the summary shape.
    """

    source: str
    object_ids: tuple[str, ...]
    shape: str
    select: tuple[SelectItem, ...] | None
    filter: Expr | None
    sort: tuple[SortKey, ...]
    limit: int | None
    cursor: str | None
    group_by: tuple[Expr, ...] = ()
    aggregate: bool = False
    preview_length: int | None = None


SOURCES = ("project_logs", "experiment", "dataset", "project_prompts", "project_functions")
SHAPES = ("spans", "traces", "summary")
BUCKETS = ("hour", "day", "week", "month")
AGGREGATES = ("count", "count_distinct", "sum", "avg", "min", "max", "any_value", "percentile")
_UNITS = {alias: u for u in ("second", "minute", "hour", "day", "week") for alias in (u, f"{u}s")}
_CMP_OPS = {"=": "eq", "!=": "ne", "<>": "ne", ">": "gt", ">=": "ge", "<": "lt", "<=": "le"}
_OPERATOR_WORDS = ("and", "or", "not", "in", "is", "null", "like", "ilike", "includes", "contains")
_CLAUSE_WORDS = ("select", "from", "where", "order", "by", "limit", "offset", "as", "asc", "desc")
_RESERVED = frozenset((*_OPERATOR_WORDS, *_CLAUSE_WORDS, "true", "false", "interval"))
# Words starting a SQL feature the service refuses: named in the error, not just "unexpected".
_SQL_UNSUPPORTED = {
    **dict.fromkeys(("join", "inner", "left", "right", "full", "cross", "natural", ","), "JOIN"),
    **dict.fromkeys(("union", "intersect", "except"), "UNION"),
    "having": "HAVING",
    "window": "window functions",
}
_UNSUPPORTED_CLAUSES = ("dimensions", "measures", "pivot", "unpivot")


def _fail(message: str) -> NoReturn:
    raise BTQLError(message)


# --- tokenizer ------------------------------------------------------------------------------


class _Tok(NamedTuple):
    kind: str  # word | qident | string | number | op | eof
    text: str
    value: Any
    pos: int
    newline_before: bool


_NUMBER = re.compile(r"\d+(?:\.\d+)?(?:[eE][+-]?\d+)?")
_WORD = re.compile(r"[A-Za-z_][A-Za-z0-9_$]*")
_OPS = ("=>", "!=", "<>", "<=", ">=", *"=<>(),.*+-|:;")
_ESCAPES = {"'": "'", '"': '"', "\\": "\\", "n": "\n", "t": "\t", "r": "\r", "%": "\\%", "_": "\\_"}


def _where(text: str, pos: int) -> str:
    """Say where ``pos`` is, with a line number when the query spans several lines."""
    column = pos - (text.rfind("\n", 0, pos) + 1) + 1
    if "\n" not in text:
        return f"column {column}"
    return f"line {text.count(chr(10), 0, pos) + 1}, column {column}"


def _read_quoted(text: str, start: int) -> tuple[str, int]:
    """Read the quoted string or identifier opening at ``start``; return its value and end."""
    quote, out, i = text[start], [], start + 1
    while i < len(text):
        char = text[i]
        if char == "\\" and i + 1 < len(text):
            if text[i + 1] not in _ESCAPES:
                _fail(f"unknown escape '\\{text[i + 1]}' in string at {_where(text, i)}")
            out.append(_ESCAPES[text[i + 1]])
            i += 2
        elif char == quote and text.startswith(quote * 2, i):  # SQL-style doubled quote
            out.append(quote)
            i += 2
        elif char == quote:
            return "".join(out), i + 1
        else:
            out.append(char)
            i += 1
    kind = "string" if quote == "'" else "quoted identifier"
    _fail(f"unterminated {kind} starting at {_where(text, start)}")


def _tokenize(text: str) -> list[_Tok]:
    toks: list[_Tok] = []
    i, newline = 0, False
    while i < len(text):
        char = text[i]
        if text.startswith("--", i):  # a comment runs to the end of the line
            end = text.find("\n", i)
            i = len(text) if end < 0 else end
            continue
        if char.isspace():
            newline, i = newline or char == "\n", i + 1
            continue
        if char in "'\"":
            value, end = _read_quoted(text, i)
            toks.append(_Tok("string" if char == "'" else "qident", text[i:end], value, i, newline))
        elif match := _NUMBER.match(text, i):
            end, raw = match.end(), match.group()
            if end < len(text) and (text[end].isalnum() or text[end] == "_"):
                _fail(f"malformed number at {_where(text, i)}")
            number = float(raw) if any(c in raw for c in ".eE") else int(raw)
            toks.append(_Tok("number", raw, number, i, newline))
        elif match := _WORD.match(text, i):
            end = match.end()
            toks.append(_Tok("word", match.group(), match.group(), i, newline))
        elif op := next((op for op in _OPS if text.startswith(op, i)), None):
            end = i + len(op)
            toks.append(_Tok("op", op, op, i, newline))
        else:
            _fail(f"unexpected character {char!r} at {_where(text, i)}")
        i, newline = end, False
    toks.append(_Tok("eof", "", None, len(text), newline))
    return toks


# --- text parser ----------------------------------------------------------------------------


class _Parser:
    """Recursive descent over one SQL or BTQL text; ``sql`` switches to the SQL dialect."""

    def __init__(self, text: str) -> None:
        self.text, self.toks, self.i, self.sql = text, _tokenize(text), 0, False
        self.aggregates_allowed = False  # only while reading a SQL select list, not nested

    def peek(self, ahead: int = 0) -> _Tok:
        return self.toks[min(self.i + ahead, len(self.toks) - 1)]

    def advance(self) -> _Tok:
        tok = self.peek()
        self.i = min(self.i + 1, len(self.toks) - 1)
        return tok

    def at(self, *texts: str, ahead: int = 0) -> bool:
        """Say whether the token is one of ``texts`` (words case-insensitively, or operators)."""
        tok = self.peek(ahead)
        key = tok.text.lower() if tok.kind == "word" else tok.text if tok.kind == "op" else None
        return key in texts

    def take(self, text: str) -> bool:
        found = self.at(text)
        if found:
            self.advance()
        return found

    def expect(self, text: str) -> _Tok:
        if not self.at(text):
            self.unexpected(repr(text) if text in _OPS else text.upper())
        return self.advance()

    def fail(self, message: str, tok: _Tok | None = None) -> NoReturn:
        _fail(f"{message} at {_where(self.text, (tok or self.peek()).pos)}")

    def unexpected(self, expected: str) -> NoReturn:
        tok = self.peek()
        found = repr(tok.text) if tok.kind != "eof" else "the end of the query"
        self.fail(f"expected {expected}, found {found}")

    def unexpected_after(self, expected: str) -> NoReturn:
        """Reject a token after a complete clause, calling out a stray ')' as unbalanced."""
        if self.at(")"):
            self.fail("unbalanced ')'")
        self.unexpected(expected)

    def open_paren(self) -> _Tok:
        tok = self.expect("(")
        if self.at("select"):
            self.fail("subqueries are not supported")
        return tok

    def close_paren(self, opening: _Tok) -> None:
        if not self.take(")"):
            self.unexpected(f"')' to close the '(' at {_where(self.text, opening.pos)}")

    # expressions, loosest first: OR, AND, NOT, comparison, + -, primary
    def expression(self) -> Expr:
        left = self.conjunction()
        while self.take("or"):
            left = Or(left, self.conjunction())
        return left

    def conjunction(self) -> Expr:
        left = self.negation()
        while self.take("and"):
            left = And(left, self.negation())
        return left

    def negation(self) -> Expr:
        return Not(self.negation()) if self.take("not") else self.predicate()

    def predicate(self) -> Expr:
        left = self.additive()
        if self.at(*_CMP_OPS):
            return Compare(_CMP_OPS[self.advance().text], left, self.additive())
        if self.take("is"):
            negated = self.take("not")
            self.expect("null")
            return IsNull(left, negated=negated)
        negated = self.take("not")
        if self.take("in"):
            return InList(left, self.in_values(), negated=negated)
        if self.at("like", "ilike", "includes", "contains"):
            word = self.advance()
            if self.sql and word.text.lower() in {"includes", "contains"}:
                self.fail(f"{word.text.upper()} is not supported in SQL, only in BTQL text", word)
            op = {"contains": "includes"}.get(word.text.lower(), word.text.lower())
            compare = Compare(op, left, self.additive())
            return Not(compare) if negated else compare
        if negated:
            self.unexpected("IN, LIKE, ILIKE or INCLUDES after NOT")
        return left

    def in_values(self) -> tuple[Expr, ...]:
        opening = self.open_paren()
        if self.at(")"):
            self.fail("IN () needs at least one value")
        values = [self.additive()]
        while self.take(","):
            values.append(self.additive())
        self.close_paren(opening)
        return tuple(values)

    def additive(self) -> Expr:
        left = self.primary()
        while self.at("+", "-"):
            left = Arith(self.advance().text, left, self.primary())
        return left

    def primary(self) -> Expr:
        tok = self.peek()
        if tok.kind in {"string", "number"}:
            return Literal(self.advance().value)
        if self.at("-") and self.peek(1).kind == "number":
            self.advance()
            return Literal(-self.advance().value)
        if self.at("("):
            opening = self.open_paren()
            inner = self.expression()
            self.close_paren(opening)
            return inner
        constants: dict[str, bool | None] = {"true": True, "false": False, "null": None}
        if self.at(*constants):
            return Literal(constants[self.advance().text.lower()])
        if self.take("interval"):
            return self.interval()
        if tok.kind not in {"word", "qident"} or self.at(*_RESERVED) or self.at(":", ahead=1):
            self.unexpected("an expression")
        return self.call() if tok.kind == "word" and self.at("(", ahead=1) else self.path()

    def path(self) -> Ident:
        parts = [self.advance().value]
        while self.take("."):
            if self.peek().kind not in {"word", "qident"}:
                self.unexpected("a field name after '.'")
            parts.append(self.advance().value)
        return Ident(tuple(parts))

    def call(self) -> Expr:
        name = self.advance()
        lower = name.text.lower()
        if lower != "now":
            depth, ahead = 0, 0
            while self.peek(ahead).kind != "eof":  # find the closing ')' to spot an OVER clause
                tok = self.peek(ahead)
                depth += (tok.text == "(") - (tok.text == ")") if tok.kind == "op" else 0
                ahead += 1
                if depth == 0:
                    break
            if self.at("over", ahead=ahead):
                self.fail("window functions are not supported", name)
        opening = self.open_paren()
        if lower == "now":
            self.close_paren(opening)
            return Now()
        if lower in BUCKETS:
            inner = self.expression()
            self.close_paren(opening)
            return Bucket(lower, inner)
        if lower not in AGGREGATES:
            self.fail(
                f"unknown function {name.text}(); supported: now(), {', '.join(BUCKETS)}"
                f" and, in a SQL select list, {', '.join(AGGREGATES)}",
                name,
            )
        if not self.sql:
            self.fail(f"aggregate function {lower}() is only supported in SQL", name)
        if not self.aggregates_allowed:
            self.fail(f"aggregate function {lower}() is only allowed in the select list", name)
        self.aggregates_allowed = False  # no aggregate inside an aggregate
        try:
            return self.aggregate_call(lower, opening)
        finally:
            self.aggregates_allowed = True

    def aggregate_call(self, func: str, opening: _Tok) -> Aggregate:
        """Read an aggregate's arguments after its '('; count(*) counts rows."""
        if func == "count" and self.take("*"):
            self.close_paren(opening)
            return Aggregate(func, None)
        if self.at(")"):
            self.fail(f"{func}() needs an argument")
        arg = self.expression()
        fraction = None
        if func == "percentile":
            self.expect(",")
            tok = self.peek()
            if tok.kind != "number" or not 0 <= tok.value <= 1:
                self.unexpected("a number from 0 to 1 as percentile()'s fraction")
            fraction = float(self.advance().value)
        self.close_paren(opening)
        return Aggregate(func, arg, fraction)

    def interval(self) -> Interval:
        amount = self.peek()
        if amount.kind != "number":
            self.unexpected("a number after INTERVAL")
        self.advance()
        unit = self.advance()
        return Interval(float(amount.value), _interval_unit(unit.text, _where(self.text, unit.pos)))

    # clauses shared by SQL and BTQL text
    def select_list(self) -> tuple[SelectItem, ...] | None:
        if self.take("*"):
            if self.at(","):
                self.fail("'*' cannot be combined with other select items")
            return None
        self.select_starts: list[_Tok] = []
        items: list[SelectItem] = []
        while not items or self.take(","):
            start = self.peek()
            item = self.select_item()
            if self.sql and any(other.alias == item.alias for other in items):
                self.fail(f"duplicate column name {item.alias!r} in the select list", start)
            items.append(item)
            self.select_starts.append(start)
        return tuple(items)

    def select_item(self) -> SelectItem:
        """One item; SQL names a bare path by its last part, BTQL text by the whole path."""
        start = self.peek()
        expr = self.expression()
        if self.take("as"):
            if self.peek().kind not in {"word", "qident"}:
                self.unexpected("an alias after AS")
            return SelectItem(expr, self.advance().value)
        if not isinstance(expr, Ident):
            self.fail("a computed select item needs an alias (AS name)", start)
        return SelectItem(expr, expr.path[-1] if self.sql else ".".join(expr.path))

    def source(self) -> tuple[str, tuple[str, ...], str | None]:
        if self.at("(") and self.at("select", ahead=1):
            self.fail("subqueries are not supported", self.peek(1))
        if not self.at(*SOURCES):
            self.unexpected(f"a source ({', '.join(SOURCES)})")
        name = self.advance().text.lower()
        if not self.at("("):
            self.unexpected(f"'(' and object ids after {name}, as in {name}('<id>')")
        opening = self.open_paren()
        ids: list[str] = []
        shape: str | None = None
        while not self.at(")"):
            if ids or shape:
                self.expect(",")
            where = _where(self.text, self.peek().pos)
            if self.peek().kind == "word" and self.at("=>", ahead=1):
                arg = self.advance()
                self.advance()
                if arg.text.lower() != "shape":
                    self.fail(f"unknown argument {arg.text!r} of {name}()", arg)
                shape = _shape(self.string("a shape"), where)
            elif shape is not None:
                self.fail("object ids must come before shape =>")
            else:
                ids.append(_object_id(self.string("an object id"), where))
        self.close_paren(opening)
        if not ids:
            self.fail(f"{name}() needs at least one object id", opening)
        return name, tuple(ids), shape

    def string(self, what: str) -> str:
        if self.peek().kind != "string":
            self.unexpected(f"{what} (a single-quoted string)")
        return str(self.advance().value)

    def sort_keys(self, select: tuple[SelectItem, ...] | None = None) -> tuple[SortKey, ...]:
        """Sort keys; with an aggregate query's ``select``, each names a select item."""
        keys: list[SortKey] = []
        while not keys or self.take(","):
            tok = self.peek()
            if select is not None and tok.kind == "number":
                path: Path = (self.select_position(select, "ORDER BY").alias,)
            else:
                if tok.kind not in {"word", "qident"} or self.at(*_RESERVED):
                    self.unexpected("a field path to sort by")
                path = self.path().path
                if select is not None:
                    path = self.aggregate_sort_path(path, select, tok)
            descending = self.at("desc")
            if self.at("asc", "desc"):
                self.advance()
            keys.append(SortKey(path, descending=descending))
        return tuple(keys)

    def select_position(self, select: tuple[SelectItem, ...], clause: str) -> SelectItem:
        """The select item a 1-based position (``GROUP BY 1``, ``ORDER BY 2``) names."""
        tok = self.advance()
        if not isinstance(tok.value, int) or not 1 <= tok.value <= len(select):
            self.fail(
                f"{clause} position {tok.text} is not in the select list (1 to {len(select)})", tok
            )
        return select[tok.value - 1]

    def aggregate_sort_path(self, path: Path, select: tuple[SelectItem, ...], tok: _Tok) -> Path:
        """Map an aggregate query's ORDER BY path to the alias of the select item it names."""
        named = next((item for item in select if path == (item.alias,)), None)
        named = named or next((item for item in select if item.expr == Ident(path)), None)
        if named is None:
            self.fail(
                f"ORDER BY {'.'.join(path)} in an aggregate query must name a select item"
                " (an alias, a selected path or a position)",
                tok,
            )
        return (named.alias,)

    def group_by(self, select: tuple[SelectItem, ...] | None, group: _Tok) -> tuple[Expr, ...]:
        """GROUP BY items: expressions, select positions or select aliases, never aggregates."""
        self.expect("by")
        if select is None:
            self.fail("GROUP BY needs a select list, not *", group)
        items: list[Expr] = []
        while not items or self.take(","):
            tok = self.peek()
            if tok.kind == "number" and self.item_ends(ahead=1):
                items.append(self.select_position(select, "GROUP BY").expr)
                continue
            expr = self.expression()
            named = next(
                (i for i in select if isinstance(expr, Ident) and expr.path == (i.alias,)), None
            )
            if named is not None:
                expr = named.expr
            if _aggregates_in(expr):
                self.fail("GROUP BY cannot name an aggregate", tok)
            items.append(expr)
        return tuple(items)

    def item_ends(self, ahead: int) -> bool:
        """Say whether a list item ends ``ahead`` tokens on (so a number there is a position)."""
        if self.peek(ahead).kind == "eof":
            return True
        return self.at(",", ";", "order", "limit", "offset", "having", ahead=ahead)

    def limit(self) -> int:
        tok = self.peek()
        # 0 is refused: an empty page without a cursor is how the end of the data looks.
        if tok.kind != "number" or not isinstance(tok.value, int) or tok.value < 1:
            self.unexpected("a positive integer limit")
        return int(self.advance().value)

    # whole queries
    def sql_query(self) -> Query:
        self.expect("select")
        if self.at("distinct"):
            self.fail("DISTINCT is not supported")
        self.aggregates_allowed = True
        select = self.select_list()
        self.aggregates_allowed = False
        self.expect("from")
        source, ids, shape = self.source()
        where = self.expression() if self.take("where") else None
        group_tok = self.peek()
        group_by = self.group_by(select, group_tok) if self.take("group") else None
        aggregate = group_by is not None or any(_aggregates_in(item.expr) for item in select or ())
        if aggregate and select is not None:
            self.check_grouped(select, group_by or ())
        sort: tuple[SortKey, ...] = ()
        if self.take("order"):
            self.expect("by")
            sort = self.sort_keys(select if aggregate else None)
        limit = self.limit() if self.take("limit") else None
        cursor = None
        if self.take("offset"):
            if self.peek().kind == "number":
                self.fail("OFFSET takes a cursor string; numeric OFFSET is not supported")
            if aggregate:
                self.fail("an aggregate query has no cursor; OFFSET is not supported with it")
            cursor = self.string("a cursor")
        self.take(";")
        if self.peek().kind != "eof":
            if feature := _SQL_UNSUPPORTED.get(self.peek().text.lower()):
                self.fail(f"{feature} is not supported")
            self.unexpected_after(
                "WHERE, GROUP BY, ORDER BY, LIMIT, OFFSET or the end of the query"
            )
        return Query(
            source,
            ids,
            shape or "spans",
            select,
            where,
            sort,
            limit,
            cursor,
            group_by=group_by or (),
            aggregate=aggregate,
        )

    def check_grouped(self, select: tuple[SelectItem, ...], group_by: tuple[Expr, ...]) -> None:
        """Refuse a select item using a field outside its aggregates and the GROUP BY."""
        for item, start in zip(select, self.select_starts, strict=True):
            loose = _ungrouped_field(item.expr, group_by)
            if loose is not None:
                self.fail(
                    f"{'.'.join(loose.path)} (in select item {item.alias!r}) must appear in"
                    " GROUP BY or be inside an aggregate function",
                    start,
                )

    def btql_query(self) -> Query:
        parsers: dict[str, Callable[[], Any]] = {
            "select": self.select_list,
            "from": self.btql_from,
            "filter": self.expression,
            "sort": self.sort_keys,
            "limit": self.limit,
            "cursor": lambda: self.string("a cursor"),
            "preview_length": self.preview_length,
        }
        clauses: dict[str, Any] = {}
        while self.peek().kind != "eof":
            name_tok = self.peek()
            name = name_tok.text.lower()
            if name_tok.kind != "word" or not self.at(":", ahead=1):
                self.unexpected("a clause such as 'select:', 'from:' or 'filter:'")
            if name in _UNSUPPORTED_CLAUSES or name not in parsers or name in clauses:
                problem = "is not supported" if name in _UNSUPPORTED_CLAUSES else "is not a clause"
                self.fail(f"{name}: {'appears twice' if name in clauses else problem}", name_tok)
            self.i += 2
            clauses[name] = parsers[name]()
            tok = self.peek()
            if self.take("|"):
                if self.peek().kind == "eof":
                    self.unexpected("a clause after '|'")
            elif tok.kind != "eof" and not tok.newline_before:
                self.unexpected_after(f"'|', a new line or the end of the query after {name}:")
        if "from" not in clauses:
            _fail("the query has no from: clause")
        source, ids, shape = clauses["from"]
        return Query(
            source,
            ids,
            shape,
            clauses.get("select"),
            clauses.get("filter"),
            clauses.get("sort", ()),
            clauses.get("limit"),
            clauses.get("cursor"),
            preview_length=clauses.get("preview_length"),
        )

    def preview_length(self) -> int:
        """``preview_length: N``: -1 (full values) or a positive number of characters."""
        tok = self.peek()
        negative = self.at("-") and self.peek(1).kind == "number"
        number = self.peek(1) if negative else tok
        if number.kind != "number" or not isinstance(number.value, int):
            self.unexpected("an integer preview_length (-1 or at least 1)")
        self.i += 1 + negative
        return _preview_length(
            -number.value if negative else number.value, _where(self.text, tok.pos)
        )

    def btql_from(self) -> tuple[str, tuple[str, ...], str]:
        source, ids, shape = self.source()
        if self.at(*SHAPES) and not self.at(":", ahead=1):
            word = self.advance()
            if shape is not None and shape != word.text.lower():
                self.fail(f"shape {word.text!r} conflicts with shape => '{shape}'", word)
            shape = word.text.lower()
        return source, ids, shape or "spans"


def _preview_length(value: Any, where: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not (value == -1 or value >= 1):
        _fail(
            f"preview_length must be -1 (full values) or an integer >= 1, got {value!r} at {where}"
        )
    return value


def _children(expr: Expr) -> list[Expr]:
    """The expressions directly inside ``expr``."""
    nested = [getattr(expr, field.name) for field in fields(expr)]
    flat = [c for child in nested for c in (child if isinstance(child, tuple) else (child,))]
    return [c for c in flat if isinstance(c, _EXPR_TYPES)]


def _aggregates_in(expr: Expr) -> list[Aggregate]:
    """The aggregate calls in ``expr`` (none nest: the parser refuses that)."""
    if isinstance(expr, Aggregate):
        return [expr]
    return [found for child in _children(expr) for found in _aggregates_in(child)]


def _ungrouped_field(expr: Expr, group_by: tuple[Expr, ...]) -> Ident | None:
    """A field of ``expr`` read outside its aggregates and GROUP BY expressions, if any."""
    if expr in group_by or isinstance(expr, Aggregate):
        return None
    if isinstance(expr, Ident):
        return expr
    return next(
        (found for c in _children(expr) if (found := _ungrouped_field(c, group_by)) is not None),
        None,
    )


def _interval_unit(unit: str, where: str) -> str:
    if unit.lower() not in _UNITS:
        _fail(f"unknown interval unit {unit!r} at {where}; use second, minute, hour, day or week")
    return _UNITS[unit.lower()]


def _shape(value: Any, where: str) -> str:
    if value not in SHAPES:
        _fail(f"unknown shape {value!r} at {where}; expected one of {', '.join(SHAPES)}")
    return str(value)


def _object_id(value: Any, where: str) -> str:
    if not isinstance(value, str) or not value:
        _fail(f"object id must be a non-empty string, got {value!r} at {where}")
    return value


# --- JSON AST -------------------------------------------------------------------------------

_JSON_QUERY_KEYS = ("select", "from", "filter", "sort", "limit", "cursor", "preview_length")


def _json_typed(node: Any, kind: type, where: str) -> Any:
    if not isinstance(node, kind):
        expected = "an object" if kind is Mapping else "an array"
        _fail(f"expected {expected} at {where}, got {json.dumps(node, default=str)[:60]}")
    return node


def _json_scalar(value: Any, where: str) -> str | int | float | bool | None:
    if value is not None and not isinstance(value, (str, int, float, bool)):
        _fail(f"literal at {where} must be a string, number, boolean or null, got {value!r}")
    return value


def _json_path(node: Any, where: str) -> Path:
    name = _json_typed(node, Mapping, where).get("name")
    if node.get("op") != "ident" or not isinstance(name, list) or not name:
        _fail(f'expected {{"op": "ident", "name": [...]}} at {where}')
    if not all(isinstance(part, str) for part in name):
        _fail(f"ident name parts must be strings at {where}")
    return tuple(name)


def _json_expr(node: Any, where: str) -> Expr:
    obj = _json_typed(node, Mapping, where)
    if "btql" in obj:
        if not isinstance(obj["btql"], str):
            _fail(f"btql must be a string at {where}")
        try:
            return parse_expression(obj["btql"])
        except BTQLError as exc:
            _fail(f"{exc} in {where}.btql")
    build = _JSON_OPS.get(str(obj.get("op")))
    if build is None:
        _fail(f"unknown op {obj.get('op')!r} at {where}")
    return build(obj, where)


def _child(obj: Mapping[str, Any], where: str, key: str = "expr") -> Expr:
    if key not in obj:
        _fail(f"op {obj['op']!r} at {where} needs {key!r}")
    return _json_expr(obj[key], f"{where}.{key}")


def _json_binary(obj: Mapping[str, Any], where: str) -> Expr:
    op, left, right = obj["op"], _child(obj, where, "left"), _child(obj, where, "right")
    if op in {"add", "sub"}:
        return Arith("+" if op == "add" else "-", left, right)
    if op in {"and", "or"}:
        return And(left, right) if op == "and" else Or(left, right)
    return Compare(op, left, right)


def _json_logic(obj: Mapping[str, Any], where: str) -> Expr:
    """Read and/or, either binary or with the SDKs' ``children`` list."""
    if "children" not in obj:
        return _json_binary(obj, where)
    node = And if obj["op"] == "and" else Or
    children = _json_typed(obj["children"], list, f"{where}.children")
    if not children:  # the empty conjunction is true, the empty disjunction false
        return Literal(node is And)
    result = _json_expr(children[0], f"{where}.children[0]")
    for index, child in enumerate(children[1:], 1):
        result = node(result, _json_expr(child, f"{where}.children[{index}]"))
    return result


def _json_in(obj: Mapping[str, Any], where: str) -> InList:
    right, where_right = obj.get("right"), f"{where}.right"
    if isinstance(right, Mapping) and right.get("op") == "literal":
        values = _json_typed(right.get("value"), list, f"{where_right}.value")
        items: tuple[Expr, ...] = tuple(Literal(_json_scalar(v, where_right)) for v in values)
    else:
        nodes = _json_typed(right, list, where_right)
        items = tuple(_json_expr(v, f"{where_right}[{i}]") for i, v in enumerate(nodes))
    if not items:
        _fail(f"IN needs at least one value at {where_right}")
    return InList(_child(obj, where, "left"), items, negated=False)


def _json_interval(obj: Mapping[str, Any], where: str) -> Interval:
    amount = obj.get("value")
    if isinstance(amount, bool) or not isinstance(amount, (int, float)):
        _fail(f"interval value must be a number at {where}")
    return Interval(float(amount), _interval_unit(str(obj.get("unit")), where))


def _json_function(obj: Mapping[str, Any], where: str) -> Now | Bucket:
    name = _json_path(obj.get("name"), f"{where}.name")
    args = _json_typed(obj.get("args") or [], list, f"{where}.args")
    if name == ("now",) and not args:
        return Now()
    if len(name) == 1 and name[0] in BUCKETS and len(args) == 1:
        return Bucket(name[0], _json_expr(args[0], f"{where}.args[0]"))
    _fail(
        f"unknown function {'.'.join(name)!r} with {len(args)} argument(s) at {where};"
        f" supported: now() and {', '.join(BUCKETS)} of one argument"
    )


_JSON_OPS: dict[str, Callable[[Mapping[str, Any], str], Expr]] = {
    "ident": lambda obj, where: Ident(_json_path(obj, where)),
    "literal": lambda obj, where: Literal(_json_scalar(obj.get("value"), where)),
    **dict.fromkeys(
        ("eq", "ne", "gt", "ge", "lt", "le", "like", "ilike", "includes"), _json_binary
    ),
    **dict.fromkeys(("add", "sub"), _json_binary),
    **dict.fromkeys(("and", "or"), _json_logic),
    "not": lambda obj, where: Not(_child(obj, where)),
    "isnull": lambda obj, where: IsNull(_child(obj, where), negated=False),
    "isnotnull": lambda obj, where: IsNull(_child(obj, where), negated=True),
    "in": _json_in,
    "interval": _json_interval,
    "function": _json_function,
}


def _json_query(query: Mapping[str, Any]) -> Query:
    for key in query:
        if key in _UNSUPPORTED_CLAUSES:
            _fail(f"{key} is not supported")
        if key not in _JSON_QUERY_KEYS:
            _fail(f"unknown query key {key!r}; expected {', '.join(_JSON_QUERY_KEYS)}")
    source, ids, shape = _json_from(query.get("from"))
    limit, cursor = query.get("limit"), query.get("cursor")
    if limit is not None and (isinstance(limit, bool) or not isinstance(limit, int) or limit < 1):
        _fail(f"limit must be a positive integer, got {limit!r}")
    if cursor is not None and not isinstance(cursor, str):
        _fail(f"cursor must be a string or null, got {cursor!r}")
    filter_node = query.get("filter")
    preview = query.get("preview_length")
    return Query(
        source,
        ids,
        shape,
        _json_select(query.get("select")),
        None if filter_node is None else _json_expr(filter_node, "filter"),
        _json_sort(query.get("sort")),
        limit,
        cursor,
        preview_length=None if preview is None else _preview_length(preview, "preview_length"),
    )


def _json_from(node: Any) -> tuple[str, tuple[str, ...], str]:
    obj = _json_typed(node, Mapping, "from")
    if obj.get("op") != "function":
        _fail(f'expected {{"op": "function", ...}} at from, naming one of {", ".join(SOURCES)}')
    name, *rest = _json_path(obj.get("name"), "from.name")
    if rest or name not in SOURCES:
        _fail(f"unknown source {name!r} at from.name; expected one of {', '.join(SOURCES)}")
    args = _json_typed(obj.get("args"), list, "from.args")
    if not args:
        _fail(f"{name}() needs at least one object id at from.args")
    ids = []
    for index, arg in enumerate(args):
        literal = _json_expr(arg, f"from.args[{index}]")
        value = literal.value if isinstance(literal, Literal) else None
        ids.append(_object_id(value, f"from.args[{index}]"))
    shape = _shape(obj["shape"], "from.shape") if "shape" in obj else "spans"
    return name, tuple(ids), shape


def _json_select(node: Any) -> tuple[SelectItem, ...] | None:
    items = _json_typed([{"op": "star"}] if node is None else node, list, "select")
    if any(isinstance(item, Mapping) and item.get("op") == "star" for item in items):
        if len(items) > 1:
            _fail("select: star cannot be combined with other items")
        return None
    if not items:
        _fail("select must list at least one item")
    result = []
    for index, item in enumerate(items):
        where = f"select[{index}]"
        expr = _json_expr(_json_typed(item, Mapping, where).get("expr"), f"{where}.expr")
        alias = item.get("alias")
        if alias is None and isinstance(expr, Ident):
            alias = ".".join(expr.path)
        if not isinstance(alias, str):
            _fail(f"a computed select item needs a string alias at {where}")
        result.append(SelectItem(expr, alias))
    return tuple(result)


def _json_sort(node: Any) -> tuple[SortKey, ...]:
    keys = []
    for index, item in enumerate(_json_typed(node or [], list, "sort")):
        where = f"sort[{index}]"
        path = _json_path(_json_typed(item, Mapping, where).get("expr"), f"{where}.expr")
        direction = str(item.get("dir", "asc")).lower()
        if direction not in {"asc", "desc"}:
            _fail(f"dir must be 'asc' or 'desc' at {where}, got {item.get('dir')!r}")
        keys.append(SortKey(path, descending=direction == "desc"))
    return tuple(keys)


# --- public parsing entry points ------------------------------------------------------------


def parse_query(query: str | Mapping[str, Any]) -> Query:
    """Parse a ``/btql`` query in any of its forms: JSON AST, SQL, or BTQL text.

    Raises:
        BTQLError: the query is malformed or uses something the service does not support.
    """
    if isinstance(query, Mapping):
        return _json_query(query)
    if not isinstance(query, str):
        _fail(f"query must be a string or a JSON object, got {type(query).__name__}")
    if not query.strip():
        _fail("the query is empty")
    parser = _Parser(query)
    if parser.at("select") and not parser.at(":", ahead=1):  # BTQL text starts "select:"
        parser.sql = True
        return parser.sql_query()
    return parser.btql_query()


def is_sql(query: Any) -> bool:
    """Whether a ``/btql`` query is SQL text (what a data plane without SQL support refuses)."""
    if not isinstance(query, str) or not query.strip():
        return False
    try:
        parser = _Parser(query)
    except BTQLError:
        return False
    return parser.at("select") and not parser.at(":", ahead=1)


def parse_expression(text: str) -> Expr:
    """Parse one BTQL expression, as in a ``filter:`` clause or a JSON ``{"btql": ...}`` node.

    Raises:
        BTQLError: the expression is malformed.
    """
    parser = _Parser(text)
    expr = parser.expression()
    if parser.peek().kind != "eof":
        parser.unexpected_after("the end of the expression")
    return expr


# --- evaluation -----------------------------------------------------------------------------

_ISO = re.compile(
    r"(\d{4}-\d{2}-\d{2})(?:[T ](\d{2}:\d{2})(:\d{2})?(?:\.(\d{1,9}))?)?"
    r"(?:(Z)|([+-]\d{2}):?(\d{2}))?",
    re.IGNORECASE,
)
_ORDERING = {"eq": operator.eq, "ne": operator.ne, "gt": operator.gt}
_ORDERING.update(ge=operator.ge, lt=operator.lt, le=operator.le)


def _as_datetime(value: Any) -> datetime | None:
    """Read a datetime or an ISO-8601 date / date-time string as an aware UTC datetime."""
    if isinstance(value, datetime):
        return value if value.tzinfo else value.replace(tzinfo=timezone.utc)
    match = _ISO.fullmatch(value) if isinstance(value, str) else None
    if match is None:
        return None
    date, hours, seconds, fraction, _, tz_hours, tz_minutes = match.groups()
    offset = f"{tz_hours}:{tz_minutes}" if tz_hours else "+00:00"
    micros = (fraction or "")[:6].ljust(6, "0")
    try:  # fromisoformat validates the fields; Python 3.10 needs this normalised form
        parsed = datetime.fromisoformat(
            f"{date}T{hours or '00:00'}{seconds or ':00'}.{micros}{offset}"
        )
    except ValueError:
        return None
    return parsed.astimezone(timezone.utc)


def _as_int(value: Any) -> int | None:
    """Read an int, or a string of ASCII digits such as an ``_xact_id``."""
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    if isinstance(value, str) and value.isascii() and value.isdigit():
        return int(value)
    return None


def _kind(value: Any) -> str:
    if isinstance(value, bool):
        return "bool"
    return "number" if isinstance(value, (int, float)) else type(value).__name__


def _comparable(left: Any, right: Any) -> tuple[Any, Any] | None:
    """Bring two non-NULL values to one type, or None when they cannot be compared."""
    int_left, int_right = _as_int(left), _as_int(right)
    if None not in (int_left, int_right) and str in (type(left), type(right)):
        return int_left, int_right
    if datetime in (type(left), type(right)) or (isinstance(left, str) and isinstance(right, str)):
        time_left, time_right = _as_datetime(left), _as_datetime(right)
        if time_left is not None and time_right is not None:
            return time_left, time_right
    return (left, right) if _kind(left) == _kind(right) else None


@lru_cache(maxsize=256)
def _like_regex(pattern: str, *, ignore_case: bool) -> re.Pattern[str]:
    """Translate LIKE (% any run, _ one character, backslash escapes) to a regular expression."""
    wildcards = {"%": ".*", "_": "."}
    tokens = re.findall(r"\\.|.", pattern, re.DOTALL)  # an escaped character, or one character
    parts = [wildcards.get(token) or re.escape(token[-1]) for token in tokens]
    return re.compile("".join(parts), re.DOTALL | (re.IGNORECASE if ignore_case else 0))


def _like(left: Any, pattern: Any, *, ignore_case: bool) -> bool | None:
    """Match a string, or the JSON text of an object or array, against a LIKE pattern."""
    if not isinstance(pattern, str) or not isinstance(left, (str, list, dict)):
        return None
    text = left if isinstance(left, str) else json.dumps(left, ensure_ascii=False)
    return bool(_like_regex(pattern, ignore_case=ignore_case).fullmatch(text))


def _compare(op: str, left: Any, right: Any) -> bool | None:
    """Apply a comparison with SQL semantics: None (unknown) for NULL or mismatched types."""
    if left is None or right is None:
        return None
    if op == "includes":
        return any(_compare("eq", item, right) for item in left) if isinstance(left, list) else None
    if op in {"like", "ilike"}:
        return _like(left, right, ignore_case=op == "ilike")
    pair = _comparable(left, right)
    if pair is None or (op not in {"eq", "ne"} and _kind(pair[0]) in {"list", "dict"}):
        return None
    return bool(_ORDERING[op](*pair))


def _arith(op: str, left: Any, right: Any) -> Any:
    """Add or subtract: timestamps move by intervals, numbers add up, anything else is NULL."""
    if left is None or right is None:
        return None
    sign = 1 if op == "+" else -1
    if isinstance(right, timedelta) and (moment := _as_datetime(left)) is not None:
        return moment + sign * right
    if op == "+" and isinstance(left, timedelta) and (moment := _as_datetime(right)) is not None:
        return moment + left
    return left + sign * right if _kind(left) == _kind(right) == "number" else None


def _lookup(row: Mapping[str, Any], path: Path) -> Any:
    value: Any = row
    for part in path:
        if not isinstance(value, Mapping):
            return None
        value = value.get(part)
    return value


def evaluate(
    expr: Expr,
    row: Mapping[str, Any],
    *,
    now: datetime,
    tz_offset: int = 0,
    aggregates: Mapping[Aggregate, Any] | None = None,
) -> Any:
    """Compute ``expr`` for ``row``: a JSON value, datetime or timedelta, or None for NULL.

    Predicates give True, False or None (unknown), as in SQL; ``now`` is the emulator clock,
    ``tz_offset`` the request's (minutes west of UTC, for time buckets), ``aggregates`` the
    values of a group's aggregate calls (see `aggregate_rows`).
    """
    match expr:
        case Ident(path):
            return _lookup(row, path)
        case Literal(value):
            return value
        case Arith(op, left, right) | Compare(op, left, right):
            apply = _compare if isinstance(expr, Compare) else _arith
            both = (
                evaluate(side, row, now=now, tz_offset=tz_offset, aggregates=aggregates)
                for side in (left, right)
            )
            return apply(op, *both)
        case Now() | Interval() | Bucket() | Aggregate():
            return _evaluate_call(expr, row, now=now, tz_offset=tz_offset, aggregates=aggregates)
    return _evaluate_logic(expr, row, now=now, tz_offset=tz_offset, aggregates=aggregates)


def _evaluate_call(
    expr: Now | Interval | Bucket | Aggregate,
    row: Mapping[str, Any],
    *,
    now: datetime,
    tz_offset: int,
    aggregates: Mapping[Aggregate, Any] | None,
) -> Any:
    match expr:
        case Now():
            return _as_datetime(now)
        case Interval(amount, unit):
            return timedelta(**{f"{unit}s": amount})
        case Bucket(unit, inner):
            value = evaluate(inner, row, now=now, tz_offset=tz_offset, aggregates=aggregates)
            return time_bucket(unit, value, tz_offset)
    if aggregates is None or expr not in aggregates:
        msg = f"an aggregate outside an aggregate query: {expr!r}"
        raise TypeError(msg)
    return aggregates[expr]


def _evaluate_logic(
    expr: Expr,
    row: Mapping[str, Any],
    *,
    now: datetime,
    tz_offset: int,
    aggregates: Mapping[Aggregate, Any] | None,
) -> bool | None:
    def value_of(node: Expr) -> Any:
        return evaluate(node, row, now=now, tz_offset=tz_offset, aggregates=aggregates)

    def truth(node: Expr) -> bool | None:
        value = value_of(node)
        return value if isinstance(value, bool) else None

    match expr:
        case InList(inner, values, negated):
            value = value_of(inner)
            found = [_compare("eq", value, value_of(v)) for v in values]
            result = True if True in found else (None if None in found else False)
            return None if result is None else result != negated
        case IsNull(inner, negated):
            return (value_of(inner) is None) != negated
        case And(left, right):
            both = truth(left), truth(right)
            return False if False in both else (None if None in both else True)
        case Or(left, right):
            both = truth(left), truth(right)
            return True if True in both else (None if None in both else False)
        case Not(inner):
            value = truth(inner)
            return None if value is None else not value
    msg = f"not an expression: {expr!r}"
    raise TypeError(msg)


def matches(
    expr: Expr | None, row: Mapping[str, Any], *, now: datetime, tz_offset: int = 0
) -> bool:
    """Say whether ``row`` passes a filter: no filter passes all, unknown (NULL) does not."""
    return expr is None or evaluate(expr, row, now=now, tz_offset=tz_offset) is True


def time_bucket(unit: str, value: Any, tz_offset: int = 0) -> str | None:
    """The UTC start (ISO-8601, ms, ``Z``) of the hour/day/week/month holding ``value``.

    ``value`` is an ISO string, a datetime or unix seconds (anything else is NULL). Buckets
    are cut in local time ``tz_offset`` minutes WEST of UTC (480: US Pacific standard time),
    weeks starting on Monday; the start is given back in UTC (``...T08:00:00.000Z``).
    """
    try:
        if _kind(value) == "number":
            moment: datetime | None = datetime.fromtimestamp(value, tz=timezone.utc)
        else:
            moment = _as_datetime(value)
        if moment is None:
            return None
        shift = timedelta(minutes=tz_offset)
        local = moment - shift
        start = local.replace(minute=0, second=0, microsecond=0)
        if unit != "hour":
            start = start.replace(hour=0)
        if unit == "week":
            start -= timedelta(days=start.weekday())
        elif unit == "month":
            start = start.replace(day=1)
        start += shift
    except (OverflowError, OSError, ValueError):  # beyond datetime's years 1..9999
        return None
    return start.strftime("%Y-%m-%dT%H:%M:%S.") + f"{start.microsecond // 1000:03d}Z"


def _value_key(value: Any) -> tuple[str, Any]:
    """A hashable identity for grouping and count_distinct: 1 and 1.0 are one value."""
    kind = _kind(value)
    if kind == "number":
        return (kind, float(value))
    if kind in {"bool", "str", "NoneType"}:
        return (kind, value)
    return ("json", json.dumps(value, sort_keys=True, default=str))


def _percentile(numbers: list[float], fraction: float) -> float | None:
    """Linear interpolation between the closest ranks (as numpy's default and Postgres's
    percentile_cont): position ``fraction * (n - 1)`` in the sorted values."""
    if not numbers:
        return None
    ordered = sorted(numbers)
    position = fraction * (len(ordered) - 1)
    low = int(position)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (position - low)


def _aggregate(
    call: Aggregate, rows: list[Mapping[str, Any]], *, now: datetime, tz_offset: int
) -> Any:
    """One aggregate over a group's rows, ignoring NULLs as SQL does (all NULL: NULL)."""
    if call.arg is None:
        return len(rows)
    arg = call.arg
    values = [
        value
        for row in rows
        if (value := evaluate(arg, row, now=now, tz_offset=tz_offset)) is not None
    ]
    numbers = [value for value in values if _kind(value) == "number"]
    reducers: dict[str, Callable[[], Any]] = {
        "count": lambda: len(values),
        "count_distinct": lambda: len({_value_key(value) for value in values}),
        "sum": lambda: sum(numbers) if numbers else None,
        "avg": lambda: sum(numbers) / len(numbers) if numbers else None,
        "percentile": lambda: _percentile(numbers, call.fraction or 0.0),
        "min": lambda: min(values, key=_order_of) if values else None,
        "max": lambda: max(values, key=_order_of) if values else None,
        "any_value": lambda: values[0] if values else None,
    }
    return reducers[call.func]()


def aggregate_rows(
    query: Query, rows: Iterable[Mapping[str, Any]], *, now: datetime, tz_offset: int = 0
) -> list[dict[str, Any]]:
    """Answer an aggregate query over rows already filtered by its WHERE.

    Groups come in the order of their first row (ORDER BY sorts them, by select alias); without
    GROUP BY there is exactly one group, even for no rows (count 0, sum NULL).
    """
    select = query.select or ()
    groups: dict[tuple[tuple[str, Any], ...], list[Mapping[str, Any]]] = {}
    for row in rows:
        key = tuple(
            _value_key(evaluate(expr, row, now=now, tz_offset=tz_offset)) for expr in query.group_by
        )
        groups.setdefault(key, []).append(row)
    if not query.group_by and not groups:
        groups[()] = []
    calls = {call for item in select for call in _aggregates_in(item.expr)}
    answer = []
    for members in groups.values():
        values = {call: _aggregate(call, members, now=now, tz_offset=tz_offset) for call in calls}
        sample = members[0] if members else {}  # grouped fields are equal on every member
        answer.append(
            {
                item.alias: evaluate(
                    item.expr, sample, now=now, tz_offset=tz_offset, aggregates=values
                )
                for item in select
            }
        )
    sort_rows(answer, query.sort)
    return answer


def sort_rows(rows: list[dict[str, Any]], sort: tuple[SortKey, ...]) -> None:
    """Sort built rows (aggregate or summary rows) in place, the first key deciding first."""
    for sort_key in reversed(sort):
        rows.sort(key=partial(sort_value, sort_key.path), reverse=sort_key.descending)


def _has_field(expr: Expr) -> bool:
    return isinstance(expr, Ident) or any(map(_has_field, _children(expr)))


def constrained_fields(expr: Expr | None) -> frozenset[str]:
    """Name the top-level fields a filter bounds on every row it lets through.

    That is fields compared (= > >= < <= IN) with a value in positions reached only through
    AND; the server warns about project_logs queries that bound no indexed field.
    """
    match expr:
        case And(left, right):
            return constrained_fields(left) | constrained_fields(right)
        case Compare(op, Ident(path), other) | Compare(op, other, Ident(path)) if op in {
            "eq",
            "gt",
            "ge",
            "lt",
            "le",
        } and not _has_field(other):
            return frozenset({path[0]})
        case InList(Ident(path), values, negated=False) if not any(map(_has_field, values)):
            return frozenset({path[0]})
    return frozenset()


def sort_value(path: Path, row: Mapping[str, Any]) -> tuple[int, Any]:
    """Give a total-order sort key for ``row``'s value at ``path``, whatever its type.

    NULL sorts first, then booleans, numbers (``_xact_id`` as its integer), strings, and
    JSON objects and arrays by their JSON text, so sorting rows never raises.
    """
    value = _lookup(row, path)
    if path == ("_xact_id",) and (number := _as_int(value)) is not None:
        return (2, number)
    return _order_of(value)


def _order_of(value: Any) -> tuple[int, Any]:
    """The total-order key of one value (see `sort_value`)."""
    if value is None:
        return (0, 0)
    rank = {"bool": 1, "number": 2, "str": 3}.get(_kind(value))
    return (4, json.dumps(value, sort_keys=True, default=str)) if rank is None else (rank, value)
