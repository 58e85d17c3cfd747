"""The official `braintrust` SDK (0.47.0) reads from the emulator exactly what the emulator holds.

The SDK was written against the real service, so its code paths are the emulator's proof of
fidelity: login and org discovery, `/v1` reads, the `/btql` JSON AST with its cursor loop (pages
cut short by the byte budget included), and the `/v1/<object>/<id>/fetch` pages that 0.47.0 uses
for experiments and for datasets without a BTQL filter.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import braintrust
import pytest
from braintrust.logger import BraintrustState

from tests.emulator import Emulator, running_emulator

if TYPE_CHECKING:
    from collections.abc import Iterator
    from pathlib import Path

DATASET_FIELDS = ("id", "_xact_id", "created", "input", "expected", "metadata", "tags")
EXPERIMENT_FIELDS = (
    *DATASET_FIELDS,
    "span_id",
    "root_span_id",
    "span_parents",
    "output",
    "error",
    "scores",
    "metrics",
    "span_attributes",
)


@pytest.fixture
def emulator(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Iterator[Emulator]:
    """The demo data behind a 20 KB page budget, with the SDK kept off the network and disk."""
    for name in (
        "BRAINTRUST_API_KEY",
        "BRAINTRUST_API_URL",
        "BRAINTRUST_APP_URL",
        "BRAINTRUST_ORG_NAME",
    ):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.delenv("BRAINTRUST_PROXY_URL", raising=False)
    monkeypatch.setenv("BRAINTRUST_DISABLE_ATEXIT_FLUSH", "1")  # no atexit hook left behind
    monkeypatch.setenv("HOME", str(tmp_path))  # the SDK's prompt caches live under HOME
    with running_emulator(demo_seed=7, page_byte_budget=20_000) as emu:
        yield emu


@pytest.fixture
def state() -> Iterator[BraintrustState]:
    """A private SDK state whose HTTP sessions are closed after the test (no unclosed sockets)."""
    sdk_state = BraintrustState()  # type: ignore[no-untyped-call]  # the SDK leaves it untyped
    yield sdk_state
    for resource in (
        sdk_state._client,
        sdk_state._api_conn,
        sdk_state._app_conn,
        sdk_state._proxy_conn,
    ):
        if resource is not None:
            resource.close()


def truth(
    emulator: Emulator, source: str, object_id: str, fields: tuple[str, ...], **kwargs: Any
) -> dict[str, Any]:
    rows = emulator.store.rows(source, object_id, **kwargs)  # type: ignore[arg-type]
    return {row["id"]: {name: row[name] for name in fields} for row in rows}


def seen(records: list[Any], fields: tuple[str, ...]) -> dict[str, Any]:
    by_id = {record["id"]: {name: record[name] for name in fields} for record in records}
    assert len(by_id) == len(records), "the SDK got a row twice"
    return by_id


def big_dataset(emulator: Emulator) -> dict[str, Any]:
    """The dataset holding a 260 KB record, so the byte budget cuts its pages short."""
    assert emulator.demo is not None
    large = set(emulator.demo.large_row_ids)
    return next(
        d
        for d in emulator.demo.datasets
        if large & {r["id"] for r in emulator.store.rows("dataset", d["id"])}
    )


def test_dataset_through_btql_cursor_loop(emulator: Emulator, state: BraintrustState) -> None:
    dataset = big_dataset(emulator)
    sdk_dataset = braintrust.init_dataset(
        dataset_id=dataset["id"],
        app_url=emulator.url,
        api_key=emulator.api_key,
        state=state,
        _internal_btql={"select": [{"op": "star"}]},  # an explicit BTQL makes 0.47.0 read via /btql
    )
    records = list(sdk_dataset.fetch(batch_size=7))
    assert seen(records, DATASET_FIELDS) == truth(
        emulator, "dataset", dataset["id"], DATASET_FIELDS
    )
    assert sdk_dataset.name == dataset["name"]
    assert sdk_dataset.version == max(r["_xact_id"] for r in records)

    calls = [(entry.method, entry.path) for entry in emulator.request_log]
    assert calls[:3] == [
        ("POST", "/api/apikey/login"),
        ("GET", f"/v1/dataset/{dataset['id']}"),
        ("GET", f"/v1/project/{dataset['project_id']}"),
    ]
    btql = [entry for entry in emulator.request_log if entry.path == "/btql"]
    full_pages = -(-len(records) // 7)
    assert len(btql) > full_pages + 1  # beyond the pages of 7 and the final empty one: cut by bytes
    assert "gzip" in btql[0].headers["accept-encoding"]
    assert btql[0].json_body["query"]["cursor"] is None
    assert all(entry.json_body["query"]["cursor"] for entry in btql[1:])
    assert all(entry.status == 200 for entry in emulator.request_log)


def test_dataset_through_fetch_pages_and_version(
    emulator: Emulator, state: BraintrustState
) -> None:
    dataset = big_dataset(emulator)
    login: dict[str, Any] = {"app_url": emulator.url, "api_key": emulator.api_key, "state": state}
    records = list(braintrust.init_dataset(dataset_id=dataset["id"], **login).fetch(batch_size=5))
    assert seen(records, DATASET_FIELDS) == truth(
        emulator, "dataset", dataset["id"], DATASET_FIELDS
    )
    fetches = [e for e in emulator.request_log if e.path == f"/v1/dataset/{dataset['id']}/fetch"]
    assert len(fetches) > 1

    first_write = min(int(r["_xact_id"]) for r in records)
    pinned = braintrust.init_dataset(dataset_id=dataset["id"], version=first_write, **login)
    old = list(pinned.fetch(batch_size=5))
    expected = truth(emulator, "dataset", dataset["id"], DATASET_FIELDS, as_of=first_write)
    assert seen(old, DATASET_FIELDS) == expected
    assert 0 < len(old) < len(records)


def test_readonly_experiment(emulator: Emulator, state: BraintrustState) -> None:
    assert emulator.demo is not None
    experiment = emulator.demo.experiments[0]
    sdk_experiment = braintrust.init(
        project_id=experiment["project_id"],
        experiment=experiment["name"],
        open=True,
        app_url=emulator.url,
        api_key=emulator.api_key,
        set_current=False,
        state=state,
    )
    records = list(sdk_experiment.fetch(batch_size=3))
    assert sdk_experiment.id == experiment["id"]
    assert seen(records, EXPERIMENT_FIELDS) == truth(
        emulator, "experiment", experiment["id"], EXPERIMENT_FIELDS
    )
    listing = next(e for e in emulator.request_log if e.path == "/v1/experiment")
    assert listing.query == {
        "experiment_name": [experiment["name"]],
        "project_id": [experiment["project_id"]],
        "org_name": ["acme"],
    }
    fetches = [e for e in emulator.request_log if e.path.endswith("/fetch")]
    assert len(fetches) > 2
