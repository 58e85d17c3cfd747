"""HTTP contract of the emulator outside /btql paging: auth, login, listings, reads, encodings."""

from __future__ import annotations

import gzip
import http.client
import json
from typing import Literal

import pytest
import requests

from tests.emulator import Emulator, running_emulator
from tests.emulator.conftest import Api, sql


@pytest.fixture
def two_orgs(emu: Emulator) -> Emulator:
    """acme (the default key) and globex; one key in both orgs."""
    emu.add_api_key("sk-globex", ["globex"])
    emu.add_api_key("sk-both", ["acme", "globex"])
    emu.store.add_project("acme-project")
    emu.store.add_project("globex-project", org_name="globex")
    return emu


# Auth -----------------------------------------------------------------------------------------


@pytest.mark.parametrize("header", [None, "sk-test-key", "Bearer ", "Basic sk-test-key"])
def test_missing_or_malformed_auth_is_401(emu: Emulator, header: str | None) -> None:
    headers = {"Authorization": header} if header else {}
    response = requests.get(emu.url + "/v1/project", headers=headers, timeout=5)
    assert response.status_code == 401
    assert response.json()["Message"]


def test_bad_key_is_401_and_never_echoed(emu: Emulator) -> None:
    secret = "sk-wrong-but-secret-1234567890"  # noqa: S105 - a key that must not be echoed
    for method, path in [("GET", "/v1/project"), ("POST", "/btql"), ("POST", "/api/apikey/login")]:
        response = requests.request(
            method,
            emu.url + path,
            headers={"Authorization": f"Bearer {secret}"},
            json={},
            timeout=5,
        )
        assert response.status_code == 401
        assert "secret" not in response.text
        assert "1234567890" not in response.text


def test_org_the_key_is_not_in_is_403(two_orgs: Emulator) -> None:
    api = Api(two_orgs)
    try:
        assert api.get("/v1/project", org_name="globex").status_code == 403
        response = api.session.get(
            two_orgs.url + "/v1/project", headers={"x-bt-org-name": "globex"}, timeout=5
        )
        assert response.status_code == 403
    finally:
        api.close()


def test_a_key_in_two_orgs_sees_both_unless_it_names_one(two_orgs: Emulator) -> None:
    api = Api(two_orgs, "sk-both")
    try:
        names = {p["name"] for p in api.get("/v1/project").json()["objects"]}
        assert names == {"acme-project", "globex-project"}
        only = api.get("/v1/project", org_name="globex").json()["objects"]
        assert [p["name"] for p in only] == ["globex-project"]
    finally:
        api.close()


def test_objects_of_another_org_are_hidden_and_forbidden(two_orgs: Emulator) -> None:
    globex_project = next(
        p for p in two_orgs.store.objects("project") if p["name"] == "globex-project"
    )
    api = Api(two_orgs)
    try:
        assert [p["name"] for p in api.get("/v1/project").json()["objects"]] == ["acme-project"]
        assert api.get(f"/v1/project/{globex_project['id']}").status_code == 403
        response = api.btql(sql("project_logs", globex_project["id"]))
        assert response.status_code == 403
        assert response.json()["Message"]
    finally:
        api.close()


def test_login_lists_the_key_orgs_with_the_data_plane_url(two_orgs: Emulator) -> None:
    api = Api(two_orgs, "sk-both")
    try:
        response = api.session.post(two_orgs.url + "/api/apikey/login", timeout=5)
        assert response.status_code == 200
        orgs = response.json()["org_info"]
        assert [o["name"] for o in orgs] == ["acme", "globex"]
        assert all(o["api_url"] == two_orgs.url and o["proxy_url"] == two_orgs.url for o in orgs)
        assert {"id", "realtime_url", "git_metadata", "is_universal_api"} <= set(orgs[0])
    finally:
        api.close()


# Routes ---------------------------------------------------------------------------------------


def test_unknown_route_is_404_and_wrong_method_405(api: Api) -> None:
    assert api.get("/v1/nope").status_code == 404
    assert api.get("/btql").status_code == 405
    assert api.session.post(api.emu.url + "/v1/project", json={}).status_code == 405


