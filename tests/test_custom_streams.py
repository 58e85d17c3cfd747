"""`custom_streams` against the emulator: the export guide's recipes, incremental and whole-trace.

Every stream's records are compared with the emulator's truth, worked out here by evaluating the
same filter on the store's rows with the emulator's own BTQL evaluator: nothing is taken from
what the tap sent. Requests are counted in the emulator's request log.
"""

from __future__ import annotations

import json
from datetime import datetime, timezone
from typing import TYPE_CHECKING, Any

import pytest

from tests.activity import START, ManualClock, annotate, demo_before_a_run
from tests.conftest import demo_of, tap_config
from tests.emulator.btql import matches, parse_expression
from tests.warehouse import fixed_width

if TYPE_CHECKING:
    from collections.abc import Callable, Iterator

    from tests.conftest import TapRun
    from tests.emulator import Emulator

OBJECT_KIND = {"project_logs": "project", "experiment": "experiment", "dataset": "dataset"}
PARENT_KEY = {"project_logs": "project_id", "experiment": "experiment_id", "dataset": "dataset_id"}
KEPT = ("id", "_xact_id", "created")

# The export guide's workflows, as custom streams (README "Custom streams").
ANNOTATED_LOGS: dict[str, Any] = {
    "name": "annotated_logs",
    "from": "project_logs",
    "filter": "tags includes 'annotated'",
}
TRAINING_SET: dict[str, Any] = {
    "name": "training_set",
    "from": "dataset",
    "select": ["input", "expected"],
    "filter": "expected IS NOT NULL",
}
USER_CORRECTIONS: dict[str, Any] = {
    "name": "user_corrections",
    "from": "project_logs",
    "select": ["input", "output", "expected", "metadata.user_id"],
    "filter": "expected IS NOT NULL AND metadata.user_correction = true",
}
RECENT_RATINGS: dict[str, Any] = {
    "name": "recent_ratings",
    "from": "project_logs",
    "select": ["created", "scores.user_rating", "scores.accuracy", "metadata.model"],
    "filter": "created > now() - interval 7 day",
}
HIGHLY_RATED: dict[str, Any] = {
    "name": "highly_rated",
    "from": "project_logs",
    "filter": "scores.user_rating > 0.8",
    "select": ["scores.user_rating", "metadata.model"],
}
RECIPES: tuple[dict[str, Any], ...] = (
    ANNOTATED_LOGS,
    TRAINING_SET,
    USER_CORRECTIONS,
    RECENT_RATINGS,
    HIGHLY_RATED,
)


@pytest.fixture
def clock() -> ManualClock:
    return ManualClock(START)


@pytest.fixture
def emu(clock: ManualClock) -> Iterator[Emulator]:
    """The demo a day after it was written, on a clock that moves only when told to."""
    with demo_before_a_run(clock) as emulator:
        yield emulator


def truth_of(emu: Emulator, spec: dict[str, Any]) -> dict[tuple[str, str], dict[str, Any]]:
    """The rows of a custom row stream, worked out from the store with the emulator's evaluator."""
    source = spec["from"]
    now = datetime.fromtimestamp(emu.store.clock(), tz=timezone.utc)
    expression = parse_expression(spec["filter"]) if "filter" in spec else None
    parent = PARENT_KEY[source]
    table = {}
    for obj in emu.store.objects(OBJECT_KIND[source]):  # type: ignore[arg-type]
        if "object_ids" in spec and obj["id"] not in spec["object_ids"]:
            continue
        for row in emu.store.rows(source, obj["id"]):
            if not matches(expression, row, now=now):
                continue
            row["created"] = fixed_width(row["created"])
            if "select" in spec:
                paths = [(parent,), *((name,) for name in KEPT)]
                paths += [tuple(text.split(".")) for text in spec["select"]]
                table[(obj["id"], row["id"])] = {path[-1]: lookup(row, path) for path in paths}
            else:
                table[(obj["id"], row["id"])] = row
    return table


def lookup(row: dict[str, Any], path: tuple[str, ...]) -> Any:
    value: Any = row
    for part in path:
        value = value.get(part) if isinstance(value, dict) else None
    return value


