"""Projects, experiments and datasets against the emulator: selection, paging, org, errors."""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any

from tests.conftest import API_KEY, OBJECT_STREAMS, select_only, tap_config

if TYPE_CHECKING:
    from collections.abc import Callable

    from tests.conftest import TapRun
    from tests.emulator import Emulator
    from tests.emulator.store import ObjectKind

LISTINGS = ("/v1/project", "/v1/experiment", "/v1/dataset")


def _listing_requests(emulator: Emulator, path: str) -> list[Any]:
    return [r for r in emulator.request_log if r.path == path]


def test_project_ids_limit_every_stream(emulator: Emulator, run_tap: Callable[..., TapRun]) -> None:
    projects = emulator.store.objects("project")
    chosen = projects[0]
    run = run_tap(tap_config(emulator, project_ids=[chosen["id"]]))
    assert run.returncode == 0, run.stderr
    assert [p["id"] for p in run.records("projects")] == [chosen["id"]]
    for stream in ("experiments", "datasets"):
        kind = OBJECT_STREAMS[stream]
        objects = emulator.store.objects(kind)
        expected = {o["id"] for o in objects if o["project_id"] == chosen["id"]}
        assert expected
        assert {o["id"] for o in run.records(stream)} == expected
    # Other projects' children are never requested.
    for path in ("/v1/experiment", "/v1/dataset"):
        asked = {r.query["project_id"][0] for r in _listing_requests(emulator, path)}
        assert asked == {chosen["id"]}
    project_listings = _listing_requests(emulator, "/v1/project")
    assert project_listings
    assert all(r.query["ids"] == [chosen["id"]] for r in project_listings)


def test_project_names_select_by_exact_name(
    emulator: Emulator, run_tap: Callable[..., TapRun]
) -> None:
    tricky = next(p for p in emulator.store.objects("project") if "'" in p["name"])
    run = run_tap(tap_config(emulator, project_names=[tricky["name"]]))
    assert run.returncode == 0, run.stderr
    assert [p["id"] for p in run.records("projects")] == [tricky["id"]]
    assert {e["project_id"] for e in run.records("experiments")} == {tricky["id"]}


def test_missing_projects_are_named_before_anything_is_emitted(
    emulator: Emulator, run_tap: Callable[..., TapRun]
) -> None:
    real = emulator.store.objects("project")[0]
    run = run_tap(
        tap_config(
            emulator,
            project_ids=[real["id"], "00000000-0000-4000-8000-000000000000"],
            project_names=["No such project"],
        )
    )
    assert run.returncode == 1
    assert "Configured projects not found in Braintrust" in run.stderr
    assert "id '00000000-0000-4000-8000-000000000000'" in run.stderr
    assert "name 'No such project'" in run.stderr
    assert not [m for m in run.messages if m["type"] == "RECORD"]


def test_page_size_one_pages_with_starting_after_until_an_empty_page(
    emulator: Emulator, run_tap: Callable[..., TapRun]
) -> None:
    run = run_tap(tap_config(emulator, page_size=1))
    assert run.returncode == 0, run.stderr
    # Every project is selected, so experiments and datasets are listed org-wide.
    listings: list[tuple[str, str, dict[str, str]]] = [
        ("projects", "/v1/project", {}),
        ("experiments", "/v1/experiment", {}),
        ("datasets", "/v1/dataset", {}),
    ]
    for stream, path, scope in listings:
        requests = [
            r
            for r in _listing_requests(emulator, path)
            if all(r.query.get(key) == [value] for key, value in scope.items())
        ]
        emitted = [
            o["id"]
            for o in run.records(stream)
            if all(o[key] == value for key, value in scope.items())
        ]
        assert emitted, (stream, scope)
        # One request per object, each after the previous page's last id, then the empty page.
        assert all(r.query["limit"] == ["1"] for r in requests)
        cursors = [r.query.get("starting_after", [None])[0] for r in requests]
        assert cursors == [None, *emitted], (stream, scope)


def test_org_name_is_sent_and_scopes_a_multi_org_key(
    emulator: Emulator, run_tap: Callable[..., TapRun]
) -> None:
    emulator.store.add_org("other-org")
    foreign = emulator.store.add_project("Other org's project", org_name="other-org")
    shared_key = "sk-shared-00112233445566778899aabbccddeeff"
    emulator.add_api_key(shared_key, ["acme", "other-org"])

    everything = run_tap({**tap_config(emulator), "api_key": shared_key})
    assert foreign["id"] in {p["id"] for p in everything.records("projects")}

    emulator.request_log.clear()
    scoped = run_tap({**tap_config(emulator), "api_key": shared_key, "org_name": "other-org"})
    assert scoped.returncode == 0, scoped.stderr
    assert [p["id"] for p in scoped.records("projects")] == [foreign["id"]]
    listings = [r for r in emulator.request_log if r.path in LISTINGS]
    assert listings
    for request in listings:
        assert request.headers.get("x-bt-org-name") == "other-org"
        assert request.query["org_name"] == ["other-org"]


def test_selecting_only_a_child_stream_reads_its_parent_silently(
    emulator: Emulator, run_tap: Callable[..., TapRun]
) -> None:
    catalog = select_only(json.loads(run_tap(None, "--discover").stdout), "datasets")
    run = run_tap(tap_config(emulator), catalog=catalog)
    assert run.returncode == 0, run.stderr
    emitted_streams = {m["stream"] for m in run.messages if m["type"] == "RECORD"}
    assert emitted_streams == {"datasets"}
    assert {d["id"] for d in run.records("datasets")} == {
        d["id"] for d in emulator.store.objects("dataset")
    }


def test_requests_carry_the_key_only_as_a_bearer_token(
    emulator: Emulator, run_tap: Callable[..., TapRun]
) -> None:
    run = run_tap(tap_config(emulator))
    assert run.returncode == 0, run.stderr
    assert emulator.request_log
    for request in emulator.request_log:
        assert request.headers["authorization"] == f"Bearer {API_KEY}"
        assert API_KEY not in json.dumps(request.query)
        assert request.headers["user-agent"].startswith("tap-braintrust/")
    assert API_KEY not in run.stdout + run.stderr


def test_each_kind_is_listed_once_org_wide_or_per_selected_project(
    emulator: Emulator, run_tap: Callable[..., TapRun]
) -> None:
    projects = emulator.store.objects("project")
    run = run_tap(tap_config(emulator))
    assert run.returncode == 0, run.stderr
    for path in ("/v1/project", "/v1/experiment", "/v1/dataset"):
        requests = _listing_requests(emulator, path)
        # One page and the empty page after it, however many projects; no project filter.
        assert len(requests) == 2, path
        assert all("project_id" not in r.query for r in requests), path

    emulator.request_log.clear()
    chosen = projects[0]["id"]
    run = run_tap(tap_config(emulator, project_ids=[chosen]))
    assert run.returncode == 0, run.stderr
    kinds: tuple[tuple[str, str, ObjectKind], ...] = (
        ("/v1/experiment", "experiments", "experiment"),
        ("/v1/dataset", "datasets", "dataset"),
    )
    for path, stream, kind in kinds:
        assert {r.query["project_id"][0] for r in _listing_requests(emulator, path)} == {chosen}
        emitted = {o["id"] for o in run.records(stream)}
        assert emitted == {
            o["id"] for o in emulator.store.objects(kind) if o["project_id"] == chosen
        }
