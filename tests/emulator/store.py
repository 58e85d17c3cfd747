"""In-memory Braintrust objects and rows with the service's write semantics.

Every write is one transaction with its own `_xact_id`; every version of every row is kept, and
the row a reader sees is folded from those versions (replace, merge, comment, delete), so
"latest version per id" and `version` as-of reads are computed rather than assumed.
"""

from __future__ import annotations

import json
import random
import threading
import time
import uuid
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import TYPE_CHECKING, Any, Literal

if TYPE_CHECKING:
    from collections.abc import Callable, Iterable, Mapping


ObjectKind = Literal["project", "experiment", "dataset"]
RowSource = Literal["project_logs", "experiment", "dataset"]
Order = tuple[tuple[str, bool], ...]
"""A cursor-compatible order: (`_pagination_key` | `_xact_id`, descending) pairs."""

ROW_SOURCES: tuple[RowSource, ...] = ("project_logs", "experiment", "dataset")
_ROW_SOURCE: dict[ObjectKind, RowSource] = {
    "project": "project_logs",
    "experiment": "experiment",
    "dataset": "dataset",
}
OWNER_KIND: dict[str, ObjectKind] = {source: kind for kind, source in _ROW_SOURCE.items()}
"""The object whose id a row source takes (project_logs rows belong to a project)."""
_XACT_PREFIX = 0x0DE1 << 48
_XACT_LOW_BITS = 0xFFFFFFFFFFFF
"""The `(unix_seconds << 16) | counter` part of an `_xact_id`, the high part of its rows' keys."""
ROWS_PER_XACT = 1 << 16
"""Row numbers a transaction's `_pagination_key`s have room for (16 bits)."""
_ORG_NAMESPACE = uuid.UUID("6f1c2a4e-8d3b-4f5a-9c7e-2b1d0e3f4a5b")
"""Org and comment ids are derived from names and transactions, so a seeded store repeats."""

_SPAN_TAIL = (
    "span_id",
    "root_span_id",
    "span_parents",
    "is_root",
    "input",
    "output",
    "expected",
    "error",
    "scores",
    "metrics",
    "metadata",
    "tags",
    "span_attributes",
    "context",
    "origin",
    "comments",
    "audit_data",
    "facets",
    "classifications",
    "_async_scoring_state",
)
ROW_FIELDS: dict[RowSource, tuple[str, ...]] = {
    "project_logs": (
        "id",
        "_xact_id",
        "_pagination_key",
        "created",
        "org_id",
        "project_id",
        "log_id",
        *_SPAN_TAIL,
    ),
    "experiment": (
        "id",
        "_xact_id",
        "_pagination_key",
        "created",
        "project_id",
        "experiment_id",
        *_SPAN_TAIL,
    ),
    "dataset": (
        "id",
        "_xact_id",
        "_pagination_key",
        "created",
        "project_id",
        "dataset_id",
        "input",
        "expected",
        "metadata",
        "tags",
        "origin",
        "span_id",
        "root_span_id",
        "is_root",
        "comments",
        "audit_data",
        "facets",
        "classifications",
    ),
}
"""`SELECT *` columns per source, in the order the emulator returns them."""

_STORE_OWNED = frozenset(
    {
        "_xact_id",
        "_pagination_key",
        "org_id",
        "project_id",
        "log_id",
        "experiment_id",
        "dataset_id",
        "comments",
    }
)

