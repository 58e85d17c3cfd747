"""The strict emulator's dialect: what it refuses, what it takes, and the 2025 reference mode."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import pytest

from tests.emulator import dialect, running_emulator
from tests.emulator.conftest import FIXED_NOW, Api

if TYPE_CHECKING:
    from collections.abc import Iterator

    from tests.emulator import Emulator

X = "1000198235029372928"


def _ident(name: str) -> dict[str, Any]:
    return {"op": "ident", "name": [name]}


def _cmp(op: str, field: str, value: Any) -> dict[str, Any]:
    return {"op": op, "left": _ident(field), "right": {"op": "literal", "value": value}}


def _query(**parts: Any) -> dict[str, Any]:
    return {
        "select": [{"op": "star"}],
        "from": {
            "op": "function",
            "name": _ident("project_logs"),
            "args": [{"op": "literal", "value": "p"}],
        },
        **parts,
    }


def _names(query: Any, **body: Any) -> set[str]:
    return set(dialect.constructs({"query": query, "fmt": "json", **body}))


def test_every_construct_taken_names_its_evidence() -> None:
    for name, construct in dialect.EVIDENCED.items():
        assert construct.citation.strip(), name
        assert construct.evidence in {"RECORDED", "OFFICIAL-CLIENT", "DOCUMENTED"} or (
            construct.evidence == "CONTESTED+FALLBACK"
        )


@pytest.mark.parametrize(
    ("query", "refused"),
    [
        (_query(filter=_cmp("gt", "_xact_id", "0")), "_xact_id compared with '0'"),
        (_query(filter=_cmp("gt", "_xact_id", 5)), "comparison of _xact_id with a non-string"),
        (_query(filter=_cmp("eq", "experiment_id", "e")), "object id column experiment_id"),
        (
            _query(
                filter={
                    "op": "in",
                    "left": _ident("root_span_id"),
                    "right": {"op": "literal", "value": [str(n) for n in range(101)]},
                }
            ),
            "in with an array literal of 101 values",
        ),
        (
            _query(
                filter={
                    "op": "or",
                    "left": {
                        "op": "or",
                        "left": _cmp("eq", "id", "a"),
                        "right": _cmp("eq", "id", "b"),
                    },
                    "right": _cmp("eq", "id", "c"),
                }
            ),
            "or nested in or (a tree of ors)",
        ),
        (
            _query(
                filter={"op": "and", "left": _cmp("gt", "_xact_id", X), "right": {"btql": "a = 1"}}
            ),
            "btql text under and",
        ),
        (
            _query(sort=[{"expr": _ident("_xact_id"), "dir": "asc"}], cursor="c"),
            "AST cursor with a sort",
        ),
        (_query(limit=1001), "AST limit 1001"),
        ("SELECT * FROM project_logs('p') -- note OFFSET 'c'", "OFFSET inline"),
        ("SELECT * FROM project_logs('p') OFFSET 'c'", "OFFSET inline"),
    ],
)
def test_constructs_without_evidence_are_refused(query: Any, refused: str) -> None:
    assert any(refused in name for name in _names(query)), _names(query)
    with pytest.raises(dialect.NotEvidenced, match="not in the evidenced dialect"):
        dialect.check({"query": query, "fmt": "json"})


def test_the_forms_official_clients_send_are_taken() -> None:
    keyset = {
        "op": "and",
        "children": [
            _cmp("ge", "_xact_id", X),
            {
                "op": "or",
                "children": [_cmp("gt", "_xact_id", X), _cmp("gt", "_pagination_key", "p1")],
            },
            {"btql": "tags INCLUDES 'x' OR id = 'y'"},
        ],
    }
    for query in [
        _query(
            filter=keyset,
            sort=[
                {"expr": _ident("_xact_id"), "dir": "asc"},
                {"expr": _ident("_pagination_key"), "dir": "asc"},
            ],
            limit=5,
        ),
        _query(filter={"btql": "anything at all"}, cursor="c", limit=1000),
        _query(
            filter={
                "op": "in",
                "left": _ident("root_span_id"),
                "right": {"op": "literal", "value": ["a", "b"]},
            },
            cursor=None,
        ),
        "SELECT * FROM project_logs('p') -- note\nOFFSET 'c'",
    ]:
        dialect.check({"query": query, "fmt": "json", "brainstore_realtime": True})


@pytest.fixture
def api_2025() -> Iterator[Api]:
    with running_emulator(
        strict=False, demo_seed=7, clock=lambda: FIXED_NOW, sorted_cursor=False
    ) as emu:
        api = Api(emu)
        yield api
        api.close()


def _first_project(emu: Emulator) -> str:
    return str(emu.store.objects("project")[0]["id"])


def test_the_2025_reference_gives_no_cursor_on_a_sorted_query(api_2025: Api) -> None:
    project = _first_project(api_2025.emu)
    sort = [{"expr": _ident("_xact_id"), "dir": "asc"}]
    query = _query(sort=sort, limit=10)
    query["from"]["args"] = [{"op": "literal", "value": project}]
    page = api_2025.btql(query).json()
    assert len(page["data"]) == 10
    assert "cursor" not in page
    refused = api_2025.btql({**query, "cursor": "anything"})
    assert refused.status_code == 400
    assert "only be used for pagination when no sort" in refused.json()["Message"]
    unsorted = api_2025.btql({**query, "sort": None}).json()
    assert unsorted["cursor"]  # the cursor the 2025 reference documents


def _in(field: str, count: int = 2) -> dict[str, Any]:
    values = [str(n) for n in range(count)]
    return {"op": "in", "left": _ident(field), "right": {"op": "literal", "value": values}}


def _with_ids(count: int, **parts: Any) -> dict[str, Any]:
    query = _query(**parts)
    query["from"]["name"] = _ident("dataset")
    query["from"]["args"] = [{"op": "literal", "value": f"d{n}"} for n in range(count)]
    return query


def test_a_version_is_taken_on_one_object_only() -> None:
    one = {"query": _with_ids(1), "fmt": "json", "version": X}
    assert "version on one object" in set(dialect.constructs(one))
    dialect.check(one)
    two = {**one, "query": _with_ids(2)}
    assert "version on 2 objects" in set(dialect.constructs(two))
    with pytest.raises(dialect.NotEvidenced, match="version on 2 objects"):
        dialect.check(two)
    dialect.check({**one, "query": _with_ids(2), "version": None})
    dialect.check_version(1)
    with pytest.raises(dialect.NotEvidenced, match="version on 3 objects"):
        dialect.check_version(3)  # SQL text: the server checks once it has parsed the source


def test_in_is_taken_on_id_and_root_span_id_only() -> None:
    for field in ("id", "root_span_id"):
        dialect.check({"query": _query(filter=_in(field, 100)), "fmt": "json"})
    assert "in on tags with an array literal of 1..100 strings" in _names(
        _query(filter=_in("tags"))
    )
    with pytest.raises(dialect.NotEvidenced, match="in on tags"):
        dialect.check({"query": _query(filter=_in("tags")), "fmt": "json"})


def test_the_tap_s_count_and_version_queries_have_their_evidence() -> None:
    assert "R1" in dialect.EVIDENCED["version on one object"].citation
    assert "R3" in dialect.EVIDENCED["SQL count grouped by the object id"].citation
    assert dialect.EVIDENCED["SQL count grouped by the object id"].evidence == "DOCUMENTED"