# Listings -------------------------------------------------------------------------------------


@pytest.fixture
def listed(emu: Emulator) -> list[str]:
    """Seven projects with distinct created times (two share one: tie broken by id desc)."""
    stamps = ["2026-01-0%dT00:00:00.000Z" % day for day in (3, 1, 7, 5, 2, 2, 6)]  # noqa: UP031
    for number, stamp in enumerate(stamps):
        emu.store.add_project(f"p{number}", created=stamp)
    ordered = sorted(
        emu.store.objects("project"), key=lambda p: (p["created"], p["id"]), reverse=True
    )
    return [p["id"] for p in ordered]


def test_listing_is_newest_first(api: Api, listed: list[str]) -> None:
    assert [p["id"] for p in api.get("/v1/project").json()["objects"]] == listed


def test_starting_after_pages_until_an_empty_page(api: Api, listed: list[str]) -> None:
    seen: list[str] = []
    params: dict[str, object] = {"limit": 3}
    while True:
        objects = api.get("/v1/project", **params).json()["objects"]
        if not objects:
            break
        seen += [o["id"] for o in objects]
        params["starting_after"] = objects[-1]["id"]
    assert seen == listed


def test_ending_before_gives_the_page_just_before(api: Api, listed: list[str]) -> None:
    objects = api.get("/v1/project", limit=2, ending_before=listed[4]).json()["objects"]
    assert [o["id"] for o in objects] == listed[2:4]


@pytest.mark.parametrize(
    "params",
    [
        {"starting_after": "x", "ending_before": "y"},
        {"limit": "0"},
        {"limit": "ten"},
        {"starting_after": "no-such-id"},
        {"project_id": "p"},  # not a project listing parameter
        {"page": "2"},
    ],
)
def test_bad_listing_params_are_400(api: Api, listed: list[str], params: dict[str, str]) -> None:
    response = api.get("/v1/project", **params)
    assert response.status_code == 400
    assert response.json()["Message"]


def test_unknown_param_is_named_in_the_400(api: Api) -> None:
    message = api.get("/v1/experiment", include_archived="true").json()["Message"]
    assert "include_archived" in message


def test_listing_filters(api: Api, emu: Emulator) -> None:
    one = emu.store.add_project("one")
    two = emu.store.add_project("two")
    a = emu.store.add_experiment(one["id"], "a")
    emu.store.add_experiment(two["id"], "a")
    b = emu.store.add_experiment(one["id"], "b")
    dataset = emu.store.add_dataset(two["id"], "gold")

    def ids(path: str, **params: object) -> set[str]:
        response = api.get(path, **params)
        assert response.status_code == 200, response.text
        return {o["id"] for o in response.json()["objects"]}

    assert ids("/v1/experiment", project_id=one["id"]) == {a["id"], b["id"]}
    assert ids("/v1/experiment", project_name="one", experiment_name="a") == {a["id"]}
    assert ids("/v1/experiment", ids=[a["id"], b["id"]]) == {a["id"], b["id"]}
    assert ids("/v1/dataset", project_id=two["id"], dataset_name="gold") == {dataset["id"]}
    assert ids("/v1/project", project_name="two") == {two["id"]}
    assert ids("/v1/dataset", project_name="one") == set()


@pytest.mark.parametrize("kind", ["experiment", "dataset"])
def test_listing_without_project_id_pages_through_the_whole_org(
    two_orgs: Emulator, kind: Literal["experiment", "dataset"]
) -> None:
    """One listing for every project of the org: the tap discovers children without N calls."""
    store = two_orgs.store
    projects = [store.add_project(f"p{n}") for n in range(3)]
    other_org = store.add_project("g", org_name="globex")
    add = store.add_experiment if kind == "experiment" else store.add_dataset
    for number in range(7):
        day = (3, 1, 7, 5, 2, 2, 6)[number]
        add(projects[number % 3]["id"], f"o{number}", created=f"2026-01-0{day}T00:00:00.000Z")
    add(other_org["id"], "hidden")
    acme = {p["id"] for p in store.objects("project") if p["org_id"] == two_orgs.default_org["id"]}
    expected = [
        o["id"]
        for o in sorted(store.objects(kind), key=lambda o: (o["created"], o["id"]), reverse=True)
        if o["project_id"] in acme
    ]
    assert len(expected) == 7
    api = Api(two_orgs)
    try:
        seen: list[str] = []
        params: dict[str, object] = {"limit": 3}
        for _ in range(10):
            response = api.get(f"/v1/{kind}", **params)
            assert response.status_code == 200, response.text
            objects = response.json()["objects"]
            if not objects:
                break
            seen += [o["id"] for o in objects]
            params["starting_after"] = objects[-1]["id"]
        assert seen == expected  # every project, newest first, nothing of globex
        assert [o["id"] for o in api.get(f"/v1/{kind}").json()["objects"]] == expected
    finally:
        api.close()


