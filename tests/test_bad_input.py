"""Bad input, one row each: the exit code and a message that says what to fix.

Config values, config/state/catalog files, and server answers. Some neighbours live with the
feature they guard: a wrong key, a redirect and an echoed key (test_failures.py), nonsense
rows and cursors from /btql (test_event_streams.py), and missing projects
(test_object_streams.py).
"""

from __future__ import annotations

import json
import socket
from typing import TYPE_CHECKING, Any

import pytest

from tests.conftest import API_KEY, run_tap_in, tap_config
from tests.emulator import FaultRule
from tests.throwaway_server import answer, serve

if TYPE_CHECKING:
    from collections.abc import Callable
    from http.server import BaseHTTPRequestHandler
    from pathlib import Path

    from tests.conftest import TapRun
    from tests.emulator import Emulator

GOOD = {"api_key": API_KEY, "api_url": "http://127.0.0.1:9"}


def _clear_failure(run: TapRun, code: int, message: str) -> None:
    assert run.returncode == code, run.stderr
    assert message in run.stderr
    assert "Traceback" not in run.stderr
    assert API_KEY not in run.stdout + run.stderr
    assert not [m for m in run.messages if m["type"] == "RECORD"]


# --- Config values -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("config", "problem"),
    [
        ({}, "'api_key' is a required property"),
        ({**GOOD, "api_key": ""}, "should be non-empty"),
        ({**GOOD, "api_key": f" {API_KEY}\n"}, "api_key must be the key alone"),
        ({**GOOD, "api_key": "sk-abc\nsecret-tail"}, "api_key must be the key alone"),
        ({**GOOD, "api_key": "sk-abc\u2019"}, "api_key must be the key alone"),
        ({**GOOD, "org_name": " acme"}, "org_name must be the org's name"),
        ({**GOOD, "org_name": "acme\r\nX-Injected: 1"}, "org_name must be the org's name"),
        ({**GOOD, "org_name": "\u65e5\u672c"}, "in Latin-1 text"),
        (
            {**GOOD, "project_id": "abc"},
            "unknown setting 'project_id' (did you mean 'project_ids'?)",
        ),
        ({**GOOD, "api_url": None}, "api_url is null; remove it to use the default"),
        (
            {**GOOD, "request_timeout": None},
            "request_timeout is null; remove it to use the default",
        ),
        ({**GOOD, "api_url": "http://[::1"}, "api_url is not a valid URL (Invalid IPv6 URL)"),
        ({**GOOD, "api_url": "https://api.braintrust.dev:99999"}, "api_url is not a valid URL"),
        ({**GOOD, "api_url": "https://api.brain trust.dev"}, "api_url must be an http(s) base URL"),
        ({**GOOD, "api_url": "api.braintrust.dev"}, "api_url must be an http(s) base URL"),
        ({**GOOD, "api_url": "ftp://api.braintrust.dev"}, "api_url must be an http(s) base URL"),
        ({**GOOD, "api_url": "https://u:p@api.braintrust.dev"}, "must not carry credentials"),
        ({**GOOD, "api_url": "https://api.braintrust.dev/?x=1"}, "without a query string"),
        ({**GOOD, "start_date": "last tuesday"}, "start_date: 'last tuesday' is not an ISO-8601"),
        ({**GOOD, "start_date": "2026-02-30T00:00:00Z"}, "start_date: '2026-02-30T00:00:00Z'"),
        ({**GOOD, "page_size": 0}, "0 is less than the minimum of 1"),
        ({**GOOD, "page_size": 1001}, "1001 is greater than the maximum of 1000"),
        ({**GOOD, "page_size": "100"}, "'100' is not of type 'integer'"),
        ({**GOOD, "request_timeout": 0}, "0 is less than the minimum of 1"),
        ({**GOOD, "project_ids": "abc"}, "'abc' is not of type 'array'"),
        ({**GOOD, "project_ids": ["a", "a"]}, "project_ids lists a value more than once"),
        ({**GOOD, "project_names": [""]}, "should be non-empty"),
        ({**GOOD, "max_tries": 0}, "0 is less than the minimum of 1"),
        ({**GOOD, "max_tries": None}, "max_tries is null; remove it to use the default"),
        ({**GOOD, "max_backoff_seconds": -1}, "-1 is less than the minimum of 0"),
        ({**GOOD, "max_retry_after_seconds": "5m"}, "'5m' is not of type 'number'"),
        ({**GOOD, "max_requests_per_minute": 0}, "0 is less than the minimum of 1"),
        ({**GOOD, "max_requests_per_minute": 0.5}, "Decimal('0.5') is not of type 'integer'"),
        ({**GOOD, "ca_bundle": "/no/such/ca.pem"}, "ca_bundle: no file or directory at"),
        ({**GOOD, "ca_bundle": __file__}, "holds no usable PEM certificate"),
        ({**GOOD, "lookback_seconds": 86401}, "86401 is greater than the maximum of 86400"),
    ],
)
def test_bad_config_fails_with_a_clear_message(
    run_tap: Callable[..., TapRun], config: dict[str, Any], problem: str
) -> None:
    run = run_tap(config)
    _clear_failure(run, 1, problem)
    assert "secret-tail" not in run.stderr
    assert run.messages == []


