"""The store's write semantics, checked directly (no HTTP)."""

from __future__ import annotations

import re
from typing import Any

import pytest

from tests.emulator import Store
from tests.emulator.store import ROW_FIELDS


class Clock:
    """A settable clock."""

    def __init__(self, now: float) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock() -> Clock:
    return Clock(1_795_000_000.0)


@pytest.fixture
def store(clock: Clock) -> Store:
    store = Store(clock)
    store.add_org("acme")
    return store


@pytest.fixture
def project_id(store: Store) -> str:
    return str(store.add_project("p")["id"])


def by_id(store: Store, project_id: str) -> dict[str, dict[str, Any]]:
    return {row["id"]: row for row in store.rows("project_logs", project_id)}


def test_xact_ids_strictly_increase_and_encode_the_time(
    store: Store, project_id: str, clock: Clock
) -> None:
    xacts = [int(store.insert_rows("project_logs", project_id, [{}])) for _ in range(5)]
    assert xacts == sorted(set(xacts))
    assert all(x >> 48 == 0x0DE1 for x in xacts)
    assert (xacts[0] >> 16) & 0xFFFFFFFF == int(clock.now)
    clock.now -= 3600  # a clock going backwards never makes an older xact
    assert int(store.insert_rows("project_logs", project_id, [{}])) > xacts[-1]


def test_insert_fills_every_column_and_parent_ids(
    store: Store, project_id: str, clock: Clock
) -> None:
    store.insert_rows("project_logs", project_id, [{"id": "r1", "input": {"q": 1}}])
    (row,) = store.rows("project_logs", project_id)
    assert list(row) == list(ROW_FIELDS["project_logs"])
    assert row["project_id"] == project_id
    assert row["log_id"] == "g"
    assert row["org_id"] == (store.org_by_name("acme") or {})["id"]
    assert re.fullmatch(r"p\d{20}", row["_pagination_key"])
    assert row["created"] == "2026-11-18T11:06:40.000Z"
    assert row["root_span_id"] == row["span_id"]
    assert row["is_root"] is True
    assert row["output"] is None


def test_rejects_unknown_and_store_owned_fields(store: Store, project_id: str) -> None:
    with pytest.raises(ValueError, match="unknown fields"):
        store.insert_rows("project_logs", project_id, [{"bogus": 1}])
    with pytest.raises(ValueError, match="store-owned"):
        store.insert_rows("project_logs", project_id, [{"_xact_id": "1"}])
    with pytest.raises(KeyError):
        store.insert_rows("dataset", project_id, [{}])


def test_merge_keeps_created_and_pagination_key_and_bumps_xact(
    store: Store, project_id: str, clock: Clock
) -> None:
    store.insert_rows(
        "project_logs",
        project_id,
        [
            {
                "id": "r",
                "metadata": {"model": "m", "deep": {"a": 1}},
                "tags": ["x"],
                "scores": {"a": 1},
            }
        ],
    )
    before = by_id(store, project_id)["r"]
    clock.now += 60
    xact = store.merge_rows(
        "project_logs",
        project_id,
        [
            {
                "id": "r",
                "metadata": {"deep": {"b": 2}},
                "tags": ["y"],
                "scores": {"user_rating": 0.5},
            }
        ],
    )
    after = by_id(store, project_id)["r"]
    assert after["_xact_id"] == xact
    assert int(xact) > int(before["_xact_id"])
    assert after["created"] == before["created"]
    assert after["_pagination_key"] == before["_pagination_key"]
    assert after["metadata"] == {"model": "m", "deep": {"a": 1, "b": 2}}
    assert after["tags"] == ["y"]
    assert after["scores"] == {"a": 1, "user_rating": 0.5}


def test_replace_rewrites_the_row_but_keeps_its_pagination_key(
    store: Store, project_id: str, clock: Clock
) -> None:
    store.insert_rows("project_logs", project_id, [{"id": "r", "output": "old", "tags": ["t"]}])
    before = by_id(store, project_id)["r"]
    clock.now += 60
    store.insert_rows("project_logs", project_id, [{"id": "r", "output": "new"}])
    after = by_id(store, project_id)["r"]
    assert after["output"] == "new"
    assert after["tags"] is None
    assert after["created"] != before["created"]
    assert after["_pagination_key"] == before["_pagination_key"]


def test_comments_surface_in_the_row_and_survive_a_replace(store: Store, project_id: str) -> None:
    first = store.insert_rows("project_logs", project_id, [{"id": "r"}])
    xact = store.add_comment("project_logs", project_id, "r", "looks wrong 🤔")
    row = by_id(store, project_id)["r"]
    assert row["_xact_id"] == xact
    assert int(xact) > int(first)
    (comment,) = row["comments"]
    assert comment["comment"] == {"text": "looks wrong 🤔"}
    assert comment["origin"] == {"id": "r"}
    store.insert_rows("project_logs", project_id, [{"id": "r", "output": 1}])
    assert len(by_id(store, project_id)["r"]["comments"]) == 1