_ANY_JSON: dict[str, Any] = {}
_STRING = {"type": "string"}
_NULLABLE_STRING = {"type": ["string", "null"]}
_NULLABLE_OBJECT = {"type": ["object", "null"]}
_NULLABLE_ARRAY = {"type": ["array", "null"]}
FIELD_SCHEMAS: dict[str, dict[str, Any]] = {
    "id": _STRING,
    "_xact_id": _STRING,
    "_pagination_key": _STRING,
    "created": {"type": "string", "format": "date-time"},
    "org_id": _STRING,
    "project_id": _STRING,
    "log_id": _STRING,
    "experiment_id": _STRING,
    "dataset_id": _STRING,
    "span_id": _NULLABLE_STRING,
    "root_span_id": _NULLABLE_STRING,
    "span_parents": {"type": ["array", "null"], "items": _STRING},
    "is_root": {"type": ["boolean", "null"]},
    "input": _ANY_JSON,
    "output": _ANY_JSON,
    "expected": _ANY_JSON,
    "error": _ANY_JSON,
    "scores": {"type": ["object", "null"], "additionalProperties": {"type": ["number", "null"]}},
    "metrics": {"type": ["object", "null"], "additionalProperties": {"type": ["number", "null"]}},
    "metadata": _NULLABLE_OBJECT,
    "tags": {"type": ["array", "null"], "items": _STRING},
    "span_attributes": _NULLABLE_OBJECT,
    "context": _NULLABLE_OBJECT,
    "origin": _NULLABLE_OBJECT,
    "comments": _NULLABLE_ARRAY,
    "audit_data": _NULLABLE_ARRAY,
    "facets": _NULLABLE_OBJECT,
    "classifications": _NULLABLE_OBJECT,
    "_async_scoring_state": _ANY_JSON,
}
"""JSON Schema of each row column, for the `schema` of /btql answers."""

_OBJECT_DEFAULTS: dict[ObjectKind, dict[str, Any]] = {
    "project": {
        "id": None,
        "org_id": None,
        "name": None,
        "description": None,
        "created": None,
        "deleted_at": None,
        "user_id": None,
        "settings": None,
    },
    "experiment": {
        "id": None,
        "project_id": None,
        "name": None,
        "description": None,
        "created": None,
        "repo_info": {},
        "commit": None,
        "base_exp_id": None,
        "deleted_at": None,
        "dataset_id": None,
        "dataset_version": None,
        "internal_metadata": None,
        "parameters_id": None,
        "parameters_version": None,
        "public": False,
        "user_id": None,
        "metadata": None,
        "tags": None,
    },
    "dataset": {
        "id": None,
        "project_id": None,
        "name": None,
        "description": None,
        "created": None,
        "deleted_at": None,
        "user_id": None,
        "tags": None,
        "metadata": None,
        "url_slug": None,
    },
}


def iso_ms(moment: float | datetime) -> str:
    """Format unix seconds or a datetime the way the service does: ISO-8601 UTC, ms, `Z`."""
    if isinstance(moment, datetime):
        moment = moment.astimezone(timezone.utc)
    else:
        moment = datetime.fromtimestamp(moment, tz=timezone.utc)
    return moment.strftime("%Y-%m-%dT%H:%M:%S.") + f"{moment.microsecond // 1000:03d}Z"


def normalize_timestamp(value: str | float) -> str:
    """A client's `created` (ISO-8601 in any form, naive = UTC, or unix seconds) as returned."""
    if not isinstance(value, str):
        return iso_ms(value)
    try:
        moment = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError as exc:
        msg = f"created must be an ISO-8601 timestamp, got {value!r}"
        raise ValueError(msg) from exc
    return iso_ms(moment if moment.tzinfo else moment.replace(tzinfo=timezone.utc))


def format_pagination_key(value: int) -> str:
    """`p` + 20 zero-padded digits, so string order equals numeric order."""
    return f"p{value:020d}"


def pagination_key_of(xact_id: int | str, row_num: int) -> int:
    """The key of the `row_num`-th row first written by a transaction (contract section 8).

    `((xact_id & 0xFFFFFFFFFFFF) << 16) | row_num` = `(unix_seconds << 32) | (counter << 16) |
    row_num`: keys follow the transaction order, so a key bound can stand for an `_xact_id`.
    """
    return ((int(xact_id) & _XACT_LOW_BITS) << 16) + row_num


def last_pagination_key(xact_id: int | str) -> str:
    """The largest key a row first written at or before `xact_id` can have."""
    return format_pagination_key(pagination_key_of(xact_id, ROWS_PER_XACT - 1))


