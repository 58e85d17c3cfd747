"""Tables a real loader wrote, read back in the tap's record shape to compare with the truth.

target-postgres, pipelinewise-target-postgres and target-duckdb store the same records with
different types, and reading them back undoes exactly that, so a test can compare every
value with the truth as it is:

- target-postgres keeps free-form JSON as `jsonb` and arrays as `jsonb` or `text[]`, which
  psycopg decodes; JSON null and a missing field are both SQL NULL.
- With the tap's `json_fields_as_text`, a free-form field (`input`, `output`, `metadata`,
  ...) arrives as a string of JSON text: pipelinewise-target-postgres stores it as
  `character varying`, target-duckdb as `VARCHAR`; it is parsed back with `json.loads`.
- target-duckdb hands its `JSON` columns (objects and arrays: `scores`, `tags`, ...) over as
  text, parsed back the same way. Without `json_fields_as_text` it writes a free-form scalar
  as Python's `str()` of it (a plain-string `output` unquoted, `True`), which is not JSON:
  reading such a table fails here rather than being bent into shape.
- Loaders add `_sdc_*` columns; they are left out.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Any, Protocol, TypeVar

import duckdb
from psycopg import sql
from psycopg.rows import dict_row

from tests.conftest import json_union_fields
from tests.warehouse import ROW_STREAMS, Table

if TYPE_CHECKING:
    from collections.abc import Collection
    from pathlib import Path

    from tests.postgres import PostgresServer

SCHEMA = "braintrust"
KeyT = TypeVar("KeyT")
Tables = dict[str, dict[KeyT, dict[str, Any]]]  # by stream, then by key
TEXT_TYPES = frozenset({"varchar", "text"})
"""Column types (lower case) of a free-form field loaded as JSON text, in both databases."""


class LoadedWarehouse(Protocol):
    """What the end-to-end tests read from a loaded warehouse."""

    def query(self, statement: str) -> list[tuple[Any, ...]]:
        """Rows of one SQL statement."""
        ...

    def column_types(self, table: str) -> dict[str, str]:
        """Column name to the database's own type name, lower case."""
        ...

    def records(self, table: str) -> list[dict[str, Any]]:
        """Every row of `table` as the tap emitted it (see `as_record`)."""
        ...

    def stored_form(self, tables: Tables[KeyT]) -> Tables[KeyT]:
        """What this loader keeps of the records in `tables`, as the tap emitted them."""
        ...


@dataclass(frozen=True)
class PostgresWarehouse:
    """One database of the test PostgreSQL server, loaded by either PostgreSQL loader."""

    server: PostgresServer
    database: str

    def query(self, statement: str) -> list[tuple[Any, ...]]:
        """Rows of one SQL statement."""
        with self.server.connect(self.database) as connection:
            # Bytes: psycopg types `str` queries as literal strings only, and tests build some.
            return connection.execute(statement.encode()).fetchall()

    def column_types(self, table: str) -> dict[str, str]:
        """Column name to type; `udt_name` tells `jsonb` from `json` and `_text` (text[]),
        and names `character varying` `varchar` and `timestamp without time zone`
        `timestamp`."""
        with self.server.connect(self.database) as connection:
            rows = connection.execute(
                "SELECT column_name, udt_name FROM information_schema.columns"
                " WHERE table_schema = %s AND table_name = %s",
                (SCHEMA, table),
            ).fetchall()
        return {name: kind.lower() for name, kind in rows}

    def records(self, table: str) -> list[dict[str, Any]]:
        """Every row, as the tap emitted it; psycopg already decodes jsonb and arrays."""
        statement = sql.SQL("SELECT * FROM {}.{}").format(
            sql.Identifier(SCHEMA), sql.Identifier(table)
        )
        json_text = json_text_columns(table, self.column_types(table))
        with self.server.connect(self.database, row_factory=dict_row) as connection:
            rows = connection.execute(statement).fetchall()
        return [as_record(row, json_text) for row in rows]

    def stored_form(self, tables: Tables[KeyT]) -> Tables[KeyT]:
        """Every value as it was (see `without_nulls`)."""
        return without_nulls(tables)


@dataclass(frozen=True)
class DuckDBWarehouse:
    """A DuckDB file written by target-duckdb."""

    path: Path

    def query(self, statement: str) -> list[tuple[Any, ...]]:
        """Rows of one SQL statement."""
        with duckdb.connect(str(self.path), read_only=True) as connection:
            return connection.execute(statement).fetchall()

    def column_types(self, table: str) -> dict[str, str]:
        """Column name to type."""
        with duckdb.connect(str(self.path), read_only=True) as connection:
            rows = connection.execute(
                "SELECT column_name, data_type FROM information_schema.columns"
                " WHERE table_schema = ? AND table_name = ?",
                [SCHEMA, table],
            ).fetchall()
        return {name: kind.lower() for name, kind in rows}

    def records(self, table: str) -> list[dict[str, Any]]:
        """Every row, as the tap emitted it; DuckDB hands `JSON` columns over as text."""
        types = self.column_types(table)
        json_text = json_text_columns(table, types) | {n for n, t in types.items() if t == "json"}
        with duckdb.connect(str(self.path), read_only=True) as connection:
            cursor = connection.execute(f'SELECT * FROM {SCHEMA}."{table}"')  # noqa: S608
            names = [column[0] for column in cursor.description or ()]
            rows = cursor.fetchall()
        return [as_record(dict(zip(names, row, strict=True)), json_text) for row in rows]

    def stored_form(self, tables: Tables[KeyT]) -> Tables[KeyT]:
        """Every value as it was (see `without_nulls`), once the tap sends free-form fields
        as JSON text (`json_fields_as_text`)."""
        return without_nulls(tables)


def json_text_columns(table: str, types: dict[str, str]) -> set[str]:
    """The free-form fields of `table` that its loader stored as text: JSON text."""
    unions = json_union_fields()
    return {
        name for name, kind in types.items() if kind in TEXT_TYPES and f"{table}.{name}" in unions
    }


def as_record(row: dict[str, Any], json_text: Collection[str] = ()) -> dict[str, Any]:
    """A loaded row as the tap's record: no loader columns, timestamps in the tap's form, and
    the columns in `json_text` parsed (a text column holds JSON text, never the text `null`).

    Null fields are left out, because a loader stores a missing field and a null one alike.
    """
    return {
        name: json.loads(value)
        if name in json_text
        else value.strftime("%Y-%m-%dT%H:%M:%S.%fZ")
        if isinstance(value, datetime)
        else value
        for name, value in row.items()
        if value is not None and not name.startswith("_sdc_")
    }


def row_tables(warehouse: LoadedWarehouse) -> dict[str, Table]:
    """The three row tables keyed like the truth: (parent id, id)."""
    return {
        stream.name: {
            (record[stream.parent_key], record["id"]): record
            for record in warehouse.records(stream.name)
        }
        for stream in ROW_STREAMS
    }


def without_nulls(tables: Tables[KeyT]) -> Tables[KeyT]:
    """`tables` with null fields left out, to compare with what a loader stored."""
    return {
        name: {
            key: {field: value for field, value in row.items() if value is not None}
            for key, row in table.items()
        }
        for name, table in tables.items()
    }
