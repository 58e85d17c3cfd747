"""What users do in Braintrust between two syncs, on an emulator whose clock moves by hand.

Shared by the tap-level incremental tests and the Meltano end-to-end tests, so both check the
same annotations, late rows and new objects. `_xact_id`s embed the write's second, so a
hand-driven clock makes them realistic and repeatable.
"""

from __future__ import annotations

import json
from contextlib import contextmanager
from datetime import datetime, timezone
from typing import TYPE_CHECKING, Any

from tests.conftest import API_KEY, demo_of
from tests.emulator import running_emulator
from tests.emulator.btql import matches, parse_query
from tests.warehouse import ROW_STREAMS

if TYPE_CHECKING:
    from collections.abc import Iterator

    from tests.emulator import Emulator

DAY = 86_400.0
START = 1_795_000_000.0  # 2026-11-18T11:06:40Z


class ManualClock:
    """A clock that moves only when told to."""

    def __init__(self, now: float) -> None:
        self.now = now

    def __call__(self) -> float:
        """The time it was last set to."""
        return self.now

    def advance(self, seconds: float) -> None:
        """Move on (or back) by `seconds`."""
        self.now += seconds


@contextmanager
def demo_before_a_run(
    clock: ManualClock, *, report_freshness: bool = True, sorted_cursor: bool = True
) -> Iterator[Emulator]:
    """An emulator with the demo data written a day ago, and a little activity just now."""
    with running_emulator(
        api_key=API_KEY,
        clock=clock,
        report_freshness=report_freshness,
        sorted_cursor=sorted_cursor,
    ) as emulator:
        emulator.load_demo(seed=7)
        clock.advance(DAY)
        _recent_activity(emulator, clock)
        yield emulator


def _recent_activity(emu: Emulator, clock: ManualClock) -> None:
    """A few writes in the minute before a run: what its lookback will read again."""
    project = demo_of(emu).projects[0]["id"]
    clock.advance(-30)
    emu.store.insert_rows(
        "project_logs",
        project,
        [{"id": f"recent-{n}", "input": {"q": n}, "created": iso(clock.now)} for n in range(3)],
    )
    clock.advance(30)


def iso(moment: float) -> str:
    """A Unix time as Braintrust writes `created` (UTC, milliseconds)."""
    return datetime.fromtimestamp(moment, tz=timezone.utc).isoformat(timespec="milliseconds")


def annotate(emu: Emulator, clock: ManualClock) -> dict[str, set[tuple[str, str]]]:
    """What users do between two syncs; returns the keys of every row it writes."""
    clock.advance(3600)
    store = emu.store
    project = demo_of(emu).projects[1]["id"]
    logs = store.rows("project_logs", project)
    old = sorted(logs, key=lambda row: row["created"])[:4]  # the oldest rows get reviewed
    changed: dict[str, set[tuple[str, str]]] = {
        "project_logs": set(),
        "experiment_events": set(),
        "dataset_events": set(),
    }
    store.merge_rows(
        "project_logs",
        project,
        [
            {"id": old[0]["id"], "scores": {"human_review": 0.25}},
            {"id": old[1]["id"], "expected": {"answer": "corrected by a reviewer"}},
            {"id": old[2]["id"], "tags": ["annotated", "regression"]},
        ],
    )
    store.add_comment("project_logs", project, old[3]["id"], "wrong tool was called")
    changed["project_logs"] |= {(project, row["id"]) for row in old}
    # A late row: logged now by a client whose clock is three days behind.
    store.insert_rows(
        "project_logs",
        project,
        [{"id": "late-1", "input": "late", "created": iso(clock.now - 3 * DAY)}],
    )
    store.insert_rows(
        "project_logs",
        project,
        [{"id": "new-1", "input": "new", "created": iso(clock.now)}],
    )
    changed["project_logs"] |= {(project, "late-1"), (project, "new-1")}
    experiment = demo_of(emu).experiments[0]
    row = store.rows("experiment", experiment["id"])[-1]
    store.merge_rows("experiment", experiment["id"], [{"id": row["id"], "scores": {"judge": 1}}])
    changed["experiment_events"].add((experiment["id"], row["id"]))
    dataset = demo_of(emu).datasets[0]
    record = store.rows("dataset", dataset["id"])[-1]
    store.merge_rows(
        "dataset",
        dataset["id"],
        [{"id": record["id"], "expected": "fixed", "metadata": {"user_correction": True}}],
    )
    changed["dataset_events"].add((dataset["id"], record["id"]))
    # New objects appear between runs, with rows.
    fresh_experiment = store.add_experiment(experiment["project_id"], "after-run-1")
    store.insert_rows("experiment", fresh_experiment["id"], [{"id": "e-1", "input": 1}])
    fresh_dataset = store.add_dataset(dataset["project_id"], "after-run-1")
    store.insert_rows("dataset", fresh_dataset["id"], [{"id": "d-1", "expected": 2}])
    changed["experiment_events"].add((fresh_experiment["id"], "e-1"))
    changed["dataset_events"].add((fresh_dataset["id"], "d-1"))
    clock.advance(600)
    return changed