def test_every_config_problem_is_reported_at_once(run_tap: Callable[..., TapRun]) -> None:
    run = run_tap({"api_url": "nope", "page_size": 0, "start_date": "soon"})
    assert run.returncode == 1
    for problem in ("'api_key' is a required property", "api_url must be", "minimum of 1", "soon"):
        assert problem in run.stderr


# --- Config, state and catalog files (usage errors: exit 2) ------------------------------

NOT_JSON = "{'api_key': 'sk-single-quotes'}"


def _catalog_with(directory: Path, change: Callable[[dict[str, Any]], object]) -> str:
    """The tap's own catalog with one change applied, as file text."""
    discovered = run_tap_in(directory, None, "--discover")
    assert discovered.returncode == 0, discovered.stderr
    catalog = json.loads(discovered.stdout)
    change(catalog)
    return json.dumps(catalog)


def _deselect_all(catalog: dict[str, Any]) -> None:
    for entry in catalog["streams"]:
        for item in entry["metadata"]:
            if item["breadcrumb"] == []:
                item["metadata"]["selected"] = False


@pytest.mark.parametrize(
    ("option", "text", "message"),
    [
        ("--config", NOT_JSON, "is not valid JSON (Expecting property name"),
        ("--config", '["sk-in-a-list"]', "must be a JSON object, not a JSON list"),
        ("--config", b"\xff\xfe{}", "is not UTF-8 text"),
        ("--state", NOT_JSON, "is not valid JSON"),
        ("--state", "", "is not valid JSON"),
        ("--state", "[]", "must be a JSON object, not a JSON list"),
        ("--state", '{"bookmarks": []}', "`bookmarks` must be an object of streams"),
        ("--state", '{"bookmarks": {"projects": 1}}', "bookmarks.projects must be an object"),
        (
            "--state",
            '{"bookmarks": {"project_logs": {"partitions": {}}}}',
            "bookmarks.project_logs.partitions must be a list",
        ),
        (
            "--state",
            '{"bookmarks": {"project_logs": {"partitions": ["p-1"]}}}',
            "bookmarks.project_logs.partitions[0] must be an object",
        ),
        (
            "--state",
            '{"bookmarks": {"project_logs": {"partitions": [{"context": "p-1"}]}}}',
            "partitions[0].context must be an object",
        ),
        ("--state", '{"singer_state": {"bookmarks": {}}}', "pass the value of its `singer_state`"),
        (
            "--state",
            '{"bookmarks": {"projects": {"progress_markers": null}}}',
            "bookmarks.projects.progress_markers must be an object",
        ),
        (
            "--state",
            (
                '{"bookmarks": {"project_logs": {"partitions": '
                '[{"context": {"project_id": "p-1"}, "progress_markers": []}]}}}'
            ),
            "partitions[0].progress_markers must be an object",
        ),
        ("--state", "[" * 100_000 + "]" * 100_000, "is nested too deeply"),
        ("--catalog", NOT_JSON, "is not valid JSON"),
        ("--catalog", '{"streams": [{"tap_stream_id": ["projects"]}]}', "stream ['projects']"),
        ("--catalog", '{"streams": {}}', "must have a `streams` list of objects"),
        ("--catalog", '{"streams": [{"tap_stream_id": "users"}]}', "stream 'users', which"),
        (
            "--catalog",
            '{"streams": [{"tap_stream_id": "projects", "schema": {}}]}',
            "'projects' entry needs a `schema` with `properties`",
        ),
        (
            "--catalog",
            (
                '{"streams": [{"tap_stream_id": "projects", "schema": {"properties": {}}, '
                '"metadata": [{"metadata": {}}]}]}'
            ),
            "not a Singer catalog (KeyError: 'breadcrumb')",
        ),
        (
            "--catalog",
            lambda directory: _catalog_with(directory, _deselect_all),
            "the catalog selects no stream",
        ),
    ],
    ids=[
        "config-not-json",
        "config-a-list",
        "config-not-utf8",
        "state-not-json",
        "state-empty",
        "state-a-list",
        "state-bookmarks-a-list",
        "state-stream-not-object",
        "state-partitions-not-list",
        "state-partition-not-object",
        "state-context-not-object",
        "state-meltano-wrapper",
        "state-progress-markers-null",
        "state-partition-progress-markers-list",
        "state-nested-too-deeply",
        "catalog-not-json",
        "catalog-stream-id-not-a-string",
        "catalog-streams-not-list",
        "catalog-unknown-stream",
        "catalog-no-properties",
        "catalog-bad-metadata",
        "catalog-nothing-selected",
    ],
)
def test_a_bad_file_is_named_with_what_to_fix(
    tmp_path: Path,
    option: str,
    text: str | bytes | Callable[[Path], str],
    message: str,
) -> None:
    content = text(tmp_path) if callable(text) else text
    path = tmp_path / "input.json"
    if isinstance(content, bytes):
        path.write_bytes(content)
    else:
        path.write_text(content)
    args = [option, str(path)]
    run = run_tap_in(tmp_path, GOOD if option != "--config" else None, *args)
    _clear_failure(run, 2, message)
    assert f"Invalid value for '{option}'" in run.stderr
    assert "sk-single-quotes" not in run.stderr
    assert "sk-in-a-list" not in run.stderr


