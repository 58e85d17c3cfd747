"""After a 429 the transport paces itself under the rate it learned, instead of hitting the limit.

Tested at the transport's seam, over a real socket, against the emulator's rolling-window
`/btql` limit, with a short window so the test takes seconds: the tap learns the window from
how long the requests that got through took and the `Retry-After` the 429 carried.
"""

from __future__ import annotations

import logging
import time
from typing import TYPE_CHECKING, Any

import pytest
import requests

from tap_braintrust.queries import ObjectBound, RowsQuery
from tap_braintrust.transport import Pacer, Transport
from tests.conftest import API_KEY
from tests.emulator import running_emulator

if TYPE_CHECKING:
    from tests.emulator import Emulator

SETTINGS = {
    "api_key": API_KEY,
    "request_timeout": 10,
    "max_tries": 10,
    "max_backoff_seconds": 5,
    "max_retry_after_seconds": 10,
}


def _send(transport: Transport, url: str, body: dict[str, Any], count: int) -> None:
    def prepare() -> requests.PreparedRequest:
        headers = {"Authorization": f"Bearer {API_KEY}"}
        return requests.Request("POST", f"{url}/btql", json=body, headers=headers).prepare()

    for _ in range(count):
        transport.fetch(prepare, lambda answer: answer.body)


def test_after_a_429_the_rest_of_the_run_stays_under_the_limit(
    caplog: pytest.LogCaptureFixture,
) -> None:
    # 10 requests a second; without learning, 40 requests would meet about four 429s.
    with running_emulator(api_key=API_KEY, btql_rate_limit=(10, 1.0)) as emu:
        transport, url, body = _client(emu)
        started = time.monotonic()
        with caplog.at_level(logging.INFO, logger="pacing"):
            _send(transport, url, body, 40)
        elapsed = time.monotonic() - started
        statuses = [r.status for r in emu.request_log if r.path == "/btql"]
    assert statuses.count(200) == 40
    assert 1 <= statuses.count(429) <= 2, statuses
    learned = transport.pacer.learned_per_minute
    assert learned is not None
    assert 300 < learned < 600  # 0.9 x 10 a second, the window's length told by Retry-After
    assert "at most" in caplog.text
    print(  # noqa: T201 - a figure for the closing note
        f"\n40 requests under a 10/s limit: {statuses.count(429)} 429s, "
        f"learned {learned:.0f}/min, {elapsed:.1f} s"
    )


def test_without_retry_after_the_limit_is_taken_as_a_minute() -> None:
    # The contract's window: what got through is spread over a whole minute.
    with running_emulator(
        api_key=API_KEY, btql_rate_limit=(10, 1.0), rate_limit_retry_after=False
    ) as emu:
        transport, url, body = _client(emu)
        _send(transport, url, body, 11)
        statuses = [r.status for r in emu.request_log if r.path == "/btql"]
        times = [r.time for r in emu.request_log if r.path == "/btql"]
    assert statuses == [200] * 10 + [429, 200]
    assert transport.pacer.learned_per_minute == pytest.approx(9.0, rel=0.02)
    assert times[-1] - times[-2] >= 60 / 9.0 - 0.1  # the retry waited its paced turn


def _client(emu: Emulator) -> tuple[Transport, str, dict[str, Any]]:
    project = emu.store.add_project("p")["id"]
    body = RowsQuery("project_logs", (ObjectBound(project),)).body(None)
    return Transport({**SETTINGS, "api_url": emu.url}, logging.getLogger("pacing")), emu.url, body


def test_the_configured_budget_still_caps_a_learned_rate() -> None:
    pacer = Pacer(per_minute=30)
    assert pacer.interval == 2.0
    for _ in range(3):
        pacer._sent.append(time.monotonic())  # three requests got through just now
    pacer._sent.append(time.monotonic())  # and the fourth was refused
    learned = pacer.throttled(retry_after=58.0)
    # 3 requests in about a minute, less the margin: slower than the setting, so it wins.
    assert learned == pytest.approx(Pacer.MIN_LEARNED_PER_MINUTE)
    assert pacer.interval == pytest.approx(60.0 / Pacer.MIN_LEARNED_PER_MINUTE)
    fast = Pacer(per_minute=30)
    for _ in range(200):
        fast._sent.append(time.monotonic())
    generous = fast.throttled(retry_after=0.5)
    assert generous is not None
    assert generous > 30  # a generous limit: the setting still holds
    assert fast.interval == 2.0


def test_a_429_to_the_first_request_learns_nothing() -> None:
    pacer = Pacer(per_minute=None)
    pacer.wait_turn()
    assert pacer.throttled(retry_after=30.0) is None
    assert pacer.interval == 0.0
