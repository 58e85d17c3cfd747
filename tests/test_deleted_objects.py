"""Projects, experiments and datasets deleted in Braintrust arrive marked, from what state kept."""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any

import pytest

from tests.conftest import API_KEY, demo_of, tap_config
from tests.emulator import FaultRule, running_emulator

if TYPE_CHECKING:
    from collections.abc import Callable

    from tests.conftest import TapRun
    from tests.emulator import Emulator

MARK = "_sdc_deleted_at"


def _ok(run: TapRun) -> TapRun:
    assert run.returncode == 0, run.stderr[-4000:]
    return run


def _marked(run: TapRun, stream: str) -> dict[str, dict[str, Any]]:
    return {r["id"]: r for r in run.records(stream) if r.get(MARK)}


def _row_objects(run: TapRun, stream: str, field: str) -> set[str]:
    return {r[field] for r in run.records(stream)}


def _partitions(state: dict[str, Any], stream: str, field: str) -> set[str]:
    return {p["context"][field] for p in state["bookmarks"][stream]["partitions"]}


def test_deleted_objects_are_marked_with_their_name_and_created_time(
    emulator: Emulator, run_tap: Callable[..., TapRun]
) -> None:
    first = _ok(run_tap(tap_config(emulator)))
    experiment = first.records("experiments")[0]
    dataset = first.records("datasets")[0]
    emulator.store.delete_object("experiment", experiment["id"])
    emulator.store.delete_object("dataset", dataset["id"])

    second = _ok(run_tap(tap_config(emulator), state=first.final_state))

    marked = _marked(second, "experiments")
    assert set(marked) == {experiment["id"]}
    record = marked[experiment["id"]]
    for field in ("name", "created", "project_id", "public"):
        assert record[field] == experiment[field], field
    assert "repo_info" not in record
    assert set(_marked(second, "datasets")) == {dataset["id"]}
    assert _marked(second, "datasets")[dataset["id"]]["name"] == dataset["name"]
    assert "marking 1 deleted" in second.stderr
    # Their rows are not read, and their state partitions are gone.
    assert experiment["id"] not in _row_objects(second, "experiment_events", "experiment_id")
    state = second.final_state
    assert experiment["id"] not in _partitions(state, "experiment_events", "experiment_id")
    assert dataset["id"] not in _partitions(state, "dataset_events", "dataset_id")
    assert experiment["id"] not in state["bookmarks"]["experiments"]["delivered"]
    # Marked once: the next run marks nothing.
    third = _ok(run_tap(tap_config(emulator), state=state))
    assert not _marked(third, "experiments")
    assert not _marked(third, "datasets")
    # State keeps a few fields per object, never the big ones.
    kept = state["bookmarks"]["experiments"]["delivered"]
    assert all(
        set(fields) == {"name", "created", "project_id", "public"} for fields in kept.values()
    )


def test_a_deleted_project_marks_its_experiments_and_datasets_too(
    emulator: Emulator, run_tap: Callable[..., TapRun]
) -> None:
    first = _ok(run_tap(tap_config(emulator, max_deleted_share=1)))
    project = demo_of(emulator).projects[0]["id"]
    experiments = {e["id"] for e in first.records("experiments") if e["project_id"] == project}
    datasets = {d["id"] for d in first.records("datasets") if d["project_id"] == project}
    emulator.store.delete_object("project", project)
    second = _ok(run_tap(tap_config(emulator, max_deleted_share=1), state=first.final_state))
    assert set(_marked(second, "projects")) == {project}
    assert set(_marked(second, "experiments")) == experiments
    assert set(_marked(second, "datasets")) == datasets
    assert project not in _partitions(second.final_state, "project_logs", "project_id")


def test_a_configured_project_deleted_since_is_marked_and_the_run_goes_on(
    emulator: Emulator, run_tap: Callable[..., TapRun]
) -> None:
    projects = demo_of(emulator).projects
    names = [p["name"] for p in projects]
    first = _ok(run_tap(tap_config(emulator, project_names=names)))
    emulator.store.delete_object("project", projects[0]["id"])
    second = _ok(run_tap(tap_config(emulator, project_names=names), state=first.final_state))
    assert set(_marked(second, "projects")) == {projects[0]["id"]}
    # A configured project never delivered stays a configuration error.
    third = run_tap(
        tap_config(emulator, project_names=[*names, "never-there"]), state=second.final_state
    )
    assert third.returncode != 0
    assert "Configured projects not found" in third.stderr
    assert "'never-there'" in third.stderr


def test_an_object_that_left_the_selection_is_not_marked(
    emulator: Emulator, run_tap: Callable[..., TapRun]
) -> None:
    projects = demo_of(emulator).projects
    first = _ok(run_tap(tap_config(emulator)))
    narrowed = tap_config(emulator, project_ids=[projects[0]["id"]])
    second = _ok(run_tap(narrowed, state=first.final_state))
    for stream in ("projects", "experiments", "datasets"):
        assert not _marked(second, stream), stream
    # Deleted while out of the selection, and selected again: then it is marked.
    other = next(e for e in first.records("experiments") if e["project_id"] != projects[0]["id"])
    emulator.store.delete_object("experiment", other["id"])
    third = _ok(run_tap(tap_config(emulator), state=second.final_state))
    assert set(_marked(third, "experiments")) == {other["id"]}