def test_experiments_default_to_1000_but_projects_have_no_default_limit(
    api: Api, emu: Emulator
) -> None:
    project = emu.store.add_project("many")
    for number in range(1003):
        emu.store.add_experiment(project["id"], f"e{number}")
        emu.store.add_project(f"p{number}")
    assert len(api.get("/v1/experiment").json()["objects"]) == 1000
    assert len(api.get("/v1/project").json()["objects"]) == 1004


def test_single_reads(api: Api, emu: Emulator) -> None:
    project = emu.store.add_project("solo", description="Ünïcödé ✓")
    experiment = emu.store.add_experiment(project["id"], "exp", tags=["nightly"])
    dataset = emu.store.add_dataset(project["id"], "ds")
    assert api.get(f"/v1/project/{project['id']}").json() == project
    got = api.get(f"/v1/experiment/{experiment['id']}").json()
    assert got["public"] is False
    assert got["repo_info"] == {}
    assert got["tags"] == ["nightly"]
    assert api.get(f"/v1/dataset/{dataset['id']}").json()["name"] == "ds"
    missing = api.get("/v1/dataset/00000000-0000-4000-8000-000000000000")
    assert missing.status_code == 404
    assert missing.json()["Message"]


# Encodings ------------------------------------------------------------------------------------


def test_gzip_only_when_asked(api: Api, emu: Emulator) -> None:
    project = emu.store.add_project("z")
    emu.store.insert_rows("project_logs", project["id"], [{"output": "x" * 5000}])
    query = {"query": sql("project_logs", project["id"]), "fmt": "json"}
    zipped = api.session.post(
        emu.url + "/btql", json=query, headers={"Accept-Encoding": "gzip"}, stream=True
    )
    assert zipped.headers["Content-Encoding"] == "gzip"
    raw = zipped.raw.read(decode_content=False)
    assert len(raw) < 5000
    assert json.loads(gzip.decompress(raw))["data"][0]["output"] == "x" * 5000
    plain = api.session.post(emu.url + "/btql", json=query, headers={"Accept-Encoding": "identity"})
    assert "Content-Encoding" not in plain.headers
    assert plain.json()["data"][0]["output"] == "x" * 5000


def test_keep_alive_connections_are_reused_and_closed_by_stop() -> None:
    with running_emulator(strict=False) as emulator:
        connection = http.client.HTTPConnection(emulator.url.removeprefix("http://"), timeout=5)
        try:
            sockets = set()
            for _ in range(2):
                connection.request(
                    "GET", "/v1/project", headers={"Authorization": "Bearer sk-test-key"}
                )
                response = connection.getresponse()
                assert (response.status, response.read()) == (200, b'{"objects":[]}')
                sockets.add(connection.sock)
            assert len(sockets) == 1  # one keep-alive connection served both
            emulator.stop()
            assert connection.sock is not None
            assert connection.sock.recv(1) == b""  # the idle connection was closed by stop()
        finally:
            connection.close()


def test_request_log_records_requests(api: Api) -> None:
    api.get("/v1/project", limit=5)
    entry = api.emu.request_log[-1]
    assert (entry.method, entry.path, entry.query, entry.status) == (
        "GET",
        "/v1/project",
        {"limit": ["5"]},
        200,
    )
    assert entry.headers["authorization"] == "Bearer sk-test-key"