def _timestamp(value: str | float | None, clock: Callable[[], float]) -> str:
    return normalize_timestamp(clock() if value is None else value)


def _deep_merge(base: Mapping[str, Any], delta: Mapping[str, Any]) -> dict[str, Any]:
    """Merge like Braintrust's `_is_merge`: objects merge key-wise at any depth, others replace."""
    merged = dict(base)
    for key, value in delta.items():
        current = merged.get(key)
        if isinstance(value, dict) and isinstance(current, dict):
            merged[key] = _deep_merge(current, value)
        else:
            merged[key] = value
    return merged


@dataclass(slots=True, eq=False)
class StoredRow:
    """One row as readers see it; its JSON is encoded once and reused by every response."""

    row: dict[str, Any]
    xact_id: int
    pagination_key: int
    _json: bytes | None = None

    def json_bytes(self) -> bytes:
        """Compact UTF-8 JSON of the row (cached: rows are immutable once resolved).

        Text with a lone surrogate (cut mid-character by a JavaScript client) has no UTF-8
        form; such a row goes out with `\\u` escapes, as the service's JSON encoder writes it.
        """
        if self._json is None:
            try:
                text = json.dumps(self.row, ensure_ascii=False, separators=(",", ":"))
                self._json = text.encode()
            except UnicodeEncodeError:
                self._json = json.dumps(self.row, separators=(",", ":")).encode()
        return self._json


@dataclass(frozen=True, slots=True)
class OrderedRows:
    """Rows in one cursor-compatible order, with the signed integer key of each for bisecting."""

    keys: list[tuple[int, ...]]
    rows: list[StoredRow]


@dataclass(slots=True, eq=False)
class _Transaction:
    xact_id: int
    visible: bool
    first_key: int = 0
    """The key of its first new row; later new rows take the following ones."""
    key_slots: int = ROWS_PER_XACT
    first_writes: int = 0
    touched: set[tuple[RowSource, str, str]] = field(default_factory=set)

    def next_key(self) -> int:
        """The key of the next row this transaction writes first."""
        if self.first_writes >= self.key_slots:
            msg = f"transaction {self.xact_id} has no pagination key left (a store bug)"
            raise RuntimeError(msg)
        self.first_writes += 1
        return self.first_key + self.first_writes - 1


@dataclass(frozen=True, slots=True)
class _Version:
    transaction: _Transaction
    kind: Literal["replace", "merge", "comment", "delete"]
    payload: Mapping[str, Any]
    fresh: Mapping[str, Any] | None = None
    """For a merge: the complete row it makes when no row exists yet."""


@dataclass(slots=True, eq=False)
class _RowLog:
    source: RowSource
    owner: Mapping[str, Any]
    versions: dict[str, list[_Version]] = field(default_factory=dict)
    pagination_keys: dict[str, int] = field(default_factory=dict)
    current: dict[str, StoredRow] = field(default_factory=dict)
    generation: int = 0


def order_key(row: StoredRow, order: Order) -> tuple[int, ...]:
    """Signed sort key: ascending order of these tuples is the requested order.

    Ties are broken by `_pagination_key` in the direction of the last sort key.
    """
    key = [
        (-1 if descending else 1)
        * (row.pagination_key if name == "_pagination_key" else row.xact_id)
        for name, descending in order
    ]
    if order[-1][0] != "_pagination_key":
        key.append(-row.pagination_key if order[-1][1] else row.pagination_key)
    return tuple(key)


