"""The store's write semantics, checked directly (no HTTP)."""

from __future__ import annotations

import re
from typing import Any

import pytest

from tests.emulator import Store
from tests.emulator.store import (
    ROW_FIELDS,
    RowSource,
    last_pagination_key,
    pagination_key_of,
)


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


# Pagination keys (contract section 8) ---------------------------------------------------------


def keys_by_id(store: Store, source: RowSource, object_id: str) -> dict[str, int]:
    return {r["id"]: int(r["_pagination_key"][1:]) for r in store.rows(source, object_id)}


def test_a_key_is_the_first_write_xact_and_the_row_number(
    store: Store, project_id: str, clock: Clock
) -> None:
    x1 = int(store.insert_rows("project_logs", project_id, [{"id": "a"}, {"id": "b"}]))
    x2 = int(store.insert_rows("project_logs", project_id, [{"id": "a"}, {"id": "c"}]))
    keys = keys_by_id(store, "project_logs", project_id)
    assert keys == {
        "a": ((x1 & 0xFFFFFFFFFFFF) << 16) | 0,
        "b": ((x1 & 0xFFFFFFFFFFFF) << 16) | 1,
        "c": ((x2 & 0xFFFFFFFFFFFF) << 16) | 0,  # `a` was not new: c is row 0 of x2
    }
    assert keys["a"] >> 32 == int(clock.now)  # (unix_seconds << 32) | (counter << 16) | row
    assert (keys["c"] >> 16) & 0xFFFF == x2 & 0xFFFF
    assert keys["a"] == pagination_key_of(x1, 0)


def test_merges_replaces_deletes_keep_the_first_key(store: Store, project_id: str) -> None:
    x1 = store.insert_rows("project_logs", project_id, [{"id": "a"}])
    store.merge_rows("project_logs", project_id, [{"id": "a", "tags": ["t"]}])
    store.insert_rows("project_logs", project_id, [{"id": "a", "output": 2}])
    store.delete_rows("project_logs", project_id, ["a"])
    store.insert_rows("project_logs", project_id, [{"id": "a", "output": 3}])
    x6 = store.merge_rows("project_logs", project_id, [{"id": "new", "output": 4}])
    keys = keys_by_id(store, "project_logs", project_id)
    assert keys == {"a": pagination_key_of(x1, 0), "new": pagination_key_of(x6, 0)}


def test_rows_first_written_by_xact_w_are_at_most_its_key_bound(
    store: Store, project_id: str, clock: Clock
) -> None:
    """What a client may rely on: `_pagination_key <= last_pagination_key(W)` holds exactly
    the rows first written at or before `_xact_id` W (every row, not only those still there)."""
    dataset = str(store.add_dataset(project_id, "d")["id"])
    first_write: dict[str, int] = {}
    writes: list[int] = []
    for step in range(40):
        clock.now += step % 3  # several transactions in one second, then a new second
        new = [{"id": f"r{step}-{n}"} for n in range(step % 5)]
        old = [{"id": row_id} for row_id in list(first_write)[: step % 4]]
        if step % 7 == 3:
            xact = int(store.merge_rows("dataset", dataset, [*old, *new]))
        elif step % 11 == 5 and old:
            xact = int(store.delete_rows("dataset", dataset, [r["id"] for r in old]))
            new = []
        else:
            xact = int(store.insert_rows("dataset", dataset, [*new, *old], visible=step % 9 != 4))
        writes.append(xact)
        first_write.update({row["id"]: xact for row in new})
    for xact in writes:
        store.publish(str(xact))  # late, so that every row shows at some version
    keys = {
        row["id"]: int(row["_pagination_key"][1:])
        for xact in writes
        for row in store.rows("dataset", dataset, as_of=xact)
    }
    assert len(set(keys.values())) == len(keys) == len(first_write)
    for bound_xact in writes:
        bound = int(last_pagination_key(bound_xact)[1:])
        for row_id, key in keys.items():
            assert (key <= bound) == (first_write[row_id] <= bound_xact), (row_id, bound_xact)
    assert (
        last_pagination_key(writes[0]) == f"p{((writes[0] & 0xFFFFFFFFFFFF) << 16) | 0xFFFF:020d}"
    )


