"""The generator is deterministic and makes the awkward data the spec asks for."""

from __future__ import annotations

import json
import time
import unicodedata
from typing import Any

import pytest

from tests.emulator import Demo, Store, generate_demo, generate_logs
from tests.emulator.conftest import FIXED_NOW
from tests.emulator.generator import SAME_CREATED_RUN

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
