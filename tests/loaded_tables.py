"""Tables a real loader wrote, read back in the tap's record shape to compare with the truth.

target-postgres and target-duckdb store the same records with different types (`jsonb` or
`JSON`, `text[]` or `JSON`, JSON null as a value or as SQL NULL) and target-postgres adds
`_sdc_*` columns; reading them back undoes exactly that, so a test can compare every value.
Where a loader cannot keep a value as it was, `stored_form` says what it keeps instead.
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
    from pathlib import Path

    from tests.postgres import PostgresServer

SCHEMA = "braintrust"
KeyT = TypeVar("KeyT")
Tables = dict[str, dict[KeyT, dict[str, Any]]]  # by stream, then by key


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
    """One database of the test PostgreSQL server."""

    server: PostgresServer
    database: str

    def query(self, statement: str) -> list[tuple[Any, ...]]:
        """Rows of one SQL statement."""
        with self.server.connect(self.database) as connection:
            # Bytes: psycopg types `str` queries as literal strings only, and tests build some.
            return connection.execute(statement.encode()).fetchall()

    def column_types(self, table: str) -> dict[str, str]:
        """Column name to type; `udt_name` tells `jsonb` from `json` and `_text` (text[])."""
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
        with self.server.connect(self.database, row_factory=dict_row) as connection:
            return [as_record(row) for row in connection.execute(statement).fetchall()]

    def stored_form(self, tables: Tables[KeyT]) -> Tables[KeyT]:
        """Every value as it was: jsonb keeps any JSON value."""
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
        """Every row, as the tap emitted it; DuckDB hands JSON columns over as text.

        Objects and arrays are JSON text; a scalar is its raw text (see `stored_form`). So a
        string that looks like JSON comes back decoded: only target-postgres' reading tells
        a JSON-encoded string from the object it encodes.
        """
        json_columns = {name for name, kind in self.column_types(table).items() if kind == "json"}
        with duckdb.connect(str(self.path), read_only=True) as connection:
            cursor = connection.execute(f'SELECT * FROM {SCHEMA}."{table}"')  # noqa: S608
            names = [column[0] for column in cursor.description or ()]
            rows = cursor.fetchall()
        return [
            as_record(
                {
                    name: json.loads(value)
                    if name in json_columns and value is not None and value.startswith(("{", "["))
                    else value
                    for name, value in zip(names, row, strict=True)
                }
            )
            for row in rows
        ]

    def stored_form(self, tables: Tables[KeyT]) -> Tables[KeyT]:
        """target-duckdb 0.8.0 JSON-encodes only objects and arrays: a free-form field holding
        a string, number or boolean is written to its JSON column as Python's `str()` of it
        (`La réunion`, `0.5`, `True`), which is not always valid JSON and loses the type."""
        unions = json_union_fields()
        return {
            stream: {
                key: {
                    field: str(value)
                    if f"{stream}.{field}" in unions and not isinstance(value, (dict, list))
                    else value
                    for field, value in row.items()
                }
                for key, row in table.items()
            }
            for stream, table in without_nulls(tables).items()
        }


def as_record(row: dict[str, Any]) -> dict[str, Any]:
    """A loaded row as the tap's record: no loader columns, timestamps in the tap's form.

    Null fields are left out, because a loader stores a missing field and a null one alike.
    """
    return {
        name: value.strftime("%Y-%m-%dT%H:%M:%S.%fZ") if isinstance(value, datetime) else value
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