def _fold(versions: Iterable[_Version], as_of: int | None) -> StoredRow | None:
    """The row after applying visible versions (up to `as_of`) in transaction order.

    Comments are events of their own, so they survive a replace of the row they annotate.
    """
    row: dict[str, Any] | None = None
    comments: list[dict[str, Any]] = []
    xact_id = 0
    for version in versions:
        transaction = version.transaction
        if as_of is not None and transaction.xact_id > as_of:
            break
        if not transaction.visible:
            continue
        if version.kind == "replace":
            row = dict(version.payload)
        elif version.kind == "merge":
            row = (
                _deep_merge(row, version.payload) if row is not None else dict(version.fresh or {})
            )
        elif version.kind == "delete":
            row = None
        else:
            comments.append(dict(version.payload))
        if row is not None:
            xact_id = transaction.xact_id
    if row is None:
        return None
    if comments:
        row["comments"] = comments
    row["_xact_id"] = str(xact_id)
    return StoredRow(row, xact_id, int(row["_pagination_key"][1:]))


class Store:
    """Thread-safe store of orgs, projects, experiments, datasets and their rows.

    Written rows are kept by reference (copying 200,000 bulk rows would double their cost):
    do not mutate a dict after writing it.
    """

    def __init__(self, clock: Callable[[], float] = time.time) -> None:
        """Create an empty store; `clock` gives unix seconds for `created` and `_xact_id`.

        Ids the store makes up come from a fixed-seed generator, so two stores given the
        same writes at the same clock hold the same data (a faulted run and a calm one can
        be compared value for value).
        """
        self.clock = clock
        self._id_source = random.Random(0)
        self._lock = threading.RLock()
        self._orgs: dict[str, dict[str, Any]] = {}
        self._objects: dict[ObjectKind, dict[str, dict[str, Any]]] = {
            "project": {},
            "experiment": {},
            "dataset": {},
        }
        self._logs: dict[tuple[RowSource, str], _RowLog] = {}
        self._transactions: dict[int, _Transaction] = {}
        self._unpublished: set[int] = set()
        self._last_xact_id = 0
        self._deleted: dict[tuple[ObjectKind, str], str] = {}
        self._row_fields: dict[RowSource, tuple[str, ...]] = dict(ROW_FIELDS)
        self._added_fields: dict[RowSource, frozenset[str]] = {s: frozenset() for s in ROW_SOURCES}
        self._ordered_cache: dict[
            tuple[RowSource, tuple[str, ...], Order], tuple[tuple[int, ...], OrderedRows]
        ] = {}

    # Orgs and objects -------------------------------------------------------------------------

    def _new_id(self) -> str:
        """A random-looking UUID, the same sequence in every store."""
        with self._lock:
            return str(uuid.UUID(int=self._id_source.getrandbits(128), version=4))

    def add_org(self, name: str, *, org_id: str | None = None) -> dict[str, Any]:
        """Add an organization; names are unique, and the default id follows from the name."""
        with self._lock:
            if any(org["name"] == name for org in self._orgs.values()):
                msg = f"org {name!r} already exists"
                raise ValueError(msg)
            org = {"id": org_id or str(uuid.uuid5(_ORG_NAMESPACE, name)), "name": name}
            self._orgs[org["id"]] = org
            return dict(org)

    def orgs(self) -> list[dict[str, Any]]:
        """Copies of every org, in creation order."""
        with self._lock:
            return [dict(org) for org in self._orgs.values()]

    def org_by_name(self, name: str) -> dict[str, Any] | None:
        """The org with that name, if any."""
        with self._lock:
            return next((dict(o) for o in self._orgs.values() if o["name"] == name), None)

    def add_project(
        self,
        name: str,
        *,
        org_name: str | None = None,
        created: str | float | None = None,
        **fields: Any,
    ) -> dict[str, Any]:
        """Add a project to `org_name` (default: the first org)."""
        with self._lock:
            if org_name is None:
                org = next(iter(self._orgs.values()), None)
            else:
                org = next((o for o in self._orgs.values() if o["name"] == org_name), None)
            if org is None:
                msg = f"no org {org_name!r}; add it with add_org first"
                raise ValueError(msg)
            siblings = self._objects["project"].values()
            if any(p["name"] == name and p["org_id"] == org["id"] for p in siblings):
                msg = f"project {name!r} already exists in org {org['name']!r}"
                raise ValueError(msg)
            return self._add_object("project", name, created, {"org_id": org["id"]}, fields)

    def add_experiment(
        self, project_id: str, name: str, *, created: str | float | None = None, **fields: Any
    ) -> dict[str, Any]:
        """Add an experiment to a project; names are unique per project."""
        return self._add_child("experiment", project_id, name, created, fields)

    def add_dataset(
        self, project_id: str, name: str, *, created: str | float | None = None, **fields: Any
    ) -> dict[str, Any]:
        """Add a dataset to a project; names are unique per project."""
        return self._add_child("dataset", project_id, name, created, fields)

    def _add_child(
        self,
        kind: ObjectKind,
        project_id: str,
        name: str,
        created: str | float | None,
        fields: dict[str, Any],
    ) -> dict[str, Any]:
        with self._lock:
            if project_id not in self._objects["project"]:
                msg = f"no project {project_id!r}"
                raise KeyError(msg)
            siblings = self._objects[kind].values()
            if any(o["name"] == name and o["project_id"] == project_id for o in siblings):
                msg = f"{kind} {name!r} already exists in project {project_id!r}"
                raise ValueError(msg)
            return self._add_object(kind, name, created, {"project_id": project_id}, fields)

    def _add_object(
        self,
        kind: ObjectKind,
        name: str,
        created: str | float | None,
        parent: dict[str, Any],
        fields: dict[str, Any],
    ) -> dict[str, Any]:
        defaults = _OBJECT_DEFAULTS[kind]
        unknown = set(fields) - set(defaults)
        if unknown:
            msg = f"unknown {kind} fields: {sorted(unknown)}"
            raise ValueError(msg)
        obj = {
            **defaults,
            "id": self._new_id(),
            **fields,
            **parent,
            "name": name,
            "created": _timestamp(created, self.clock),
        }
        self._objects[kind][obj["id"]] = obj
        self._logs[(_ROW_SOURCE[kind], obj["id"])] = _RowLog(_ROW_SOURCE[kind], obj)
        return dict(obj)

    def get_object(self, kind: ObjectKind, object_id: str) -> dict[str, Any] | None:
        """A copy of one project, experiment or dataset (deleted ones too), or None."""
        with self._lock:
            obj = self._objects[kind].get(object_id)
            return dict(obj) if obj is not None else None

    def objects(self, kind: ObjectKind, *, deleted: bool = False) -> list[dict[str, Any]]:
        """Copies of the objects of a kind, newest `created` first (tie: id descending).

        Deleted ones (and those of a deleted project) are left out, as listings leave them
        out, unless `deleted` is true.
        """
        with self._lock:
            found = [
                dict(o)
                for o in self._objects[kind].values()
                if deleted or not self.is_deleted(kind, o["id"])
            ]
        return sorted(found, key=lambda o: (o["created"], o["id"]), reverse=True)

    def rename_object(self, kind: ObjectKind, object_id: str, name: str) -> None:
        """Rename a project, experiment or dataset, as a user does in the UI."""
        with self._lock:
            self._objects[kind][object_id]["name"] = name

    def delete_object(self, kind: ObjectKind, object_id: str) -> None:
        """Delete a project, experiment or dataset; a deleted project takes its children along.

        The API then hides it (listings, single reads, `/btql` sources) as if access were
        lost, as the service does; its rows stay stored. `deleted_at` is set on the object.
        Deleting it again changes nothing.
        """
        with self._lock:
            obj = self._objects[kind].get(object_id)
            if obj is None:
                msg = f"no {kind} {object_id!r}"
                raise KeyError(msg)
            if (kind, object_id) not in self._deleted:
                obj["deleted_at"] = self._deleted[(kind, object_id)] = iso_ms(self.clock())

    def is_deleted(self, kind: ObjectKind, object_id: str) -> bool:
        """Whether an object, or the project it belongs to, was deleted with `delete_object`."""
        with self._lock:
            if (kind, object_id) in self._deleted:
                return True
            obj = self._objects[kind].get(object_id)
            if kind == "project" or obj is None:
                return False
            return ("project", obj["project_id"]) in self._deleted

    def org_id_of(self, kind: ObjectKind, object_id: str) -> str | None:
        """The org owning an object (through its project), or None if it does not exist."""
        with self._lock:
            obj = self._objects[kind].get(object_id)
            if obj is None:
                return None
            if kind != "project":
                obj = self._objects["project"][obj["project_id"]]
            return str(obj["org_id"])

    # Row fields -------------------------------------------------------------------------------

    def add_row_field(self, source: RowSource, name: str) -> None:
        """Accept a new top-level field on `source` rows, as Braintrust adds fields over time.

        Rows written with it carry it (also in `SELECT *`, after the usual columns); rows
        written without it do not have the key. This store only; adding it again is a no-op.
        """
        with self._lock:
            if source not in self._row_fields:
                msg = f"no row source {source!r}; expected one of {ROW_SOURCES}"
                raise ValueError(msg)
            if not name or name in _STORE_OWNED:
                msg = f"{name!r} cannot be a client-written row field"
                raise ValueError(msg)
            if name not in self._row_fields[source]:
                self._row_fields[source] = (*self._row_fields[source], name)
                self._added_fields[source] = self._added_fields[source] | {name}

    def row_fields(self, source: RowSource) -> tuple[str, ...]:
        """The `SELECT *` columns of a source: `ROW_FIELDS` and then those added to this store."""
        with self._lock:
            return self._row_fields[source]

    # Row writes -------------------------------------------------------------------------------

    def insert_rows(
        self,
        object_type: RowSource,
        object_id: str,
        rows: Iterable[Mapping[str, Any]],
        *,
        visible: bool = True,
    ) -> str:
        """Write rows in one transaction; an existing id is REPLACED (its pagination key kept).

        A row may carry an old `created` (a late row). Returns the transaction's `_xact_id`.
        """
        with self._lock:
            log = self._log(object_type, object_id)
            written = list(rows)
            for row in written:
                self._check_writable(object_type, row)
            transaction = self._begin(visible, self._new_ids(log, written))
            created = iso_ms(self.clock())
            for row in written:
                row_id = str(row.get("id") or self._new_id())
                complete = self._complete(log, row_id, row, created, transaction)
                self._append(log, row_id, _Version(transaction, "replace", complete))
            return str(transaction.xact_id)

    def merge_rows(
        self,
        object_type: RowSource,
        object_id: str,
        updates: Iterable[Mapping[str, Any]],
        *,
        visible: bool = True,
    ) -> str:
        """Merge writes (annotations): keep `created` and `_pagination_key`, new `_xact_id`.

        Objects merge key-wise at every depth; other values replace. A merge on an id that has
        no row yet creates it, as the service does.
        """
        with self._lock:
            log = self._log(object_type, object_id)
            written = list(updates)
            for update in written:
                self._check_writable(object_type, update)
                if not update.get("id"):
                    msg = "every merge update needs an id"
                    raise ValueError(msg)
            transaction = self._begin(visible, self._new_ids(log, written))
            created = iso_ms(self.clock())
            for update in written:
                row_id = str(update["id"])
                delta = {k: v for k, v in update.items() if k not in {"id", "created"}}
                fresh = self._complete(log, row_id, update, created, transaction)
                self._append(log, row_id, _Version(transaction, "merge", delta, fresh))
            return str(transaction.xact_id)

    def add_comment(
        self,
        object_type: RowSource,
        object_id: str,
        row_id: str,
        text: str,
        *,
        user_email: str = "reviewer@example.com",
    ) -> str:
        """Comment on a row: its own event, surfacing in the row's `comments` with a new xact."""
        with self._lock:
            log = self._log(object_type, object_id)
            if row_id not in log.versions:
                msg = f"no row {row_id!r} in {object_type} {object_id!r}"
                raise KeyError(msg)
            transaction = self._begin(visible=True)
            comment = {
                "id": str(uuid.uuid5(_ORG_NAMESPACE, f"comment:{transaction.xact_id}:{row_id}")),
                "_xact_id": str(transaction.xact_id),
                "created": iso_ms(self.clock()),
                "origin": {"id": row_id},
                "comment": {"text": text},
                "user": {"email": user_email},
            }
            self._append(log, row_id, _Version(transaction, "comment", comment))
            return str(transaction.xact_id)

    def delete_rows(
        self, object_type: RowSource, object_id: str, ids: Iterable[str], *, visible: bool = True
    ) -> str:
        """Tombstone rows (`_object_delete`): queries stop returning them.

        `visible=False` holds the delete back until `publish` (deletes are eventually
        consistent: a deleted row may still be read for a while).
        """
        with self._lock:
            log = self._log(object_type, object_id)
            transaction = self._begin(visible)
            for row_id in ids:
                if row_id not in log.versions:
                    msg = f"no row {row_id!r} in {object_type} {object_id!r}"
                    raise KeyError(msg)
                self._append(log, row_id, _Version(transaction, "delete", {}))
            return str(transaction.xact_id)

    def publish(self, xact_id: str) -> None:
        """Make a write made with `visible=False` visible now (after later transactions)."""
        with self._lock:
            transaction = self._transactions[int(xact_id)]
            if transaction.visible:
                return
            transaction.visible = True
            self._unpublished.discard(transaction.xact_id)
            for object_type, object_id, row_id in transaction.touched:
                self._refresh(self._logs[(object_type, object_id)], row_id)

    def _log(self, object_type: RowSource, object_id: str) -> _RowLog:
        log = self._logs.get((object_type, object_id))
        if log is None:
            msg = f"no {OWNER_KIND[object_type]} {object_id!r} for {object_type} rows"
            raise KeyError(msg)
        return log

    def _check_writable(self, object_type: RowSource, row: Mapping[str, Any]) -> None:
        fields = set(row)
        unknown = fields - set(self._row_fields[object_type])
        owned = fields & _STORE_OWNED
        if unknown or owned:
            msg = (
                f"{object_type} row has unknown fields {sorted(unknown)}"
                f" or store-owned fields {sorted(owned)}"
            )
            raise ValueError(msg)

    @staticmethod
    def _new_ids(log: _RowLog, rows: Iterable[Mapping[str, Any]]) -> int:
        """How many rows a write gives their first version (each takes a new key).

        A row without an id is new (its id is made up as it is written, in row order, so a
        seeded store keeps making the same ids).
        """
        given = {str(row["id"]) for row in rows if row.get("id")}
        unnamed = sum(1 for row in rows if not row.get("id"))
        return unnamed + len(given - log.pagination_keys.keys())

    def _complete(
        self,
        log: _RowLog,
        row_id: str,
        row: Mapping[str, Any],
        created: str,
        transaction: _Transaction,
    ) -> dict[str, Any]:
        """The full `SELECT *` row for a write: every column, parent ids, first pagination key.

        A row's key is given by the transaction of its first write and kept after, deletes
        included. Fields added with `add_row_field` are there only when the write has them.
        """
        pagination_key = log.pagination_keys.get(row_id)
        if pagination_key is None:
            pagination_key = log.pagination_keys[row_id] = transaction.next_key()
        owner = log.owner
        span_id = row.get("span_id") or self._new_id()
        known = {
            "id": row_id,
            "_xact_id": None,
            "_pagination_key": format_pagination_key(pagination_key),
            "created": normalize_timestamp(row["created"]) if row.get("created") else created,
            "project_id": owner["id"] if log.source == "project_logs" else owner["project_id"],
            "org_id": owner.get("org_id"),
            "log_id": "g",
            "experiment_id": owner["id"],
            "dataset_id": owner["id"],
            "span_id": span_id,
            "root_span_id": row.get("root_span_id") or span_id,
            "is_root": row.get("is_root", not row.get("span_parents")),
        }
        complete = {
            name: known[name] if name in known else row.get(name) for name in ROW_FIELDS[log.source]
        }
        added = self._added_fields[log.source]
        if added:
            complete.update(
                (name, row[name])
                for name in self._row_fields[log.source]
                if name in added and name in row
            )
        return complete

    def _append(self, log: _RowLog, row_id: str, version: _Version) -> None:
        log.versions.setdefault(row_id, []).append(version)
        transaction = version.transaction
        transaction.touched.add((log.source, str(log.owner["id"]), row_id))
        if transaction.visible:
            self._refresh(log, row_id)

    def _refresh(self, log: _RowLog, row_id: str) -> None:
        resolved = _fold(log.versions[row_id], None)
        if resolved is None:
            log.current.pop(row_id, None)
        else:
            log.current[row_id] = resolved
        log.generation += 1

    def _begin(self, visible: bool, new_rows: int = 0) -> _Transaction:
        """A transaction whose `_xact_id` is above every earlier one, even if the clock is not.

        Its new rows take keys `pagination_key_of(xact_id, n)`. One giving more than 65,536 rows
        their first version skips an `_xact_id` per 65,536 more and takes the keys those would
        have had, so every key stays unique, ordered by transaction, and at most
        `last_pagination_key` of its own `_xact_id`.
        """
        floor = _XACT_PREFIX | (int(self.clock()) << 16)
        first = max(self._last_xact_id + 1, floor)
        skipped = max(0, new_rows - 1) // ROWS_PER_XACT
        self._last_xact_id = first + skipped
        transaction = _Transaction(
            self._last_xact_id,
            visible,
            first_key=pagination_key_of(first, 0),
            key_slots=(skipped + 1) * ROWS_PER_XACT,
        )
        self._transactions[transaction.xact_id] = transaction
        if not visible:
            self._unpublished.add(transaction.xact_id)
        return transaction

    # Reads ------------------------------------------------------------------------------------

    def rows(
        self, object_type: RowSource, object_id: str, *, as_of: str | int | None = None
    ) -> list[dict[str, Any]]:
        """The truth: visible rows exactly as `/btql` `SELECT *` returns them (newest first)."""
        ordered = self.ordered(object_type, (object_id,), (("_pagination_key", True),), as_of=as_of)
        return [json.loads(row.json_bytes()) for row in ordered.rows]

    def ordered(
        self,
        object_type: RowSource,
        object_ids: Iterable[str],
        order: Order,
        *,
        as_of: str | int | None = None,
    ) -> OrderedRows:
        """Current rows of one or more objects in a cursor-compatible order.

        Cached until one of the objects changes, so paging a large object costs a bisect per page.
        """
        ids = tuple(object_ids)
        with self._lock:
            logs = [self._log(object_type, object_id) for object_id in ids]
            if as_of is not None:
                version = int(as_of)
                rows = [
                    resolved
                    for log in logs
                    for versions in log.versions.values()
                    if (resolved := _fold(versions, version)) is not None
                ]
                return self._sorted(rows, order)
            generations = tuple(log.generation for log in logs)
            cache_key = (object_type, ids, order)
            cached = self._ordered_cache.get(cache_key)
            if cached is not None and cached[0] == generations:
                return cached[1]
            result = self._sorted([row for log in logs for row in log.current.values()], order)
            self._ordered_cache[cache_key] = (generations, result)
            return result

    @staticmethod
    def _sorted(rows: list[StoredRow], order: Order) -> OrderedRows:
        keyed = sorted(((order_key(row, order), row) for row in rows), key=lambda pair: pair[0])
        return OrderedRows([key for key, _ in keyed], [row for _, row in keyed])

    def freshness(self) -> tuple[str, str]:
        """(`last_processed_xact_id`, `last_considered_xact_id`).

        Every write up to the first is visible; later ones may still be unpublished.
        """
        with self._lock:
            considered = self._last_xact_id
            processed = min(self._unpublished) - 1 if self._unpublished else considered
            return str(processed), str(considered)
