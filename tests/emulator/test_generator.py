"""The generator is deterministic and makes the awkward data the spec asks for."""

from __future__ import annotations

import json
import time
import unicodedata
from datetime import datetime
from typing import TYPE_CHECKING, Any

import pytest

from tests.emulator import Demo, Store, generate_demo, generate_logs
from tests.emulator.conftest import FIXED_NOW
from tests.emulator.generator import (
    SAME_CREATED_RUN,
    SmallChange,
    WideOrg,
    generate_wide_org,
    wide_org_small_change,
)

if TYPE_CHECKING:
    from collections.abc import Iterable, Mapping

    from tests.emulator.store import RowSource

SPAN_TYPES = {"llm", "score", "function", "eval", "task", "tool"}


def fresh_store() -> Store:
    store = Store(lambda: FIXED_NOW)
    store.add_org("acme")
    return store


def snapshot(store: Store, demo: Demo) -> dict[str, Any]:
    return {
        "objects": [store.objects(kind) for kind in ("project", "experiment", "dataset")],
        "rows": {key: store.rows(*key) for key in demo.row_counts},
    }


@pytest.fixture(scope="module")
def made() -> tuple[Store, Demo]:
    store = fresh_store()
    return store, generate_demo(store, seed=7)


def log_rows(made: tuple[Store, Demo], index: int = 0) -> list[dict[str, Any]]:
    store, demo = made
    return store.rows("project_logs", demo.projects[index]["id"])


def every_row(made: tuple[Store, Demo]) -> list[dict[str, Any]]:
    store, demo = made
    return [row for key in demo.row_counts for row in store.rows(*key)]


def test_same_seed_same_data_other_seed_other_data(made: tuple[Store, Demo]) -> None:
    store, demo = made
    again = fresh_store()
    assert snapshot(again, generate_demo(again, seed=7)) == snapshot(store, demo)
    other = fresh_store()
    other_demo = generate_demo(other, seed=8)
    assert snapshot(other, other_demo)["rows"] != snapshot(store, demo)["rows"]


def test_a_bare_store_gets_the_default_org() -> None:
    store = Store(lambda: FIXED_NOW)
    demo = generate_demo(store, seed=7)
    assert [org["name"] for org in store.orgs()] == ["acme"]
    assert {p["org_id"] for p in demo.projects} == {store.orgs()[0]["id"]}


def test_shape_of_the_demo(made: tuple[Store, Demo]) -> None:
    store, demo = made
    assert len(demo.projects) == 3
    assert 'O\'Brien "evals" ✓' in {p["name"] for p in demo.projects}
    for project in demo.projects:
        assert 300 <= demo.row_counts[("project_logs", project["id"])] <= 600
        assert len([e for e in demo.experiments if e["project_id"] == project["id"]]) == 2
        assert 1 <= len([d for d in demo.datasets if d["project_id"] == project["id"]]) <= 2
    assert all(count > 10 for count in demo.row_counts.values())
    assert demo.row_counts == {key: len(store.rows(*key)) for key in demo.row_counts}


def test_traces_are_well_formed(made: tuple[Store, Demo]) -> None:
    for index in range(3):
        rows = log_rows(made, index)
        spans = {row["span_id"]: row for row in rows}
        for row in rows:
            assert row["span_attributes"]["type"] in SPAN_TYPES
            if row["is_root"]:
                assert row["span_id"] == row["root_span_id"]
                assert row["span_parents"] is None
            else:
                (parent,) = row["span_parents"]
                if parent in spans:  # a deleted span's children keep pointing at it
                    assert spans[parent]["root_span_id"] == row["root_span_id"]
        sizes: dict[str, int] = {}
        for row in rows:
            sizes[row["root_span_id"]] = sizes.get(row["root_span_id"], 0) + 1
        assert max(sizes.values()) <= 6
        assert min(sizes.values()) == 1