def test_a_transaction_of_more_than_65536_new_rows_keeps_keys_unique_and_bounded(
    store: Store, project_id: str
) -> None:
    before = int(store.insert_rows("project_logs", project_id, [{"id": "before"}]))
    big = int(store.insert_rows("project_logs", project_id, [{} for _ in range(65_538)]))
    after = int(store.insert_rows("project_logs", project_id, [{"id": "after"}]))
    assert big == before + 2  # one _xact_id skipped: its keys hold rows 65,536 on
    assert after == big + 1
    keys = keys_by_id(store, "project_logs", project_id)
    big_keys = sorted(key for row_id, key in keys.items() if row_id not in {"before", "after"})
    assert len(set(big_keys)) == len(big_keys) == 65_538
    assert big_keys == list(range(big_keys[0], big_keys[0] + 65_538))
    assert keys["before"] < big_keys[0]
    assert big_keys[-1] <= int(last_pagination_key(big)[1:]) < keys["after"]


# Deleted objects and new row fields -----------------------------------------------------------


def test_deleting_an_object_hides_it_and_a_project_its_children(
    store: Store, project_id: str, clock: Clock
) -> None:
    experiment = store.add_experiment(project_id, "e")["id"]
    dataset = store.add_dataset(project_id, "d")["id"]
    other = store.add_project("other")["id"]
    store.insert_rows("dataset", dataset, [{"id": "r"}])
    store.delete_object("dataset", dataset)
    assert store.is_deleted("dataset", dataset)
    assert not store.is_deleted("experiment", experiment)
    assert store.objects("dataset") == []
    assert [d["id"] for d in store.objects("dataset", deleted=True)] == [dataset]
    assert (store.get_object("dataset", dataset) or {})["deleted_at"] == "2026-11-18T11:06:40.000Z"
    assert [r["id"] for r in store.rows("dataset", dataset)] == ["r"]  # rows stay stored
    clock.now += 60
    store.delete_object("dataset", dataset)  # again: nothing changes
    assert (store.get_object("dataset", dataset) or {})["deleted_at"] == "2026-11-18T11:06:40.000Z"
    store.delete_object("project", project_id)
    assert store.is_deleted("experiment", experiment)
    assert store.objects("experiment") == []
    assert [p["id"] for p in store.objects("project")] == [other]
    assert (store.get_object("experiment", experiment) or {})["deleted_at"] is None
    with pytest.raises(KeyError):
        store.delete_object("experiment", "nope")


def test_a_new_row_field_is_taken_once_added_to_this_store(
    store: Store, project_id: str, clock: Clock
) -> None:
    with pytest.raises(ValueError, match="unknown fields"):
        store.insert_rows("project_logs", project_id, [{"id": "a", "sentiment": 1}])
    store.add_row_field("project_logs", "sentiment")
    store.add_row_field("project_logs", "sentiment")  # again: a no-op
    store.insert_rows("project_logs", project_id, [{"id": "a", "sentiment": {"v": 1}}, {"id": "b"}])
    store.merge_rows("project_logs", project_id, [{"id": "b", "sentiment": 2}])
    rows = by_id(store, project_id)
    assert list(rows["a"]) == [*ROW_FIELDS["project_logs"], "sentiment"]
    assert rows["a"]["sentiment"] == {"v": 1}
    assert rows["b"]["sentiment"] == 2
    store.insert_rows("project_logs", project_id, [{"id": "c"}])
    assert "sentiment" not in by_id(store, project_id)["c"]
    assert store.row_fields("project_logs")[-1] == "sentiment"
    assert "sentiment" not in ROW_FIELDS["project_logs"]  # no module-wide change
    other = Store(clock)
    other.add_org("acme")
    other_project = other.add_project("p")["id"]
    with pytest.raises(ValueError, match="unknown fields"):
        other.insert_rows("project_logs", other_project, [{"sentiment": 1}])
    with pytest.raises(ValueError, match="cannot be a client-written"):
        store.add_row_field("dataset", "_xact_id")


def test_a_delete_can_become_visible_late(store: Store, project_id: str) -> None:
    store.insert_rows("project_logs", project_id, [{"id": "a"}, {"id": "b"}])
    late = store.delete_rows("project_logs", project_id, ["a"], visible=False)
    assert set(by_id(store, project_id)) == {"a", "b"}
    assert int(store.freshness()[0]) < int(late)
    store.publish(late)
    assert set(by_id(store, project_id)) == {"b"}
