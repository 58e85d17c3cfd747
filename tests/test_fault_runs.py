"""Syncs against a throttled, failing server: same warehouse as a calm one, waits as asked.

Every timing here is read from the emulator's request log (when each request arrived), not
from the tap's sleep calls, so it measures what the server saw.
"""

from __future__ import annotations

import itertools
import time
from collections import Counter
from email.utils import parsedate_to_datetime
from typing import TYPE_CHECKING, Any

import pytest

from tests.activity import START, ManualClock, annotate, demo_before_a_run
from tests.conftest import OBJECT_STREAMS, is_delete_check, tap_config
from tests.emulator import FaultRule
from tests.warehouse import ROW_STREAM_NAMES, Target, truth

if TYPE_CHECKING:
    from collections.abc import Callable

    from tests.conftest import TapRun
    from tests.emulator import Emulator
    from tests.emulator.server import LoggedRequest

# What a bad night on a hosted plan looks like; the first rule that fires decides a request.
BAD_NIGHT = (
    FaultRule("slow", path="/btql", delay=3.5, times=1),  # past request_timeout, once
    FaultRule("status", status=429, retry_after=1, probability=0.15),
    FaultRule("status", status=503, probability=0.03),
    FaultRule("status", path="/btql", status=500, probability=0.02),
    FaultRule("drop", probability=0.03),
    FaultRule("truncate", probability=0.02),
)
# A timeout well above what a page takes even on a busy machine, so only the slow fault
# times out.
FAST_RETRIES = {"max_backoff_seconds": 0.5, "request_timeout": 2, "page_size": 100}


def _objects(run: TapRun) -> dict[str, dict[str, Any]]:
    return {
        stream: {record["id"]: record for record in run.records(stream)}
        for stream in OBJECT_STREAMS
    }


def _two_syncs(
    run_tap: Callable[..., TapRun], faults: tuple[FaultRule, ...]
) -> tuple[Target, list[TapRun], Emulator, float]:
    """A full sync, the users' annotations, then an incremental sync; both under `faults`."""
    clock = ManualClock(START)
    with demo_before_a_run(clock) as emu:
        for rule in faults:
            emu.faults.add(rule)
        target = Target()
        runs: list[TapRun] = []
        started = time.monotonic()
        for step in ("full", "incremental"):
            if step == "incremental":
                annotate(emu, clock)
            state = runs[-1].final_state if runs else None
            run = run_tap(tap_config(emu, **FAST_RETRIES), state=state)
            assert run.returncode == 0, run.stderr
            received = target.load(run.messages)
            for stream in ROW_STREAM_NAMES:  # retries never emit a row twice
                assert len(received[stream]) == len(set(received[stream])), (step, stream)
            runs.append(run)
        assert target.differences(truth(emu)) == []
        return target, runs, emu, time.monotonic() - started


def test_syncs_under_faults_rebuild_the_same_warehouse_as_calm_syncs(
    run_tap: Callable[..., TapRun],
) -> None:
    calm, calm_runs, calm_emu, calm_seconds = _two_syncs(run_tap, ())
    faulted, faulted_runs, emu, seconds = _two_syncs(run_tap, BAD_NIGHT)

    assert faulted.tables == calm.tables
    for calm_run, faulted_run in zip(calm_runs, faulted_runs, strict=True):
        assert _objects(faulted_run) == _objects(calm_run)
        assert faulted_run.final_state == calm_run.final_state

    faults = Counter(
        entry.fault if entry.fault != "status" else str(entry.status) for entry in emu.request_log
    )
    faults.pop(None, None)
    assert faults["slow"] == 1
    assert faults["429"] >= 3
    assert faults["503"] + faults["500"] >= 1
    assert faults["drop"] >= 1
    retries = sum(run.stderr.count("retrying in") for run in faulted_runs)
    assert retries == sum(faults.values())  # each fault was retried once, and logged
    print(  # noqa: T201 - figures for the README and the closing note
        f"\nfault runs (full + incremental): {len(emu.request_log)} requests, "
        f"{retries} retries ({dict(sorted(faults.items()))}), {seconds:.1f} s; "
        f"calm: {len(calm_emu.request_log)} requests, {calm_seconds:.1f} s"
    )


def _after(log: list[LoggedRequest], entry: LoggedRequest) -> LoggedRequest:
    return log[log.index(entry) + 1]