def test_run_of_rows_sharing_one_created(made: tuple[Store, Demo]) -> None:
    _, demo = made
    rows = log_rows(made)
    assert sum(row["created"] == demo.same_created for row in rows) >= max(60, SAME_CREATED_RUN)


def test_created_is_out_of_insertion_order(made: tuple[Store, Demo]) -> None:
    late = 0
    newest = ""
    for row in sorted(log_rows(made), key=lambda row: row["_pagination_key"]):
        late += row["created"] < newest  # arrived after a row with a later created
        newest = max(newest, row["created"])
    assert late > len(log_rows(made)) // 4


def test_merges_comments_and_deletes_are_present(made: tuple[Store, Demo]) -> None:
    _, demo = made
    rows = {row["id"]: row for row in log_rows(made)}
    merged = [rows[row_id] for row_id in demo.merged_row_ids if row_id in rows]
    assert merged
    assert all("annotated" in row["tags"] for row in merged)
    assert all(row["scores"]["user_rating"] in {0.0, 1.0} for row in merged)
    assert any(row["comments"] for row in merged)
    assert all(row_id not in rows for row_id in demo.deleted_row_ids)
    assert any(  # merged after later inserts: newer xact, older pagination key
        int(m["_xact_id"]) > int(r["_xact_id"]) and m["_pagination_key"] < r["_pagination_key"]
        for m in merged
        for r in rows.values()
    )


def test_large_payloads(made: tuple[Store, Demo]) -> None:
    _, demo = made
    by_id = {row["id"]: row for row in every_row(made)}
    sizes = [len(json.dumps(by_id[row_id]).encode()) for row_id in demo.large_row_ids]
    assert 2 <= len(sizes) <= 3
    assert all(200_000 <= size <= 420_000 for size in sizes)


def test_realistic_content(made: tuple[Store, Demo]) -> None:
    rows = every_row(made)
    text = json.dumps(rows, ensure_ascii=False)
    assert "🚀" in text
    assert "東京" in text
    assert "مرحبا" in text
    assert "שלום" in text
    assert any(unicodedata.combining(char) for char in text)
    assert any(
        isinstance(row.get("output"), dict) and row["output"].get("tool_calls") for row in rows
    )
    assert any(row.get("expected") is not None for row in rows if "output" in row)
    assert any(row.get("metadata") is None for row in rows)
    assert any(row.get("error") for row in rows)
    assert '"type": "braintrust_attachment"' in json.dumps(rows)
    models = {(row.get("metadata") or {}).get("model") for row in rows}
    assert {"gpt-4o", None} <= models
    for row in rows:
        for name in ("accuracy", "factuality", "user_rating"):
            score = (row.get("scores") or {}).get(name)
            assert score is None or 0 <= score <= 1
        metrics = row.get("metrics") or {}
        if "tokens" in metrics:
            assert metrics["tokens"] == metrics["prompt_tokens"] + metrics["completion_tokens"]
            assert metrics["end"] >= metrics["start"]


def test_generate_logs_is_fast_deterministic_and_sized() -> None:
    store = fresh_store()
    project = store.add_project("bulk")
    started = time.monotonic()
    generate_logs(store, project["id"], 20_000, seed=3, row_bytes=1500)
    assert time.monotonic() - started < 5  # 200,000 rows stay well under a minute
    rows = store.ordered("project_logs", (project["id"],), (("_pagination_key", False),)).rows
    assert len(rows) == 20_000
    average = sum(len(row.json_bytes()) for row in rows) / len(rows)
    assert 1350 <= average <= 1650
    twin = fresh_store()
    twin_project = twin.add_project("bulk", id=project["id"])
    generate_logs(twin, twin_project["id"], 500, seed=3, row_bytes=1500)
    first = store.rows("project_logs", project["id"])[-500:]
    assert [r["id"] for r in twin.rows("project_logs", project["id"])] == [r["id"] for r in first]


# The wide org ------------------------------------------------------------------------------

DAY = 86_400


@pytest.fixture(scope="module")
def wide() -> tuple[Store, WideOrg]:
    store = fresh_store()
    return store, generate_wide_org(store, seed=13)


