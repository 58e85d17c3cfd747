"""The /btql rate limit (contract section 7): a rolling window of admitted requests, then 429."""

from __future__ import annotations

import argparse
import contextlib
import time
from typing import TYPE_CHECKING, Any

import pytest

from tests.emulator import running_emulator
from tests.emulator.__main__ import rate_limit
from tests.emulator.conftest import FIXED_NOW, Api, sql
from tests.emulator.server import RateLimiter

if TYPE_CHECKING:
    from collections.abc import Iterator

    import requests

    from tests.emulator import Emulator

LIMIT = (5, 1.5)  # small, so a test waits out a window in well under two seconds


@contextlib.contextmanager
def limited(**kwargs: Any) -> Iterator[tuple[Emulator, Api, str]]:
    with running_emulator(
        strict=False, clock=lambda: FIXED_NOW, btql_rate_limit=LIMIT, **kwargs
    ) as emu:
        project = emu.store.add_project("p")
        emu.store.insert_rows("project_logs", project["id"], [{"output": n} for n in range(3)])
        api = Api(emu)
        try:
            yield emu, api, str(project["id"])
        finally:
            api.close()


def burst(api: Api, project_id: str, count: int) -> list[requests.Response]:
    return [api.btql(sql("project_logs", project_id)) for _ in range(count)]


def test_past_the_limit_btql_answers_429_with_retry_after_in_whole_seconds() -> None:
    with limited() as (emu, api, project_id):
        started = time.monotonic()
        answers = burst(api, project_id, 7)
        assert [a.status_code for a in answers] == [200] * 5 + [429] * 2
        refused = answers[-1]
        assert refused.json()["Message"].startswith("Too many requests")
        retry_after = int(refused.headers["Retry-After"])
        elapsed = time.monotonic() - started
        assert 1 <= retry_after <= 2  # ceil of what is left of 1.5 s
        assert retry_after >= LIMIT[1] - elapsed
        assert [(e.status, e.fault) for e in emu.request_log[-2:]] == [(429, None)] * 2
        assert emu.request_log[-1].response_headers == {"Retry-After": str(retry_after)}


def test_other_paths_are_not_limited() -> None:
    with limited() as (emu, api, project_id):
        assert [a.status_code for a in burst(api, project_id, 6)][-1] == 429
        assert all(api.get("/v1/project").status_code == 200 for _ in range(10))
        fetch = api.session.post(f"{emu.url}/v1/project_logs/{project_id}/fetch", json={})
        assert fetch.status_code == 200


def test_the_window_rolls_and_refused_requests_do_not_count() -> None:
    with limited() as (_, api, project_id):
        first = time.monotonic()
        assert [a.status_code for a in burst(api, project_id, 5)] == [200] * 5
        assert [a.status_code for a in burst(api, project_id, 10)] == [429] * 10
        time.sleep(max(0.0, first + LIMIT[1] + 0.05 - time.monotonic()))
        # the five admitted requests have left the window; the ten 429s never entered it
        assert [a.status_code for a in burst(api, project_id, 6)] == [200] * 5 + [429]


def test_retry_after_can_be_left_out() -> None:
    with limited(rate_limit_retry_after=False) as (_, api, project_id):
        refused = burst(api, project_id, 6)[-1]
        assert refused.status_code == 429
        assert "Retry-After" not in refused.headers
        assert refused.json()["Message"]


def test_object_store_gets_are_not_counted() -> None:
    with running_emulator(strict=False, btql_rate_limit=(2, 30.0), overflow_bytes=0) as emu:
        project = emu.store.add_project("p")
        emu.store.insert_rows("project_logs", project["id"], [{"output": 1}])
        api = Api(emu)
        try:
            answers = [api.btql(sql("project_logs", project["id"])) for _ in range(3)]
        finally:
            api.close()
        assert [(a.status_code, [h.status_code for h in a.history]) for a in answers] == [
            (200, [303]),
            (200, [303]),
            (429, []),
        ]
        assert [e.host for e in emu.request_log].count("object_store") == 2


def test_rate_limiter_retry_time_is_until_the_oldest_leaves() -> None:
    now = [100.0]
    limiter = RateLimiter(3, 10.0, clock=lambda: now[0])
    for moment in (100.0, 102.0, 104.0):
        now[0] = moment
        assert limiter.admit() is None
    now[0] = 105.5
    assert limiter.admit() == pytest.approx(4.5)  # 100 + 10 - 105.5
    now[0] = 110.0  # the first left at exactly 110
    assert limiter.admit() is None
    assert limiter.admit() == pytest.approx(2.0)  # now the one from 102 is the oldest


@pytest.mark.parametrize("bad", [(0, 1.0), (1, 0.0)])
def test_a_limit_needs_requests_and_a_window(bad: tuple[int, float]) -> None:
    with pytest.raises(ValueError, match="rate limit"):
        RateLimiter(*bad)


def test_command_line_rate_limit_syntax() -> None:
    assert rate_limit("20/60") == (20, 60.0)
    assert rate_limit("5/1.5") == (5, 1.5)
    for bad in ("20", "x/60", "0/60", "20/0", "20/-1"):
        with pytest.raises(argparse.ArgumentTypeError):
            rate_limit(bad)
