"""How the tap fails, or recovers, when the server misbehaves: never silently, never leaking."""

from __future__ import annotations

from typing import TYPE_CHECKING

import pytest

from tests.conftest import API_KEY, OBJECT_STREAMS, tap_config
from tests.emulator import FaultRule
from tests.throwaway_server import answer, serve

if TYPE_CHECKING:
    from collections.abc import Callable
    from http.server import BaseHTTPRequestHandler

    from tests.conftest import TapRun
    from tests.emulator import Emulator


def test_wrong_key_fails_with_one_clear_error(
    emulator: Emulator, run_tap: Callable[..., TapRun]
) -> None:
    wrong_key = "sk-wrong-0123456789abcdef0123456789abcdef"
    run = run_tap({**tap_config(emulator), "api_key": wrong_key})
    assert run.returncode == 1
    assert "401" in run.stderr
    assert "check `api_key`, `api_url` and `org_name`" in run.stderr
    assert "Traceback" not in run.stderr
    assert wrong_key not in run.stdout + run.stderr
    assert not [m for m in run.messages if m["type"] == "RECORD"]


def test_unknown_api_path_is_named(emulator: Emulator, run_tap: Callable[..., TapRun]) -> None:
    run = run_tap(tap_config(emulator, api_url=f"{emulator.url}/not-the-api"))
    assert run.returncode == 1
    assert f"GET {emulator.url}/not-the-api/v1/project failed with 404" in run.stderr
    assert "check `api_url`" in run.stderr


@pytest.mark.parametrize(
    "rule",
    [
        FaultRule("status", path="/v1/experiment", status=503, times=1),
        FaultRule("status", path="/v1/project", status=429, retry_after="1", times=1),
        FaultRule("drop", path="/v1/dataset", times=1),
        FaultRule("truncate", path="/v1/experiment", times=1),
        FaultRule("garbage", path="/v1/project", times=1),
    ],
    ids=["503", "429", "dropped-connection", "truncated-body", "non-json-body"],
)
def test_transient_failures_are_retried_without_losing_or_repeating_objects(
    emulator: Emulator, run_tap: Callable[..., TapRun], rule: FaultRule
) -> None:
    emulator.faults.add(rule)
    run = run_tap(tap_config(emulator, page_size=1))
    assert run.returncode == 0, run.stderr
    assert emulator.faults.fired(rule) == 1
    assert "retrying in" in run.stderr
    for stream, kind in OBJECT_STREAMS.items():
        ids = [record["id"] for record in run.records(stream)]
        assert sorted(ids) == sorted(obj["id"] for obj in emulator.store.objects(kind)), stream


def test_an_answer_slower_than_request_timeout_is_retried(
    emulator: Emulator, run_tap: Callable[..., TapRun]
) -> None:
    rule = emulator.faults.add(FaultRule("slow", path="/v1/dataset", delay=3.0, times=1))
    run = run_tap(tap_config(emulator, request_timeout=1))
    assert run.returncode == 0, run.stderr
    assert emulator.faults.fired(rule) == 1
    assert "(ReadTimeout); retrying in" in run.stderr
    ids = {record["id"] for record in run.records("datasets")}
    assert ids == {obj["id"] for obj in emulator.store.objects("dataset")}


def test_a_redirect_is_reported_and_never_followed(run_tap: Callable[..., TapRun]) -> None:
    with serve(lambda handler: answer(handler, 200, {"objects": []})) as (elsewhere, reached):

        def redirect(handler: BaseHTTPRequestHandler) -> None:
            answer(handler, 302, {}, Location=f"{elsewhere}{handler.path}")

        with serve(redirect) as (api_url, _):
            run = run_tap({"api_key": API_KEY, "api_url": api_url})
    assert run.returncode == 1
    assert f"it redirects to {elsewhere}/v1/project" in run.stderr
    assert "set `api_url` to the data plane URL" in run.stderr
    assert reached == []  # the key never went to the other host


def test_a_server_echoing_the_key_is_redacted(run_tap: Callable[..., TapRun]) -> None:
    def echo(handler: BaseHTTPRequestHandler) -> None:
        answer(handler, 400, {"Message": f"bad header {handler.headers['Authorization']}"})

    with serve(echo) as (api_url, _):
        run = run_tap({"api_key": API_KEY, "api_url": api_url})
    assert run.returncode == 1
    assert "Braintrust said: bad header Bearer <api_key>" in run.stderr
    assert API_KEY not in run.stdout + run.stderr


@pytest.mark.parametrize(
    "echo",
    [
        # The key straddles the point where long server text is cut.
        lambda key: answer_with(400, {"Message": "x" * 480 + f" token {key}"}),
        lambda key: answer_with(302, {}, Location=f"https://elsewhere.example/?key={key}"),
        lambda key: answer_with(503, {"Message": f"overloaded, {key}"}),
        # Data, not an error text: an id the loop guard quotes.
        lambda key: answer_with(200, {"objects": [{"id": f"p-{key}", "name": "p"}]}),
    ],
    ids=["long-message", "location", "retried-5xx", "quoted-id"],
)
def test_no_part_of_an_echoed_key_is_printed(
    run_tap: Callable[..., TapRun], echo: Callable[[str], Callable[[BaseHTTPRequestHandler], None]]
) -> None:
    with serve(echo(API_KEY)) as (api_url, _):
        run = run_tap({"api_key": API_KEY, "api_url": api_url, "max_tries": 2})
    assert run.returncode == 1
    assert "<api_key>" in run.stderr
    assert API_KEY[:12] not in run.stdout + run.stderr


def answer_with(
    status: int, body: object, **headers: str
) -> Callable[[BaseHTTPRequestHandler], None]:
    """A server's answer to every request."""
    return lambda handler: answer(handler, status, body, **headers)