def wide_snapshot(store: Store, org: WideOrg) -> dict[str, Any]:
    return {
        "objects": [store.objects(kind) for kind in ("project", "experiment", "dataset")],
        "rows": {key: store.rows(*key) for key in org.row_counts},
    }


def xact_seconds(row: dict[str, Any]) -> int:
    return (int(row["_xact_id"]) >> 16) & 0xFFFFFFFF


def created_seconds(row: Mapping[str, Any]) -> float:
    return datetime.fromisoformat(row["created"].replace("Z", "+00:00")).timestamp()


def test_wide_org_has_the_issues_shape(wide: tuple[Store, WideOrg]) -> None:
    store, org = wide
    assert (len(org.projects), len(org.experiments), len(org.datasets)) == (8, 320, 32)
    assert org.row_counts == {key: len(store.rows(*key)) for key in org.row_counts}
    assert len(org.row_counts) == 8 + 320 + 32
    assert all(org.row_counts[("project_logs", p)] == 400 for p in org.projects)
    assert all(9 <= org.row_counts[("experiment", e)] <= 60 for e in org.experiments)
    assert all(15 <= org.row_counts[("dataset", d)] <= 50 for d in org.datasets)
    assert org.rows("project_logs") == 3200
    assert 14_000 <= org.rows() <= 17_000  # the issue's org: 15,300 rows
    experiments = store.objects("experiment")
    for project in org.projects:
        assert sum(e["project_id"] == project for e in experiments) == 40


def test_wide_org_log_rows_are_the_large_ones(wide: tuple[Store, WideOrg]) -> None:
    store, org = wide

    def average_bytes(source: RowSource) -> float:
        rows = [r for object_id in org.object_ids(source) for r in store.rows(source, object_id)]
        return sum(len(json.dumps(r).encode()) for r in rows) / len(rows)

    assert 1500 <= average_bytes("project_logs") <= 3000
    assert average_bytes("experiment") < average_bytes("project_logs") * 0.75
    assert average_bytes("dataset") < average_bytes("experiment")


def test_wide_org_history_is_spread_over_past_days(wide: tuple[Store, WideOrg]) -> None:
    store, org = wide
    assert org.end == FIXED_NOW
    for source in ("project_logs", "experiment", "dataset"):
        rows = [r for object_id in org.object_ids(source) for r in store.rows(source, object_id)]
        written = [xact_seconds(row) for row in rows]
        assert max(written) <= FIXED_NOW - 3600  # nothing a lookback would read again
        assert max(written) - min(written) > 10 * DAY
        created = sorted(created_seconds(row) for row in rows)
        assert created[-1] < FIXED_NOW - 3000
        assert created[-1] - created[0] > 10 * DAY
    logs = store.rows("project_logs", org.projects[0])
    assert any(  # a late row: written well after the time its client stamped
        xact_seconds(row) - created_seconds(row) > 3000 for row in logs
    )


def test_wide_org_is_deterministic(wide: tuple[Store, WideOrg]) -> None:
    store, org = wide
    again = fresh_store()
    assert wide_snapshot(again, generate_wide_org(again, seed=13)) == wide_snapshot(store, org)
    other = fresh_store()
    other_org = generate_wide_org(other, seed=14)
    assert other_org.projects != org.projects
    assert store.clock() == FIXED_NOW  # the stand-in clock is gone


