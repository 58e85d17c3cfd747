"""Deleted projects, experiments and datasets: hidden like lost access, rows kept (contract 4)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import pytest

from tests.emulator import Emulator, FaultRule, running_emulator
from tests.emulator.conftest import FIXED_NOW, Api, sql

if TYPE_CHECKING:
    from collections.abc import Iterator

    from tests.emulator.server import DeletedSources


def _fill(emu: Emulator) -> dict[str, str]:
    """Two projects; the first with two experiments and a dataset; rows in each."""
    store = emu.store
    project = store.add_project("p")["id"]
    other = store.add_project("other")["id"]
    ids = {
        "project": project,
        "other": other,
        "e1": store.add_experiment(project, "e1")["id"],
        "e2": store.add_experiment(project, "e2")["id"],
        "d": store.add_dataset(project, "d")["id"],
    }
    store.insert_rows("project_logs", project, [{"id": "log"}])
    store.insert_rows("experiment", ids["e1"], [{"id": "e1-a"}, {"id": "e1-b"}])
    store.insert_rows("experiment", ids["e2"], [{"id": "e2-a"}])
    store.insert_rows("dataset", ids["d"], [{"id": "d-a"}])
    return ids


@pytest.fixture
def world(emu: Emulator) -> dict[str, str]:
    return _fill(emu)


def _listed(api: Api, kind: str) -> set[str]:
    response = api.get(f"/v1/{kind}")
    assert response.status_code == 200, response.text
    return {o["id"] for o in response.json()["objects"]}


def test_a_deleted_experiment_leaves_listings_and_reads_are_403(
    emu: Emulator, api: Api, world: dict[str, str]
) -> None:
    emu.store.delete_object("experiment", world["e1"])
    assert _listed(api, "experiment") == {world["e2"]}
    assert {o["id"] for o in api.get("/v1/experiment", ids=world["e1"]).json()["objects"]} == set()
    response = api.get(f"/v1/experiment/{world['e1']}")
    assert response.status_code == 403
    assert response.json() == {
        "Message": f"ForbiddenError: Missing read access to experiment {world['e1']!r}"
    }
    fetch = api.get(f"/v1/experiment/{world['e1']}/fetch")
    assert fetch.status_code == 403
    assert api.get(f"/v1/experiment/{world['e2']}").status_code == 200
    assert [r["id"] for r in emu.store.rows("experiment", world["e1"])] == ["e1-b", "e1-a"]


def test_a_deleted_object_answers_as_one_of_another_org(
    emu: Emulator, api: Api, world: dict[str, str]
) -> None:
    emu.store.add_org("globex")
    foreign = emu.store.add_project("foreign", org_name="globex")["id"]
    emu.store.delete_object("project", world["project"])
    deleted = api.get(f"/v1/project/{world['project']}")
    lost = api.get(f"/v1/project/{foreign}")
    assert deleted.status_code == lost.status_code == 403
    assert deleted.json()["Message"] == lost.json()["Message"].replace(foreign, world["project"])


def test_a_deleted_project_hides_its_experiments_datasets_and_logs(
    emu: Emulator, api: Api, world: dict[str, str]
) -> None:
    emu.store.delete_object("project", world["project"])
    assert _listed(api, "project") == {world["other"]}
    assert _listed(api, "experiment") == set()
    assert _listed(api, "dataset") == set()
    for kind, name in [("experiment", "e2"), ("dataset", "d"), ("project", "project")]:
        assert api.get(f"/v1/{kind}/{world[name]}").status_code == 403
    assert api.get("/v1/experiment", project_id=world["project"]).status_code == 403
    for source, name in [("project_logs", "project"), ("experiment", "e2"), ("dataset", "d")]:
        response = api.btql(sql(source, world[name]))
        assert response.status_code == 403
        assert "ForbiddenError" in response.json()["Message"]


@pytest.fixture(params=["forbidden", "refused", "missing"])
def mode(request: pytest.FixtureRequest) -> Iterator[tuple[Emulator, Api, dict[str, str]]]:
    deleted_sources: DeletedSources = request.param
    with running_emulator(clock=lambda: FIXED_NOW, deleted_sources=deleted_sources) as emu:
        world = _fill(emu)
        emu.store.delete_object("experiment", world["e1"])
        api = Api(emu)
        yield emu, api, world
        api.close()


def _source(*ids: str) -> str:
    return ", ".join(f"'{object_id}'" for object_id in ids)


def test_a_query_naming_a_deleted_object_answers_as_deleted_sources_says(
    mode: tuple[Emulator, Api, dict[str, str]],
) -> None:
    emu, api, world = mode
    both = f"SELECT * FROM experiment({_source(world['e1'], world['e2'])})"  # noqa: S608
    count = (
        f"SELECT experiment_id AS object_id, count(1) AS rows "  # noqa: S608
        f"FROM experiment({_source(world['e1'], world['e2'])}) GROUP BY 1"
    )
    alone = f"SELECT count(1) AS rows FROM experiment({_source(world['e1'])})"  # noqa: S608
    answers = [api.btql(query) for query in (both, count, alone)]
    if emu.deleted_sources == "forbidden":
        assert [a.status_code for a in answers] == [403, 403, 403]
        assert "Missing read access" in answers[0].json()["Message"]
    elif emu.deleted_sources == "refused":
        assert [a.status_code for a in answers] == [400, 400, 400]
        assert world["e1"] in answers[0].json()["Message"]
        assert "deleted" in answers[0].json()["Message"]
    else:
        assert [a.status_code for a in answers] == [200, 200, 200]
        assert [r["id"] for r in answers[0].json()["data"]] == ["e2-a"]
        assert answers[1].json()["data"] == [{"object_id": world["e2"], "rows": 1}]
        assert answers[2].json()["data"] == [{"rows": 0}]
    assert api.btql(sql("experiment", world["e2"])).status_code == 200


def test_an_unknown_deleted_sources_mode_is_refused() -> None:
    with pytest.raises(ValueError, match="deleted_sources"):
        Emulator(deleted_sources="hidden")  # type: ignore[arg-type]


def test_a_delete_rule_deletes_an_object_between_two_requests(
    emu: Emulator, api: Api, world: dict[str, str]
) -> None:
    rule = emu.faults.add(
        FaultRule("delete", path="/btql", skip=1, delete=("experiment", world["e1"]))
    )
    query = sql("experiment", world["e1"])
    statuses = [api.btql(query).status_code for _ in range(3)]
    assert statuses == [200, 403, 403]  # the request the rule fires on already sees it deleted
    assert emu.faults.fired(rule) == 1
    assert [entry.fault for entry in emu.request_log] == [None, "delete", None]
    assert emu.store.is_deleted("experiment", world["e1"])


def test_a_delete_rule_can_come_with_a_fault(
    emu: Emulator, api: Api, world: dict[str, str]
) -> None:
    emu.faults.add(
        FaultRule("status", path="/v1/dataset", status=503, times=1, delete=("dataset", world["d"]))
    )
    assert api.get("/v1/dataset").status_code == 503
    assert _listed(api, "dataset") == set()


@pytest.mark.parametrize(
    ("rule", "message"),
    [
        ({"kind": "delete"}, "needs delete="),
        ({"kind": "delete", "delete": ("org", "x")}, "delete must be"),
    ],
)
def test_delete_rules_that_cannot_work_are_refused(rule: dict[str, Any], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        FaultRule(**rule)
