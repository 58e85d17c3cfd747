"""Fixtures for the emulator's own tests: started emulators and a small HTTP client for them."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import pytest
import requests

from tests.emulator import Emulator, running_emulator

if TYPE_CHECKING:
    from collections.abc import Iterator

FIXED_NOW = (
    1_795_000_000.0  # 2026-11-18T11:06:40Z: a fixed clock makes xacts and created repeatable
)


class Api:
    """A `requests` session speaking to one emulator with a key; closes its sockets after."""

    def __init__(self, emulator: Emulator, api_key: str | None = None) -> None:
        self.emu = emulator
        self.session = requests.Session()
        self.session.headers["Authorization"] = f"Bearer {api_key or emulator.api_key}"

    def get(self, path: str, **params: Any) -> requests.Response:
        return self.session.get(self.emu.url + path, params=params)

    def btql(self, query: Any, **body: Any) -> requests.Response:
        return self.session.post(
            self.emu.url + "/btql", json={"query": query, "fmt": "json", **body}
        )

    def data(self, query: Any, **body: Any) -> list[dict[str, Any]]:
        response = self.btql(query, **body)
        assert response.status_code == 200, response.text
        return list(response.json()["data"])

    def pages(self, query_for: Any, **body: Any) -> list[dict[str, Any]]:
        """Follow cursors from the first page to the empty one; return every page's JSON."""
        pages: list[dict[str, Any]] = []
        cursor = None
        seen: set[str] = set()
        for _ in range(10_000):
            response = self.btql(query_for(cursor), **body)
            assert response.status_code == 200, response.text
            page = response.json()
            pages.append(page)
            if not page["data"]:
                assert "cursor" not in page
                return pages
            cursor = page["cursor"]
            assert cursor not in seen, "repeated cursor"
            seen.add(cursor)
        pytest.fail("paging did not end")

    def close(self) -> None:
        self.session.close()


_SQL_CLAUSES = (
    ("where", "WHERE {}"),
    ("order", "ORDER BY {}"),
    ("limit", "LIMIT {}"),
    ("cursor", "OFFSET '{}'"),
)


def sql(source: str, object_id: str, **clauses: str | int | None) -> str:
    """A SQL query in the contract's form; clauses: where, order, limit, cursor (None: absent)."""
    assert set(clauses) <= {name for name, _ in _SQL_CLAUSES}, clauses
    text = f"SELECT * FROM {source}('{object_id}')"  # noqa: S608 - test queries, not a database
    for name, template in _SQL_CLAUSES:
        if clauses.get(name) is not None:
            text += " " + template.format(clauses[name])
    return text


def ast(
    source: str, object_id: str, sort: list[tuple[str, str]] | None = None, **query: Any
) -> dict[str, Any]:
    """A JSON AST query as the official SDKs build it; `query` adds keys (limit, cursor, filter)."""
    built: dict[str, Any] = {
        "select": [{"op": "star"}],
        "from": {
            "op": "function",
            "name": {"op": "ident", "name": [source]},
            "args": [{"op": "literal", "value": object_id}],
        },
        **query,
    }
    if sort:
        built["sort"] = [{"expr": {"op": "ident", "name": [f]}, "dir": d} for f, d in sort]
    return built


@pytest.fixture
def emu() -> Iterator[Emulator]:
    """An empty emulator (one org, one key) with a fixed clock."""
    with running_emulator(strict=False, clock=lambda: FIXED_NOW) as emulator:
        yield emulator


@pytest.fixture
def api(emu: Emulator) -> Iterator[Api]:
    client = Api(emu)
    yield client
    client.close()


@pytest.fixture(scope="module")
def demo_emu() -> Iterator[Emulator]:
    """The demo data set, shared by a module's read-only tests."""
    with running_emulator(strict=False, demo_seed=7, clock=lambda: FIXED_NOW) as emulator:
        yield emulator


@pytest.fixture
def demo_api(demo_emu: Emulator) -> Iterator[Api]:
    client = Api(demo_emu)
    yield client
    client.close()