def test_wide_org_small_change() -> None:
    def changed_store() -> tuple[Store, WideOrg, SmallChange, dict[str, Any]]:
        store = fresh_store()
        org = generate_wide_org(store, seed=13, experiments_per_project=5, logs_per_project=60)
        before = wide_snapshot(store, org)
        return store, org, wide_org_small_change(store, org, seed=1), before

    store, org, change, before = changed_store()
    assert len(change.annotated) == len(set(change.annotated)) == 28
    assert {source for source, _, _ in change.annotated} == {
        "project_logs",
        "experiment",
        "dataset",
    }
    assert len({object_id for _, object_id, _ in change.annotated}) > 10
    assert len(change.new_log_rows) == 20
    assert len(change.changed) == 48
    after = wide_snapshot(store, org)
    touched = set()
    for key, rows in after["rows"].items():
        old = {row["id"]: row for row in before["rows"][key]}
        for row in rows:
            if old.get(row["id"]) != row:
                touched.add((*key, row["id"]))
                assert xact_seconds(row) == FIXED_NOW  # written now
    assert touched == change.changed
    annotated = [
        next(r for r in after["rows"][(source, object_id)] if r["id"] == row_id)
        for source, object_id, row_id in change.annotated
    ]
    assert sum(bool(row["comments"]) for row in annotated) >= 5
    assert sum("reviewed" in (row["tags"] or []) for row in annotated) >= 5
    assert sum("human_review" in (row.get("scores") or {}) for row in annotated) >= 3
    assert sum(str(row["expected"]).startswith("Corrected by") for row in annotated) >= 5
    _, _, again, _ = changed_store()
    assert again == change


# The demo as history -----------------------------------------------------------------------


class InsertLog(Store):
    """A store noting each insert's `_xact_id` and rows, in the order they are made."""

    def __init__(self) -> None:
        super().__init__(lambda: FIXED_NOW)
        self.inserts: list[tuple[int, list[Mapping[str, Any]]]] = []

    def insert_rows(
        self,
        object_type: RowSource,
        object_id: str,
        rows: Iterable[Mapping[str, Any]],
        *,
        visible: bool = True,
    ) -> str:
        rows = list(rows)
        xact_id = super().insert_rows(object_type, object_id, rows, visible=visible)
        self.inserts.append((int(xact_id), rows))
        return xact_id


def seconds(xact_id: int | str) -> int:
    return (int(xact_id) >> 16) & 0xFFFFFFFF


def test_demo_rows_are_written_in_the_past_in_order_each_after_its_created() -> None:
    store = InsertLog()
    demo = generate_demo(store, seed=7)
    assert store.clock() == FIXED_NOW  # the stand-in clock is gone
    assert demo.end == FIXED_NOW
    written = [seconds(xact_id) for xact_id, _ in store.inserts]
    assert written == sorted(set(written))  # in the order made, each in a second of its own
    assert written[-1] - written[0] > 60  # over minutes, not at one moment
    for xact_id, inserted in store.inserts:
        assert all(created_seconds(row) <= seconds(xact_id) for row in inserted)
    rows = every_row((store, demo))
    assert len(rows) == sum(demo.row_counts.values()) > 1000
    assert all(created_seconds(row) <= xact_seconds(row) for row in rows)
    assert max(xact_seconds(row) for row in rows) < FIXED_NOW - 6000  # merges too
    comments = [comment for row in rows for comment in row["comments"] or []]
    assert len(comments) == 9
    assert all(created_seconds(comment) == xact_seconds(comment) for comment in comments)


def test_demo_ends_an_hour_ago_with_a_clean_up_no_lookback_of_minutes_reaches_past(
    made: tuple[Store, Demo],
) -> None:
    store, demo = made
    last = int(store.freshness()[0])  # where a run that read everything leaves its watermark
    assert seconds(last) == FIXED_NOW - 3600
    rows = every_row(made)
    assert max(int(row["_xact_id"]) for row in rows) < last - (3000 << 16)
    assert {row["id"] for row in rows}.isdisjoint(demo.deleted_row_ids)  # the clean-up


def test_demo_gives_the_store_its_clock_back_when_a_write_fails() -> None:
    class FailingStore(Store):
        def merge_rows(self, *args: Any, **kwargs: Any) -> str:
            msg = "disk full"
            raise RuntimeError(msg)

    store = FailingStore(lambda: FIXED_NOW)
    clock = store.clock
    with pytest.raises(RuntimeError, match="disk full"):
        generate_demo(store, seed=7)
    assert store.clock is clock