def keyed(run: TapRun, stream: str, parent: str) -> dict[tuple[str, str], dict[str, Any]]:
    """A stream's records by key, each key once."""
    records = run.records(stream)
    table = {(record[parent], record["id"]): record for record in records}
    assert len(table) == len(records), f"{stream} sent a row twice"
    return table


def run_custom(
    run_tap: Callable[..., TapRun],
    emu: Emulator,
    specs: list[dict[str, Any]],
    *,
    succeed: bool = True,
    **kwargs: Any,
) -> TapRun:
    """A run of only the custom streams `specs` define (their listings are still read)."""
    config = tap_config(emu, custom_streams=specs)
    discovered = run_tap(config, "--discover")
    assert discovered.returncode == 0, discovered.stderr
    catalog = json.loads(discovered.stdout)
    names = {spec["name"] for spec in specs}
    for entry in catalog["streams"]:
        for metadata in entry["metadata"]:
            if metadata["breadcrumb"] == []:
                metadata["metadata"]["selected"] = entry["tap_stream_id"] in names
    emu.request_log.clear()
    run = run_tap(config, catalog=catalog, **kwargs)
    assert (run.returncode == 0) == succeed, run.stderr
    return run


def btql_requests(emu: Emulator) -> list[dict[str, Any]]:
    return [r.json_body for r in emu.request_log if r.host == "api" and r.path == "/btql"]


def test_export_guide_recipes_hold_exactly_the_matching_rows(
    emu: Emulator, run_tap: Callable[..., TapRun]
) -> None:
    for spec in RECIPES:
        run = run_custom(run_tap, emu, [spec])
        want = truth_of(emu, spec)
        got = keyed(run, spec["name"], PARENT_KEY[spec["from"]])
        assert got == want, spec["name"]
        print(  # noqa: T201 - figures for the closing note
            f"\n{spec['name']}: {len(got)} rows, {len(btql_requests(emu))} /btql requests"
        )
    # Not a recipe that matches nothing: each holds rows, and fewer than its whole source.
    for spec in RECIPES:
        assert 0 < len(truth_of(emu, spec)) < len(truth_of(emu, {"from": spec["from"]}))


def test_select_keeps_the_keys_and_names_columns_by_their_last_part(
    emu: Emulator, run_tap: Callable[..., TapRun]
) -> None:
    run = run_custom(run_tap, emu, [USER_CORRECTIONS])
    schema = run.schemas()["user_corrections"]
    assert list(schema["schema"]["properties"]) == [
        "project_id",
        "id",
        "_xact_id",
        "created",
        "input",
        "output",
        "expected",
        "user_id",
    ]
    assert schema["key_properties"] == ["project_id", "id"]
    assert schema["bookmark_properties"] == ["created"]
    # The server was asked for just those columns, and the key paging goes on from.
    body = btql_requests(emu)[0]
    assert [item["alias"] for item in body["query"]["select"]] == [
        *schema["schema"]["properties"],
        "_pagination_key",
    ]


def test_an_or_filter_stays_one_operand_of_the_taps_conditions(
    emu: Emulator, run_tap: Callable[..., TapRun]
) -> None:
    """`a OR b` must not widen past the tap's own bounds (here: one dataset's rows)."""
    dataset = demo_of(emu).datasets[0]["id"]
    spec = {
        "name": "either",
        "from": "dataset",
        "object_ids": [dataset],
        "filter": "expected IS NOT NULL OR expected IS NULL",
    }
    run = run_custom(run_tap, emu, [spec])
    got = keyed(run, "either", "dataset_id")
    assert got == truth_of(emu, spec)
    assert {dataset_id for dataset_id, _ in got} == {dataset}
    # A first read has no range of its own: the text is the filter; later pages go on
    # after a row, the text one child of the tap's `and`, as `bt` sends it.
    filters = [body["query"]["filter"] for body in btql_requests(emu)]
    assert filters[0] == {"btql": spec["filter"]}
    assert len(filters) > 1
    for later in filters[1:]:
        assert later["op"] == "and"
        assert later["children"][-1] == {"btql": spec["filter"]}