def test_another_org_or_a_key_that_sees_nothing_fails_and_marks_nothing(
    emulator: Emulator, run_tap: Callable[..., TapRun]
) -> None:
    first = _ok(run_tap(tap_config(emulator)))
    emulator.add_api_key("other-org-key", ["other-org"])
    emulator.store.add_project("theirs", org_name="other-org")
    wrong_org = run_tap(
        {**tap_config(emulator), "api_key": "other-org-key"}, state=first.final_state
    )
    assert wrong_org.returncode != 0
    assert "earlier runs of this state read org" in wrong_org.stderr
    assert not any(r.get(MARK) for m in ("projects", "experiments") for r in wrong_org.records(m))

    emulator.add_api_key("empty-org-key", ["empty-org"])
    blind = run_tap({**tap_config(emulator), "api_key": "empty-org-key"}, state=first.final_state)
    assert blind.returncode != 0
    assert "sees no project at all" in blind.stderr


def test_marking_more_than_the_allowed_share_marks_none(
    emulator: Emulator, run_tap: Callable[..., TapRun]
) -> None:
    first = _ok(run_tap(tap_config(emulator)))
    datasets = [d["id"] for d in first.records("datasets")]
    for dataset in datasets[: len(datasets) - 1]:
        emulator.store.delete_object("dataset", dataset)
    second = _ok(run_tap(tap_config(emulator), state=first.final_state))
    assert not _marked(second, "datasets")
    assert "more than max_deleted_share" in second.stderr
    # They stay in state, so a run allowed to marks them.
    third = _ok(run_tap(tap_config(emulator, max_deleted_share=1), state=second.final_state))
    assert set(_marked(third, "datasets")) == set(datasets[: len(datasets) - 1])


@pytest.mark.parametrize("deleted_sources", ["forbidden", "refused", "missing"])
def test_an_object_deleted_during_a_run_is_dropped_and_marked_next_run(
    run_tap: Callable[..., TapRun], deleted_sources: str
) -> None:
    with running_emulator(api_key=API_KEY, demo_seed=7, deleted_sources=deleted_sources) as emu:
        first = _ok(run_tap(tap_config(emu)))
        datasets = [d["id"] for d in first.records("datasets")]
        victim = datasets[-1]
        for dataset in datasets:  # something to read in each
            row = emu.store.rows("dataset", dataset)[0]
            emu.store.merge_rows("dataset", dataset, [{"id": row["id"], "tags": ["seen"]}])
        # Streams sync by name, dataset_events first: the dataset goes after the listing,
        # as the first query naming it is sent.
        emu.faults.add(FaultRule("delete", path="/btql", delete=("dataset", victim)))
        second = _ok(run_tap(tap_config(emu), state=first.final_state))
        read = _row_objects(second, "dataset_events", "dataset_id")
        assert read == set(datasets) - {victim}
        assert not any(r.get(MARK) for r in second.records("dataset_events"))
        if deleted_sources != "missing":
            assert "no longer listed (deleted, or access lost) during the run" in second.stderr
        third = _ok(run_tap(tap_config(emu), state=second.final_state))
        assert set(_marked(third, "datasets")) == {victim}
        assert victim not in _partitions(third.final_state, "dataset_events", "dataset_id")


def test_detect_deletes_off_keeps_no_objects_in_state(
    emulator: Emulator, run_tap: Callable[..., TapRun]
) -> None:
    run = _ok(run_tap(tap_config(emulator, detect_deletes=False)))
    assert "delivered" not in json.dumps(run.final_state)


def test_a_project_renamed_out_of_project_names_is_a_configuration_error_not_a_delete(
    emulator: Emulator, run_tap: Callable[..., TapRun]
) -> None:
    project = demo_of(emulator).projects[0]
    config = tap_config(emulator, project_names=[project["name"]])
    first = _ok(run_tap(config))
    emulator.store.rename_object("project", project["id"], "renamed")
    second = run_tap(config, state=first.final_state)
    assert second.returncode != 0
    assert "Configured projects not found" in second.stderr
    assert not any(_marked(second, s) for s in ("projects", "experiments", "datasets"))


def test_another_orgs_key_fails_even_with_named_projects(
    emulator: Emulator, run_tap: Callable[..., TapRun]
) -> None:
    project = demo_of(emulator).projects[0]
    first = _ok(run_tap(tap_config(emulator, project_ids=[project["id"]])))
    emulator.add_api_key("other-org-key", ["other-org"])
    emulator.store.add_project("theirs", org_name="other-org")
    config = {**tap_config(emulator, project_ids=[project["id"]]), "api_key": "other-org-key"}
    second = run_tap(config, state=first.final_state)
    assert second.returncode != 0
    assert "earlier runs of this state read org" in second.stderr