def resume_floors(state: dict[str, Any], lookback_seconds: int) -> dict[str, int]:
    """Per object in `state`, the `_xact_id` after which the next run must read.

    That is the watermark less `lookback_seconds`: an `_xact_id` holds its write's Unix
    second above its low 16 bits.
    """
    return {
        partition["context"][stream.parent_key]: int(partition["xact_id_watermark"])
        - (lookback_seconds << 16)
        for stream in ROW_STREAMS
        for partition in state["bookmarks"][stream.name]["partitions"]
    }


def window_keys(
    emu: Emulator, state: dict[str, Any], lookback_seconds: int
) -> set[tuple[str, str]]:
    """Rows whose latest write falls in the lookback window before their partition's watermark."""
    floors = resume_floors(state, lookback_seconds)
    window: set[tuple[str, str]] = set()
    for stream in ROW_STREAMS:
        for partition in state["bookmarks"][stream.name]["partitions"]:
            parent = partition["context"][stream.parent_key]
            floor = floors[parent]
            window |= {
                (parent, row["id"])
                for row in emu.store.rows(stream.source, parent)
                if int(row["_xact_id"]) > floor
            }
    return window


def starts_a_read(query: dict[str, Any] | str) -> bool:
    """Whether a `/btql` AST asks for a read's first page (later ones go on after a row).

    SQL text (a report, or delete detection's counts) is no read of changes.
    """
    return isinstance(query, dict) and "_pagination_key" not in json.dumps(query.get("filter"))


def xact_floors(query: dict[str, Any]) -> dict[str, int]:
    """Per object a `/btql` query reads, the `_xact_id` after which it reads its rows.

    Found by asking the emulator's own evaluator of the filter which `_xact_id`s of each
    object pass (a row created far in the future, so only the `_xact_id` bound decides),
    not by reading the query's shape.
    """
    parsed = parse_query(query)
    fields: dict[str, str] = {stream.source: stream.parent_key for stream in ROW_STREAMS}
    field = fields[parsed.source]
    now = datetime.now(timezone.utc)

    def reads(object_id: str, xact_id: int) -> bool:
        row = {field: object_id, "_xact_id": str(xact_id), "created": "2999-01-01T00:00:00Z"}
        return matches(parsed.filter, row, now=now)

    floors: dict[str, int] = {}
    for object_id in parsed.object_ids:
        low, high = 0, 2**64 - 1  # the first _xact_id read lies in (low, high]
        assert reads(object_id, high), (object_id, query)
        if reads(object_id, low):  # no range: every row (real _xact_ids are above 0)
            floors[object_id] = 0
            continue
        while high - low > 1:
            middle = (low + high) // 2
            low, high = (low, middle) if reads(object_id, middle) else (middle, high)
        floors[object_id] = low
    return floors