def test_an_annotation_between_runs_makes_a_row_match_and_only_changes_are_sent(
    emu: Emulator, clock: ManualClock, run_tap: Callable[..., TapRun]
) -> None:
    specs = [ANNOTATED_LOGS, TRAINING_SET]
    first = run_custom(run_tap, emu, specs)
    before = {spec["name"]: truth_of(emu, spec) for spec in specs}
    changed = annotate(emu, clock)
    after = {spec["name"]: truth_of(emu, spec) for spec in specs}
    # The reviewer's tag made one more log row match, and the corrected record matches too.
    newly_matching = {
        name: after[name].keys() - before[name].keys()
        for name in ("annotated_logs", "training_set")
    }
    assert len(newly_matching["annotated_logs"]) == 1
    second = run_custom(run_tap, emu, specs, state=first.final_state)
    for spec in specs:
        name, parent = spec["name"], PARENT_KEY[spec["from"]]
        loaded = keyed(first, name, parent) | keyed(second, name, parent)
        assert loaded == after[name], name
        sent_again = keyed(second, name, parent).keys()
        assert newly_matching[name] <= sent_again
        # Only changed rows (and the lookback's recent ones) come again, not the stream.
        every_change = changed["project_logs"] | changed["dataset_events"]
        assert sent_again <= every_change | _recent_keys(emu), name
    # Two streams, one query each (a page and the empty end), plus the listings.
    # Three reads of a page and the empty end: one for the logs, and for the datasets one
    # for those caught up and one for the dataset new since (no query mixes two starts).
    assert len(btql_requests(emu)) <= 3 * 2


def _recent_keys(emu: Emulator) -> set[tuple[str, str]]:
    """The demo's writes of the minute before the first run: what the lookback reads again."""
    project = demo_of(emu).projects[0]["id"]
    return {(project, f"recent-{n}") for n in range(3)}


def test_a_filter_the_server_rejects_stops_the_run_with_its_message(
    emu: Emulator, run_tap: Callable[..., TapRun]
) -> None:
    spec = {"name": "broken", "from": "project_logs", "filter": "scores.accuracy >>> 1"}
    run = run_tap(tap_config(emu, custom_streams=[spec]))
    assert run.returncode == 1
    assert "failed with 400" in run.stderr
    assert "stream broken" in run.stderr
    assert "(scores.accuracy >>> 1)" in run.stderr
    assert "Traceback" not in run.stderr
    assert run.records("broken") == []


def traces_truth(emu: Emulator, spec: dict[str, Any]) -> dict[tuple[str, str], dict[str, Any]]:
    """Every span of each trace that has a span matching the filter."""
    matching = truth_of(emu, {"from": spec["from"], "filter": spec["filter"]})
    parent = PARENT_KEY[spec["from"]]
    roots = {(row[parent], row["root_span_id"]) for row in matching.values()}
    every = truth_of(emu, {"from": spec["from"]})
    return {key: row for key, row in every.items() if (key[0], row["root_span_id"]) in roots}


RATED_TRACES: dict[str, Any] = {
    "name": "rated_traces",
    "from": "project_logs",
    "shape": "traces",
    "filter": "scores.user_rating > 0.8",
}


def test_a_traces_stream_holds_whole_traces_and_resends_a_changed_one_whole(
    emu: Emulator, clock: ManualClock, run_tap: Callable[..., TapRun]
) -> None:
    first = run_custom(run_tap, emu, [RATED_TRACES])
    want = traces_truth(emu, RATED_TRACES)
    assert keyed(first, "rated_traces", "project_id") == want
    # More spans than matched: the traces' other spans came too.
    assert len(want) > len(
        truth_of(emu, {"from": "project_logs", "filter": RATED_TRACES["filter"]})
    )
    # A child span of a matching trace is written again: its whole trace comes again.
    project, row = next(
        (key[0], r) for key, r in sorted(want.items()) if r["root_span_id"] != r["span_id"]
    )
    clock.advance(3600)
    emu.store.merge_rows("project_logs", project, [{"id": row["id"], "tags": ["reviewed"]}])
    clock.advance(600)
    second = run_custom(run_tap, emu, [RATED_TRACES], state=first.final_state)
    trace = {
        key
        for key, r in traces_truth(emu, RATED_TRACES).items()
        if r["root_span_id"] == row["root_span_id"]
    }
    sent = keyed(second, "rated_traces", "project_id")
    assert trace <= sent.keys()
    assert sent[(project, row["id"])]["tags"] == ["reviewed"]
    assert (keyed(first, "rated_traces", "project_id") | sent) == traces_truth(emu, RATED_TRACES)
    # A narrow read of what changed, the changed traces with a span matching the filter,
    # then those traces whole (each a page and the empty end): not one per trace.
    assert len(btql_requests(emu)) <= 3 * 2


