"""A target rebuilt from Singer messages by upsert, and the emulator's truth to compare it with.

This is what a warehouse loader does with the tap's output (target-postgres upserts on the
key properties), reduced to dictionaries so tests can compare every value of every row.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from tests.conftest import OBJECT_STREAMS

if TYPE_CHECKING:
    from collections.abc import Iterable

    from tests.emulator import Emulator
    from tests.emulator.store import ObjectKind, RowSource


@dataclass(frozen=True)
class RowStream:
    """A row stream and where the emulator keeps its rows."""

    name: str
    source: RowSource
    owner: ObjectKind
    parent_key: str


ROW_STREAMS = (
    RowStream("project_logs", "project_logs", "project", "project_id"),
    RowStream("experiment_events", "experiment", "experiment", "experiment_id"),
    RowStream("dataset_events", "dataset", "dataset", "dataset_id"),
)
ROW_STREAM_NAMES = tuple(stream.name for stream in ROW_STREAMS)

_BRAINTRUST_MS = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z")

Key = tuple[str, str]
Table = dict[Key, dict[str, Any]]


def fixed_width(created: str) -> str:
    """The tap's form of a Braintrust `created` (milliseconds widened to microseconds)."""
    assert _BRAINTRUST_MS.fullmatch(created), created
    return f"{created[:-1]}000Z"


def object_truth(emu: Emulator) -> dict[str, dict[str, dict[str, Any]]]:
    """Every listed project, experiment and dataset, by id, as the tap should emit it."""
    tables: dict[str, dict[str, dict[str, Any]]] = {}
    for stream, kind in OBJECT_STREAMS.items():
        tables[stream] = {}
        for listed in emu.store.objects(kind):  # copies
            for key in ("created", "deleted_at"):
                if listed[key] is not None:
                    listed[key] = fixed_width(listed[key])
            tables[stream][listed["id"]] = listed
    return tables


def truth(emu: Emulator, *, created_since: str | None = None) -> dict[str, Table]:
    """Every visible row of every object, keyed like the target, as the tap should emit it."""
    tables: dict[str, Table] = {}
    for stream in ROW_STREAMS:
        table: Table = {}
        for owner in emu.store.objects(stream.owner):
            for row in emu.store.rows(stream.source, owner["id"]):
                row["created"] = fixed_width(row["created"])
                if created_since is None or row["created"] >= created_since:
                    table[(owner["id"], row["id"])] = row
        tables[stream.name] = table
    return tables


def scores_by_model(rows: Iterable[dict[str, Any]], score: str) -> dict[str | None, list[float]]:
    """The values of one score, grouped by `metadata.model` (None where there is none)."""
    grouped: dict[str | None, list[float]] = {}
    for row in rows:
        value = (row.get("scores") or {}).get(score)
        if value is not None:
            grouped.setdefault((row.get("metadata") or {}).get("model"), []).append(value)
    return grouped


MARK = "_sdc_deleted_at"
"""The tap's deletion marker: a record carrying it is of a row deleted in Braintrust."""


@dataclass
class Target:
    """Tables rebuilt by upsert on (parent id, id), the streams' key properties.

    `tables` holds the live rows (a marked record moves its row to `marked`), without the
    marker, so they compare with the emulator's visible rows.
    """

    tables: dict[str, Table] = field(default_factory=lambda: {n: {} for n in ROW_STREAM_NAMES})
    marked: dict[str, Table] = field(default_factory=lambda: {n: {} for n in ROW_STREAM_NAMES})
    loaded: dict[str, list[Key]] = field(default_factory=dict)

    def load(self, messages: Iterable[dict[str, Any]]) -> dict[str, list[Key]]:
        """Upsert the records of `messages`; return the keys each row stream received."""
        keys_by_stream = {stream.name: stream.parent_key for stream in ROW_STREAMS}
        received: dict[str, list[Key]] = {name: [] for name in ROW_STREAM_NAMES}
        for message in messages:
            if message["type"] != "RECORD" or message["stream"] not in keys_by_stream:
                continue
            record = dict(message["record"])
            deleted = record.pop(MARK, None)
            key = (record[keys_by_stream[message["stream"]]], record["id"])
            live, marked = self.tables[message["stream"]], self.marked[message["stream"]]
            if deleted:
                live.pop(key, None)
                marked[key] = record
            else:
                marked.pop(key, None)
                live[key] = record
            received[message["stream"]].append(key)
        self.loaded = received
        return received

    def differences(self, expected: dict[str, Table]) -> list[str]:
        """What differs from `expected`, readably; empty when the target equals it."""
        problems = []
        for name in ROW_STREAM_NAMES:
            got, want = self.tables[name], expected[name]
            if missing := want.keys() - got.keys():
                problems.append(f"{name}: {len(missing)} rows missing, e.g. {sorted(missing)[:3]}")
            if extra := got.keys() - want.keys():
                problems.append(f"{name}: {len(extra)} rows extra, e.g. {sorted(extra)[:3]}")
            stale = sorted(key for key in want.keys() & got.keys() if got[key] != want[key])
            if stale:
                key = stale[0]
                fields = sorted(
                    f
                    for f in want[key].keys() | got[key].keys()
                    if want[key].get(f) != got[key].get(f)
                )
                problems.append(f"{name}: {len(stale)} rows differ, e.g. {key} in {fields}")
        return problems