# --- Server answers ----------------------------------------------------------------------

NO_RETRY_WAIT = {"max_backoff_seconds": 0}


@pytest.mark.parametrize(
    ("rule", "settings", "message"),
    [
        (
            FaultRule("status", path="/v1/project", status=503),
            {"max_tries": 3},
            (
                "failed with 503 Service Unavailable. Braintrust said: Injected fault: HTTP 503. "
                "Gave up after 3 tries; try again later, or raise `max_tries`"
            ),
        ),
        (
            FaultRule("status", path="/btql", status=429, retry_after=0),
            {"max_tries": 4},
            (
                "failed with 429 Too Many Requests. Braintrust said: Injected fault: HTTP 429. "
                "Gave up after 4 tries; Braintrust throttled every try: set "
                "`max_requests_per_minute` below the plan's limit"
            ),
        ),
        (
            FaultRule("status", path="/btql", status=504),
            {"page_size": 8, "max_tries": 6, "objects_per_query": 1},
            (
                "failed with 504 Gateway Timeout. Braintrust said: Injected fault: HTTP 504. "
                "Gave up after 6 tries"
            ),
        ),
        (
            FaultRule("garbage", path="/v1/project"),
            {"max_tries": 2},
            (
                "answered 200 with a body that is not JSON: check that `api_url` is a "
                "Braintrust data plane, not the web app's URL. Gave up after 2 tries"
            ),
        ),
        (
            FaultRule("slow", path="/v1/experiment", delay=2.0),
            {"max_tries": 2, "request_timeout": 1},
            (
                "got no usable answer (ReadTimeout). Gave up after 2 tries; check `api_url` "
                "and the network, or raise `request_timeout` (1 s)"
            ),
        ),
        (
            FaultRule("drop", path="/v1/dataset"),
            {"max_tries": 2},
            "got no usable answer (ConnectionError). Gave up after 2 tries",
        ),
    ],
    ids=[
        "503-forever",
        "429-forever",
        "504-at-every-page-size",
        "html",
        "always-too-slow",
        "always-dropped",
    ],
)
def test_a_server_that_keeps_failing_stops_the_run_clearly(
    emulator: Emulator,
    run_tap: Callable[..., TapRun],
    rule: FaultRule,
    settings: dict[str, Any],
    message: str,
) -> None:
    emulator.faults.add(rule)
    run = run_tap(tap_config(emulator, **NO_RETRY_WAIT, **settings))
    assert run.returncode == 1, run.stderr
    assert message in run.stderr
    assert "Traceback" not in run.stderr
    assert emulator.faults.fired(rule) == settings["max_tries"]


def test_a_400_shows_the_servers_message_and_the_query(run_tap: Callable[..., TapRun]) -> None:
    def respond(handler: BaseHTTPRequestHandler) -> None:
        if handler.command == "POST":
            answer(handler, 400, {"Message": "Unsupported function: project_logs"})
        elif handler.path.startswith("/v1/project?") and "starting_after" not in handler.path:
            answer(handler, 200, {"objects": [{"id": "p-1", "name": "support-bot"}]})
        else:
            answer(handler, 200, {"objects": []})

    with serve(respond) as (url, paths):
        run = run_tap({"api_key": API_KEY, "api_url": url})
    _clear_failure(run, 1, f'POST {url}/btql for project_logs("p-1") ORDER BY _xact_id, ')
    assert (
        "_pagination_key (stream project_logs) failed with 400 Bad Request. "
        "Braintrust said: Unsupported function: project_logs"
    ) in run.stderr
    assert sum(path == "/btql" for path in paths) == 1  # a 400 is not retried


def test_403_for_another_org_names_org_name(
    emulator: Emulator, run_tap: Callable[..., TapRun]
) -> None:
    emulator.store.add_org("globex")
    run = run_tap(tap_config(emulator, org_name="globex"))
    _clear_failure(run, 1, "403")
    assert "check that `api_key` belongs to the org in `org_name`" in run.stderr


def test_nothing_listening_names_api_url(tmp_path: Path) -> None:
    with socket.socket() as probe:  # a port that was free a moment ago
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    config = {**GOOD, "api_url": f"http://127.0.0.1:{port}", "max_tries": 2, **NO_RETRY_WAIT}
    run = run_tap_in(tmp_path, config)
    _clear_failure(
        run, 1, "got no usable answer (ConnectionError). Gave up after 2 tries; check `api_url`"
    )


def test_a_project_id_that_looks_like_sql_is_reported_missing(
    emulator: Emulator, run_tap: Callable[..., TapRun]
) -> None:
    run = run_tap(tap_config(emulator, project_ids=["x') OR 1=1 --"]))
    _clear_failure(run, 1, 'Configured projects not found in Braintrust: id "x\') OR 1=1 --"')