TRACE_SUMMARIES: dict[str, Any] = {
    "name": "trace_summaries",
    "from": "project_logs",
    "shape": "summary",
    "filter": "scores.user_rating > 0.8",
}


def summary_truth(emu: Emulator, spec: dict[str, Any]) -> dict[tuple[str, str], dict[str, Any]]:
    """Per matching trace: its root span, and each score's mean over the trace's spans."""
    spans = traces_truth(emu, spec)
    traces: dict[tuple[str, str], list[dict[str, Any]]] = {}
    for (project, _), span in spans.items():
        traces.setdefault((project, span["root_span_id"]), []).append(span)
    summaries = {}
    for key, members in traces.items():
        (root,) = [span for span in members if span["span_id"] == key[1]]
        scores: dict[str, list[float]] = {}
        for span in members:
            for name, value in (span.get("scores") or {}).items():
                if value is not None:
                    scores.setdefault(name, []).append(value)
        summaries[key] = {
            "root": root,
            "scores": {name: sum(values) / len(values) for name, values in scores.items()},
        }
    return summaries


def test_a_summary_stream_holds_one_row_per_matching_trace_and_resends_a_changed_one(
    emu: Emulator, clock: ManualClock, run_tap: Callable[..., TapRun]
) -> None:
    first = run_custom(run_tap, emu, [TRACE_SUMMARIES])
    records = first.records("trace_summaries")
    got = {(r["project_id"], r["root_span_id"]): r for r in records}
    assert len(got) == len(records)
    want = summary_truth(emu, TRACE_SUMMARIES)
    assert got.keys() == want.keys()
    for key, record in got.items():
        root = want[key]["root"]
        # The root span's values, whole (not 124-character previews), and Braintrust's means.
        for field in ("id", "created", "input", "output", "expected", "metadata", "error"):
            assert record[field] == root.get(field), (key, field)
        assert record["scores"] == pytest.approx(want[key]["scores"]), key
        assert "num_spans" not in record
    print(f"\ntrace_summaries: {len(got)} rows, {len(btql_requests(emu))} /btql requests")  # noqa: T201
    # A child span of a summarised trace gets a new score: that trace's summary comes again.
    (project, _), child = min(
        (key, span)
        for key, span in traces_truth(emu, TRACE_SUMMARIES).items()
        if span["root_span_id"] != span["span_id"]
    )
    trace = child["root_span_id"]
    clock.advance(3600)
    emu.store.merge_rows("project_logs", project, [{"id": child["id"], "scores": {"judge": 0.5}}])
    clock.advance(600)
    second = run_custom(run_tap, emu, [TRACE_SUMMARIES], state=first.final_state)
    again = {(r["project_id"], r["root_span_id"]): r for r in second.records("trace_summaries")}
    assert (project, trace) in again
    assert again[(project, trace)]["scores"]["judge"] == pytest.approx(0.5)
    # Only traces written since the first run (and the lookback's recent rows') come again.
    assert len(again) <= 2


def test_object_ids_narrow_a_stream_and_an_unknown_one_stops_the_run(
    emu: Emulator, run_tap: Callable[..., TapRun]
) -> None:
    experiments = [e["id"] for e in demo_of(emu).experiments]
    spec = {"name": "two_experiments", "from": "experiment", "object_ids": experiments[:2]}
    run = run_custom(run_tap, emu, [spec])
    got = keyed(run, "two_experiments", "experiment_id")
    assert got == truth_of(emu, spec)
    assert {experiment for experiment, _ in got} == set(experiments[:2])
    body = btql_requests(emu)[0]  # only those two are asked for
    assert {arg["value"] for arg in body["query"]["from"]["args"]} == set(experiments[:2])
    unknown = {**spec, "name": "missing", "object_ids": [experiments[0], "no-such-experiment"]}
    failed = run_custom(run_tap, emu, [unknown], succeed=False)
    assert failed.returncode == 1
    assert (
        "missing: object_ids 'no-such-experiment' are not among the experiments of the "
        "selected projects"
    ) in failed.stderr
    assert failed.records("missing") == []
