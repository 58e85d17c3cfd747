"""Reads pinned to a `version` (R1): counts, key-range scans and id lists as of an `_xact_id`.

The bodies are the ones a client detecting deletes sends, checked by a strict emulator.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import pytest

from tests.emulator import running_emulator
from tests.emulator.conftest import FIXED_NOW, Api
from tests.emulator.store import last_pagination_key

if TYPE_CHECKING:
    from collections.abc import Iterator

    from tests.emulator import Emulator

SINCE = "2026-01-01T00:00:00Z"


def _ident(name: str) -> dict[str, Any]:
    return {"op": "ident", "name": [name]}


def _cmp(op: str, field: str, value: Any) -> dict[str, Any]:
    return {"op": op, "left": _ident(field), "right": {"op": "literal", "value": value}}


def _scan(
    source: str, object_id: str, *conditions: dict[str, Any], limit: int = 1000
) -> dict[str, Any]:
    """`id` and `_pagination_key` of one object's rows, in key order."""
    return {
        "select": [{"expr": _ident(name), "alias": name} for name in ("id", "_pagination_key")],
        "from": {
            "op": "function",
            "name": _ident(source),
            "args": [{"op": "literal", "value": object_id}],
        },
        "filter": {"op": "and", "children": list(conditions)},
        "limit": limit,
        "sort": [{"expr": _ident("_pagination_key"), "dir": "asc"}],
    }


class World:
    """Two datasets and two experiments; `d1` and `e1` lose rows after `version`."""

    def __init__(self, emu: Emulator) -> None:
        store = emu.store
        project = store.add_project("p")["id"]
        self.d1 = store.add_dataset(project, "d1")["id"]
        self.d2 = store.add_dataset(project, "d2")["id"]
        self.d3 = store.add_dataset(project, "d3")["id"]  # no rows
        self.e1 = store.add_experiment(project, "e1")["id"]
        self.e2 = store.add_experiment(project, "e2")["id"]
        old = {"created": "2025-06-01T00:00:00Z"}
        self.first = store.insert_rows(
            "dataset",
            self.d1,
            [{"id": f"a{n}", "input": n} for n in range(5)] + [{"id": "o", **old}],
        )
        self.version = store.insert_rows("dataset", self.d1, [{"id": f"b{n}"} for n in range(3)])
        store.insert_rows("dataset", self.d2, [{"id": "c0"}, {"id": "c1"}])
        store.insert_rows("experiment", self.e1, [{"id": f"x{n}"} for n in range(4)])
        self.e_version = store.insert_rows("experiment", self.e2, [{"id": "y0"}])
        store.delete_rows("dataset", self.d1, ["a1", "b2"])
        store.delete_rows("experiment", self.e1, ["x0"])
        store.insert_rows("dataset", self.d1, [{"id": "later"}])
        self.bound = last_pagination_key(self.version)


@pytest.fixture(scope="module")
def served() -> Iterator[tuple[Api, World]]:
    with running_emulator(clock=lambda: FIXED_NOW) as emu:  # strict: the evidenced dialect
        world = World(emu)
        api = Api(emu)
        yield api, world
        api.close()


def test_a_count_at_a_version_counts_the_rows_then_deleted_ones_included(
    served: tuple[Api, World],
) -> None:
    api, world = served
    above = "p00000000000000000000"
    query = (
        f"SELECT count(1) AS rows FROM dataset('{world.d1}') "  # noqa: S608
        f"WHERE _pagination_key > '{above}' AND _pagination_key <= '{world.bound}' "
        f"AND created >= '{SINCE}'"
    )
    assert api.data(query, version=world.version) == [{"rows": 8}]  # 5 + 3, not the old one
    assert api.data(query, version=world.first) == [{"rows": 5}]
    assert api.data(query) == [{"rows": 6}]  # today: two deleted, `later` above the bound


def test_a_count_grouped_by_object_has_a_row_per_object_with_rows(
    served: tuple[Api, World],
) -> None:
    api, world = served
    datasets = (
        f"SELECT dataset_id AS object_id, count(1) AS rows "  # noqa: S608
        f"FROM dataset('{world.d1}', '{world.d2}', '{world.d3}') "
        f"WHERE _pagination_key <= '{world.bound}' GROUP BY 1"
    )
    assert {r["object_id"]: r["rows"] for r in api.data(datasets)} == {world.d1: 7}
    everything = datasets.replace(world.bound, "p" + "9" * 20)
    assert {r["object_id"]: r["rows"] for r in api.data(everything)} == {world.d1: 8, world.d2: 2}
    experiments = (
        f"SELECT experiment_id AS object_id, count(1) AS row_count "  # noqa: S608
        f"FROM experiment('{world.e1}', '{world.e2}') GROUP BY 1"
    )
    assert {r["object_id"]: r["row_count"] for r in api.data(experiments)} == {
        world.e1: 3,
        world.e2: 1,
    }
    one = experiments.replace(f", '{world.e2}'", "")
    assert api.data(one, version=world.e_version) == [{"object_id": world.e1, "row_count": 4}]