def test_delete_tombstones_but_as_of_reads_still_see_the_past(store: Store) -> None:
    store.add_project("p2")
    experiment = store.add_experiment(store.objects("project")[0]["id"], "e")
    before = store.insert_rows("experiment", experiment["id"], [{"id": "a"}, {"id": "b"}])
    store.delete_rows("experiment", experiment["id"], ["a"])
    assert [r["id"] for r in store.rows("experiment", experiment["id"])] == ["b"]
    assert {r["id"] for r in store.rows("experiment", experiment["id"], as_of=before)} == {"a", "b"}


def test_as_of_reads_return_each_row_as_it_was(store: Store, project_id: str) -> None:
    dataset = store.add_dataset(project_id, "d")
    v1 = store.insert_rows("dataset", dataset["id"], [{"id": "a", "expected": 1}])
    store.merge_rows("dataset", dataset["id"], [{"id": "a", "expected": 2}])
    v3 = store.insert_rows("dataset", dataset["id"], [{"id": "b"}])
    old = store.rows("dataset", dataset["id"], as_of=v1)
    assert [(r["id"], r["expected"], r["_xact_id"]) for r in old] == [("a", 1, v1)]
    assert {r["id"]: r["expected"] for r in store.rows("dataset", dataset["id"], as_of=v3)} == {
        "a": 2,
        "b": None,
    }


def test_invisible_writes_appear_only_when_published(store: Store, project_id: str) -> None:
    hidden = store.insert_rows("project_logs", project_id, [{"id": "late"}], visible=False)
    later = store.insert_rows("project_logs", project_id, [{"id": "early"}])
    assert set(by_id(store, project_id)) == {"early"}
    processed, considered = store.freshness()
    assert int(processed) < int(hidden) < int(later) == int(considered)
    store.publish(hidden)
    rows = by_id(store, project_id)
    assert rows["late"]["_xact_id"] == hidden  # visible now, with an xact below one already seen
    assert store.freshness() == (later, later)


def test_created_is_normalised_to_utc_milliseconds(store: Store, project_id: str) -> None:
    store.insert_rows(
        "project_logs",
        project_id,
        [
            {"id": "offset", "created": "2026-05-12T21:58:27.768912+02:00"},
            {"id": "naive", "created": "2026-05-12T19:58:27"},
            {"id": "seconds", "created": 1_778_615_907.5},
        ],
    )
    created = {row["id"]: row["created"] for row in store.rows("project_logs", project_id)}
    assert created == {
        "offset": "2026-05-12T19:58:27.768Z",
        "naive": "2026-05-12T19:58:27.000Z",
        "seconds": "2026-05-12T19:58:27.500Z",
    }
    with pytest.raises(ValueError, match="ISO-8601"):
        store.insert_rows("project_logs", project_id, [{"created": "yesterday"}])


def test_late_row_with_old_created_gets_a_new_pagination_key_and_xact(
    store: Store, project_id: str
) -> None:
    store.insert_rows(
        "project_logs", project_id, [{"id": "new", "created": "2026-11-18T00:00:00.000Z"}]
    )
    store.insert_rows(
        "project_logs", project_id, [{"id": "old", "created": "2026-11-01T00:00:00.000Z"}]
    )
    rows = by_id(store, project_id)
    assert rows["old"]["created"] < rows["new"]["created"]
    assert rows["old"]["_pagination_key"] > rows["new"]["_pagination_key"]
    assert int(rows["old"]["_xact_id"]) > int(rows["new"]["_xact_id"])


def test_ordered_views_follow_writes(store: Store, project_id: str) -> None:
    order = (("_xact_id", False),)
    store.insert_rows("project_logs", project_id, [{"id": "a"}, {"id": "b"}])
    first = store.ordered("project_logs", (project_id,), order)
    assert store.ordered("project_logs", (project_id,), order) is first  # cached
    store.merge_rows("project_logs", project_id, [{"id": "a", "tags": ["t"]}])
    again = store.ordered("project_logs", (project_id,), order)
    assert [row.row["id"] for row in again.rows] == ["b", "a"]
    assert again.keys == sorted(again.keys)


def test_objects_are_listed_newest_first_and_names_are_unique(store: Store) -> None:
    store.add_project("old", created="2026-01-01T00:00:00.000Z")
    store.add_project("new", created="2026-06-01T00:00:00.000Z")
    assert [p["name"] for p in store.objects("project")][:2] == ["new", "old"]
    with pytest.raises(ValueError, match="already exists"):
        store.add_project("old")
    with pytest.raises(ValueError, match="unknown project fields"):
        store.add_project("x", colour="red")
    with pytest.raises(ValueError, match="no org"):
        store.add_project("x", org_name="nope")
