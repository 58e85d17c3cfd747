"""Each fault kind, as a client on the wire sees it."""

from __future__ import annotations

import time
from email.utils import parsedate_to_datetime
from typing import Any

import pytest
import requests

from tests.emulator import Emulator, FaultRule, running_emulator
from tests.emulator.conftest import Api, ast, sql


@pytest.fixture
def project_id(emu: Emulator) -> str:
    project = emu.store.add_project("p")
    emu.store.insert_rows("project_logs", project["id"], [{"output": n} for n in range(5)])
    return str(project["id"])


def test_status_fault_with_retry_after_for_n_requests(
    api: Api, emu: Emulator, project_id: str
) -> None:
    rule = emu.faults.add(FaultRule("status", path="/btql", status=429, retry_after=7, times=2))
    statuses = []
    for _ in range(3):
        response = api.btql(sql("project_logs", project_id))
        statuses.append(response.status_code)
        if response.status_code == 429:
            assert response.headers["Retry-After"] == "7"
            assert response.json()["Message"]
    assert statuses == [429, 429, 200]
    assert emu.faults.fired(rule) == 2
    assert [entry.fault for entry in emu.request_log] == ["status", "status", None]


def test_retry_after_as_an_http_date(api: Api, emu: Emulator, project_id: str) -> None:
    emu.faults.add(
        FaultRule("status", path="/btql", status=429, retry_after=30, retry_after_as_date=True)
    )
    before = time.time()
    response = api.btql(sql("project_logs", project_id))
    assert response.status_code == 429
    when = parsedate_to_datetime(response.headers["Retry-After"]).timestamp()
    assert before + 29 <= when <= time.time() + 30


def test_request_log_time_is_arrival_not_answer(api: Api, emu: Emulator) -> None:
    emu.faults.add(FaultRule("slow", path="/v1/project", delay=0.5, times=1))
    before = time.time()
    api.get("/v1/project")
    (entry,) = emu.request_log
    assert before <= entry.time < before + 0.4


def test_path_restricts_a_fault_and_none_matches_everything(
    api: Api, emu: Emulator, project_id: str
) -> None:
    emu.faults.add(FaultRule("status", path="/btql", status=503))
    assert api.get("/v1/project").status_code == 200
    emu.faults.clear()
    emu.faults.add(FaultRule("status", status=502))
    assert api.get("/v1/project").status_code == 502
    assert api.get(f"/v1/project/{project_id}").status_code == 502


def test_min_limit_faults_only_big_pages(api: Api, emu: Emulator, project_id: str) -> None:
    emu.faults.add(FaultRule("status", path="/btql", status=504, min_limit=250))
    assert api.btql(sql("project_logs", project_id)).status_code == 504  # no LIMIT = 1000
    assert api.btql(sql("project_logs", project_id, limit=500)).status_code == 504
    assert api.btql(sql("project_logs", project_id, limit=250)).status_code == 200


def test_drop_closes_the_connection_without_an_answer(
    api: Api, emu: Emulator, project_id: str
) -> None:
    emu.faults.add(FaultRule("drop", path="/btql", times=1))
    with pytest.raises(requests.ConnectionError):
        api.btql(sql("project_logs", project_id))
    assert api.btql(sql("project_logs", project_id)).status_code == 200
    assert emu.request_log[0].status is None
    assert emu.request_log[0].fault == "drop"


def test_slow_answers_normally_after_the_delay(api: Api, emu: Emulator, project_id: str) -> None:
    emu.faults.add(FaultRule("slow", path="/btql", delay=0.3))
    started = time.monotonic()
    response = api.btql(sql("project_logs", project_id))
    assert time.monotonic() - started >= 0.3
    assert len(response.json()["data"]) == 5


def test_truncate_sends_half_a_body(api: Api, emu: Emulator, project_id: str) -> None:
    emu.faults.add(FaultRule("truncate", path="/btql", times=1))
    with pytest.raises(requests.exceptions.ChunkedEncodingError):
        api.session.post(
            emu.url + "/btql",
            json={"query": sql("project_logs", project_id)},
            headers={"Accept-Encoding": "identity"},
        )
    assert emu.request_log[0].status == 200


def test_garbage_is_a_200_that_is_not_json(api: Api, emu: Emulator, project_id: str) -> None:
    emu.faults.add(FaultRule("garbage", path="/btql"))
    response = api.btql(sql("project_logs", project_id))
    assert response.status_code == 200
    with pytest.raises(requests.exceptions.JSONDecodeError):
        response.json()


def test_probability_is_deterministic_for_a_seed(project_id: str) -> None:
    def pattern(seed: int) -> list[int]:
        with running_emulator(strict=False, fault_seed=seed) as emulator:
            emulator.faults.add(FaultRule("status", status=500, probability=0.5))
            api = Api(emulator)
            try:
                return [api.get("/v1/project").status_code for _ in range(20)]
            finally:
                api.close()

    first = pattern(3)
    assert first == pattern(3)
    assert set(first) == {200, 500}
    assert first != pattern(4)


@pytest.mark.parametrize(
    "kwargs",
    [
        {"kind": "explode"},
        {"kind": "status"},
        {"kind": "status", "status": 99},
        {"kind": "slow"},
        {"kind": "drop", "probability": 1.5},
        {"kind": "drop", "times": 0},
    ],
)
def test_impossible_rules_are_rejected(kwargs: dict[str, Any]) -> None:
    with pytest.raises(ValueError):  # noqa: PT011 - each case has its own message
        FaultRule(**kwargs)


def test_sql_only_faults_hit_sql_text_and_nothing_else(
    api: Api, emu: Emulator, project_id: str
) -> None:
    emu.faults.add(FaultRule("status", path="/btql", status=400, sql_only=True))
    assert api.btql(sql("project_logs", project_id)).status_code == 400
    lower = f"  select * from project_logs('{project_id}')"  # noqa: S608
    assert api.btql(lower).status_code == 400
    text = f"select: * | from: project_logs('{project_id}')"  # BTQL text, not SQL
    assert api.btql(text).status_code == 200
    assert api.btql(ast("project_logs", project_id)).status_code == 200
    assert api.get("/v1/project").status_code == 200
    assert [entry.fault for entry in emu.request_log] == ["status", "status", None, None, None]