@pytest.mark.parametrize(
    ("rule", "settings", "waited"),
    [
        (FaultRule("status", path="/btql", status=429, retry_after=2, times=1), {}, (2.0, 2.6)),
        (
            FaultRule("status", path="/v1/project", status=429, retry_after=1, times=1),
            {},
            (1.0, 1.6),
        ),
        (
            FaultRule("status", path="/btql", status=429, retry_after=120, times=1),
            {"max_retry_after_seconds": 1.5},
            (1.5, 2.1),
        ),
        (FaultRule("status", path="/btql", status=503, retry_after=1, times=1), {}, (1.0, 1.6)),
    ],
    ids=["429-seconds", "429-on-a-listing", "429-capped", "503-with-retry-after"],
)
def test_the_retry_waits_what_retry_after_says(
    emulator: Emulator,
    run_tap: Callable[..., TapRun],
    rule: FaultRule,
    settings: dict[str, Any],
    waited: tuple[float, float],
) -> None:
    """`waited`: the shortest and (exclusive) longest gap before the retry, in seconds."""
    emulator.faults.add(rule)
    # A first backoff waits under 1 s, so only Retry-After makes these waits what they are.
    run = run_tap(tap_config(emulator, max_backoff_seconds=30, **settings))
    assert run.returncode == 0, run.stderr
    log = emulator.request_log
    (faulted,) = [entry for entry in log if entry.fault]
    retry = _after(log, faulted)
    assert retry.path == faulted.path
    assert retry.json_body == faulted.json_body  # the same page asked again
    assert waited[0] <= retry.time - faulted.time < waited[1]


def test_retry_after_as_an_http_date_is_honoured(
    emulator: Emulator, run_tap: Callable[..., TapRun]
) -> None:
    emulator.faults.add(
        FaultRule(
            "status", path="/btql", status=429, retry_after=3, retry_after_as_date=True, times=1
        )
    )
    run = run_tap(tap_config(emulator, max_backoff_seconds=30))
    assert run.returncode == 0, run.stderr
    log = emulator.request_log
    (faulted,) = [entry for entry in log if entry.fault]
    asked_until = parsedate_to_datetime(faulted.response_headers["Retry-After"]).timestamp()
    assert asked_until >= int(faulted.time + 3)  # an HTTP date has whole seconds
    retry = _after(log, faulted)
    assert asked_until <= retry.time < asked_until + 0.6


def test_max_requests_per_minute_spaces_every_request(
    emulator: Emulator, run_tap: Callable[..., TapRun]
) -> None:
    per_minute = 240  # one request every 0.25 s
    emulator.faults.add(FaultRule("status", path="/btql", status=503, times=2))
    emulator.faults.add(FaultRule("drop", path="/v1/dataset", times=1))
    run = run_tap(
        tap_config(
            emulator, max_requests_per_minute=per_minute, max_backoff_seconds=0, page_size=200
        )
    )
    assert run.returncode == 0, run.stderr
    arrivals = [entry.time for entry in emulator.request_log]
    assert len(arrivals) >= 20
    gaps = [later - earlier for earlier, later in itertools.pairwise(arrivals)]
    # Retries included. The slack is for when the server thread reads its clock on a busy
    # machine; without pacing these requests come milliseconds apart.
    assert min(gaps) >= 60 / per_minute - 0.05
    per_second = (len(arrivals) - 1) / (arrivals[-1] - arrivals[0])
    assert per_second <= per_minute / 60 * 1.01
    print(  # noqa: T201 - figures for the closing note
        f"\npaced run: {len(arrivals)} requests in {arrivals[-1] - arrivals[0]:.1f} s, "
        f"closest two {min(gaps):.3f} s apart (budget {per_minute}/min)"
    )


def test_big_pages_failing_shrink_the_page_and_every_row_comes_once(
    emulator: Emulator, run_tap: Callable[..., TapRun]
) -> None:
    emulator.faults.add(FaultRule("status", path="/btql", status=504, min_limit=40))
    run = run_tap(tap_config(emulator, max_backoff_seconds=0))
    assert run.returncode == 0, run.stderr
    target = Target()
    received = target.load(run.messages)
    for stream in ROW_STREAM_NAMES:
        assert len(received[stream]) == len(set(received[stream])), stream
    assert target.differences(truth(emulator)) == []

    logs = [
        (entry.json_body["query"]["limit"], entry.status)
        for entry in emulator.request_log
        if entry.path == "/btql"
        and not is_delete_check(entry.json_body)
        and entry.json_body["query"]["from"]["name"]["name"] == ["project_logs"]
    ]
    assert logs[:6] == [(1000, 504), (500, 504), (250, 504), (125, 504), (62, 504), (31, 200)]
    assert all(status == (200 if limit <= 40 else 504) for limit, status in logs)
    # After a run of good pages it tries a bigger one again, and falls back again.
    assert (62, 504) in logs[6:]
    assert "asking for 31 rows per page" in run.stderr


def test_a_413_halves_the_group_not_the_page(
    emulator: Emulator, run_tap: Callable[..., TapRun]
) -> None:
    # Too many ids in one request body: queries of three or more objects are refused.
    emulator.faults.add(FaultRule("status", path="/btql", status=413, min_ids=3))
    run = run_tap(tap_config(emulator, max_backoff_seconds=0))
    assert run.returncode == 0, run.stderr
    assert "413" in run.stderr
    target = Target()
    target.load(run.messages)
    assert target.differences(truth(emulator)) == []
    btql = [
        entry
        for entry in emulator.request_log
        if entry.path == "/btql" and not is_delete_check(entry.json_body)
    ]
    assert {entry.json_body["query"]["limit"] for entry in btql} == {1000}
    assert all(len(e.json_body["query"]["from"]["args"]) <= 2 for e in btql if e.status == 200)