def test_a_key_range_scan_at_a_version_returns_the_rows_then(served: tuple[Api, World]) -> None:
    api, world = served
    first_key = api.data(_scan("dataset", world.d1, _cmp("le", "_pagination_key", world.bound)))
    low = first_key[0]["_pagination_key"]
    query = _scan(
        "dataset",
        world.d1,
        _cmp("gt", "_pagination_key", low),
        _cmp("le", "_pagination_key", world.bound),
        limit=3,
    )
    pages: list[list[dict[str, Any]]] = []
    while not pages or pages[-1]:  # keyset paging, as a client without the cursor pages
        after = pages[-1][-1]["_pagination_key"] if pages else low
        query["filter"]["children"][0] = _cmp("gt", "_pagination_key", after)
        pages.append(api.data(query, version=world.version))
    rows = [row for page in pages for row in page]
    assert [row["id"] for row in rows] == ["a1", "a2", "a3", "a4", "o", "b0", "b1", "b2"]
    assert all(set(row) == {"id", "_pagination_key"} for row in rows)
    keys = [row["_pagination_key"] for row in rows]
    assert keys == sorted(keys)
    now = api.data({**query, "filter": {"op": "and", "children": query["filter"]["children"][1:]}})
    assert [row["id"] for row in now] == ["a0", "a2", "a3"]  # unpinned: deleted rows gone


def test_an_id_list_at_a_version_reads_deleted_rows(served: tuple[Api, World]) -> None:
    api, world = served
    wanted = ["a1", "b2", "a0", *(f"missing{n}" for n in range(97))]
    query = _scan(
        "dataset",
        world.d1,
        _cmp("le", "_pagination_key", world.bound),
        {"op": "in", "left": _ident("id"), "right": {"op": "literal", "value": wanted}},
    )
    query["select"] = [{"op": "star"}]
    rows = api.data(query, version=world.version)
    assert [(row["id"], row["input"]) for row in rows] == [("a0", 0), ("a1", 1), ("b2", None)]
    assert [row["id"] for row in api.data(query)] == ["a0"]
    too_many = {
        **query,
        "filter": {
            "op": "in",
            "left": _ident("id"),
            "right": {"op": "literal", "value": [*wanted, "one-more"]},
        },
    }
    assert api.btql(too_many, version=world.version).status_code == 400


def test_a_version_on_several_objects_is_refused_in_the_strict_dialect(
    served: tuple[Api, World],
) -> None:
    api, world = served
    ast = _scan("dataset", world.d1, _cmp("le", "_pagination_key", world.bound))
    ast["from"]["args"].append({"op": "literal", "value": world.d2})
    sql = f"SELECT * FROM dataset('{world.d1}', '{world.d2}')"  # noqa: S608
    for query in (ast, sql):
        refused = api.btql(query, version=world.version)
        assert refused.status_code == 400
        assert "version on 2 objects" in refused.json()["Message"]
        assert api.btql(query).status_code == 200
    with running_emulator(strict=False, clock=lambda: FIXED_NOW) as lenient:
        other = World(lenient)
        client = Api(lenient)
        try:
            query = f"SELECT * FROM dataset('{other.d1}', '{other.d2}')"  # noqa: S608
            assert len(client.data(query, version=other.version)) == 9  # d2: none yet
        finally:
            client.close()


def test_without_pinned_counts_a_versioned_aggregate_is_refused() -> None:
    with running_emulator(clock=lambda: FIXED_NOW, pinned_counts=False) as emu:
        world = World(emu)
        api = Api(emu)
        try:
            count = f"SELECT count(1) AS rows FROM dataset('{world.d1}')"  # noqa: S608
            grouped = (
                f"SELECT dataset_id AS object_id, count(1) AS rows "  # noqa: S608
                f"FROM dataset('{world.d1}') GROUP BY 1"
            )
            for query in (count, grouped):
                refused = api.btql(query, version=world.version)
                assert refused.status_code == 400
                assert refused.json()["Message"] == "version is not supported for aggregate queries"
                assert api.data(query)[0]["rows"] == 8
            scan = _scan("dataset", world.d1, _cmp("le", "_pagination_key", world.bound))
            assert len(api.data(scan, version=world.version)) == 9
        finally:
            api.close()
