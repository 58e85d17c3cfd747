"""Big /btql answers redirected (303) to the loopback object store (contract, section 3).

Every test talks real HTTP: the 303 from the API port, then a GET of the pre-signed URL on the
object store's own port, without the API key.
"""

from __future__ import annotations

import contextlib
import gzip
import json
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qs, urlsplit

import pytest
import requests

from tests.emulator import OBJECT_STORE_BUCKET, Emulator, FaultRule, running_emulator
from tests.emulator.conftest import FIXED_NOW, Api, sql

if TYPE_CHECKING:
    from collections.abc import Iterator

    from tests.emulator.server import OverflowCursor

THRESHOLD = 4000  # one ~1.6 KB row plus the ~1.4 KB envelope fits; two rows do not
MODES: tuple[OverflowCursor, ...] = ("body", "header", "meta_underscore", "meta_dash")
_CURSOR_PLACES: dict[str, set[str]] = {
    "body": {"body", "x-bt-cursor"},
    "header": {"x-bt-cursor"},
    "meta_underscore": {"x-amz-meta-bt_cursor"},
    "meta_dash": {"x-amz-meta-bt-cursor"},
}


@contextlib.contextmanager
def overflowing(rows: int = 11, **kwargs: Any) -> Iterator[tuple[Emulator, Api, str]]:
    """A started emulator with overflow on, one project of `rows` ~1.6 KB rows, and a client."""
    kwargs.setdefault("overflow_bytes", THRESHOLD)
    with running_emulator(strict=False, clock=lambda: FIXED_NOW, **kwargs) as emu:
        project = emu.store.add_project("big")
        emu.store.insert_rows(
            "project_logs", project["id"], [{"output": f"{n:03d}" + "x" * 600} for n in range(rows)]
        )
        api = Api(emu)
        try:
            yield emu, api, str(project["id"])
        finally:
            api.close()


def post(api: Api, query: Any, fmt: str = "json", **headers: str) -> requests.Response:
    """POST /btql without following a redirect."""
    return api.session.post(
        api.emu.url + "/btql",
        json={"query": query, "fmt": fmt},
        allow_redirects=False,
        headers=headers,
    )


def follow(location: str, **headers: str) -> requests.Response:
    """GET a pre-signed URL the way a careful client does: a fresh request, no API key."""
    return requests.get(location, headers=headers, timeout=10)


def cursor_places(redirect: requests.Response, stored: requests.Response) -> dict[str, str]:
    """Every place a redirected page carries a cursor, with the cursor found there."""
    found = {
        "body": stored.json().get("cursor"),
        "x-bt-cursor": redirect.headers.get("x-bt-cursor"),
        "x-amz-meta-bt_cursor": stored.headers.get("x-amz-meta-bt_cursor"),
        "x-amz-meta-bt-cursor": stored.headers.get("x-amz-meta-bt-cursor"),
    }
    return {place: cursor for place, cursor in found.items() if cursor}


def test_a_big_answer_is_a_303_to_the_object_store_holding_the_same_json() -> None:
    with overflowing() as (emu, api, project_id):
        query = sql("project_logs", project_id, limit=5)
        redirect = post(api, query)
        assert redirect.status_code == 303
        assert redirect.content == b""
        location = urlsplit(redirect.headers["Location"])
        assert location.scheme == "http"
        assert location.hostname == "127.0.0.1"
        assert location.port != urlsplit(emu.url).port  # another host, by port
        assert f"{location.scheme}://{location.netloc}" == emu.object_store_url
        bucket, key = location.path.lstrip("/").split("/", 1)
        assert bucket == OBJECT_STORE_BUCKET
        assert key
        signed = parse_qs(location.query)
        assert signed["X-Amz-Expires"] == ["300"]
        assert signed["X-Amz-Signature"][0]

        stored = follow(redirect.headers["Location"])
        assert stored.status_code == 200
        assert stored.headers["Content-Type"] == "application/json"
        page = stored.json()
        assert [row["id"] for row in page["data"]] == [
            row["id"] for row in emu.store.rows("project_logs", project_id)[:5]
        ]
        assert page["cursor"] == redirect.headers["x-bt-cursor"]

        emu.overflow_bytes = None  # the same query answered directly: byte for byte the same
        direct = post(api, query)
        assert direct.status_code == 200
        assert stored.content == direct.content


def test_small_answers_and_errors_are_not_redirected() -> None:
    with overflowing() as (emu, api, project_id):
        one_row = post(api, sql("project_logs", project_id, limit=1))
        assert one_row.status_code == 200
        assert len(one_row.content) <= THRESHOLD
        assert len(one_row.json()["data"]) == 1
        empty = post(api, sql("project_logs", project_id, where="id = 'none'"))
        assert (empty.status_code, empty.json()["data"]) == (200, [])
    with overflowing(overflow_bytes=0) as (emu, api, project_id):
        assert post(api, "SELECT nonsense").status_code == 400
        assert api.get("/v1/project").status_code == 200
        fetch = api.session.post(f"{emu.url}/v1/project_logs/{project_id}/fetch", json={})
        assert fetch.status_code == 200
        assert post(api, sql("project_logs", project_id, limit=1)).status_code == 303
        assert {entry.host for entry in emu.request_log} == {"api"}  # nothing was followed


@pytest.mark.parametrize("threshold", [THRESHOLD, 0], ids=["big-pages", "every-page"])
@pytest.mark.parametrize("mode", MODES)
def test_paging_finds_the_cursor_only_where_overflow_cursor_puts_it(
    mode: OverflowCursor, threshold: int
) -> None:
    with overflowing(overflow_bytes=threshold, overflow_cursor=mode) as (emu, api, project_id):
        rows: list[dict[str, Any]] = []
        statuses: list[int] = []
        cursor: str | None = None
        while True:
            response = post(api, sql("project_logs", project_id, limit=5, cursor=cursor))
            statuses.append(response.status_code)
            if response.status_code == 303:
                stored = follow(response.headers["Location"])
                assert stored.status_code == 200
                page = stored.json()
                places = cursor_places(response, stored)
                if page["data"]:
                    assert set(places) == _CURSOR_PLACES[mode]
                    assert len(set(places.values())) == 1  # one cursor, wherever it is
                else:
                    assert places == {}  # the end carries no cursor anywhere
            else:
                assert response.status_code == 200
                page = response.json()
                assert page.get("cursor") == response.headers.get("x-bt-cursor")
                places = {"here": page["cursor"]} if "cursor" in page else {}
            if not page["data"]:
                break
            rows += page["data"]
            cursor = next(iter(places.values()))
        # 11 rows by 5: two full pages, one single-row page, then the empty end
        assert statuses == ([303, 303, 200, 200] if threshold else [303] * 4)
        assert rows == emu.store.rows("project_logs", project_id)
        followed = [entry for entry in emu.request_log if entry.host == "object_store"]
        assert len(followed) == statuses.count(303)
        assert [entry.path for entry in emu.request_log if entry.host == "api"] == ["/btql"] * 4


@pytest.mark.parametrize("mode", ["body", "meta_dash"])
def test_jsonl_answers_are_redirected_with_their_lines(mode: OverflowCursor) -> None:
    with overflowing(overflow_cursor=mode) as (emu, api, project_id):
        redirect = post(api, sql("project_logs", project_id, limit=5), fmt="jsonl")
        assert redirect.status_code == 303
        stored = follow(redirect.headers["Location"])
        assert stored.headers["Content-Type"] == "application/x-ndjson"
        lines = stored.text.splitlines()
        truth = emu.store.rows("project_logs", project_id)[:5]
        assert [json.loads(line) for line in lines] == truth
        places = cursor_places_jsonl(redirect, stored)
        assert set(places) == {"body": {"x-bt-cursor"}, "meta_dash": {"x-amz-meta-bt-cursor"}}[mode]


def cursor_places_jsonl(redirect: requests.Response, stored: requests.Response) -> dict[str, str]:
    found = {
        "x-bt-cursor": redirect.headers.get("x-bt-cursor"),
        "x-amz-meta-bt-cursor": stored.headers.get("x-amz-meta-bt-cursor"),
    }
    return {place: cursor for place, cursor in found.items() if cursor}


def test_requests_following_the_303_sends_no_api_key_and_the_log_tells_hosts_apart() -> None:
    with overflowing() as (emu, api, project_id):
        response = api.btql(sql("project_logs", project_id, limit=5))  # follows redirects
        assert response.status_code == 200
        assert [r.status_code for r in response.history] == [303]
        assert len(response.json()["data"]) == 5
        btql, stored = emu.request_log
        assert (btql.host, btql.method, btql.path, btql.status) == ("api", "POST", "/btql", 303)
        assert btql.headers["authorization"] == f"Bearer {emu.api_key}"
        assert btql.response_headers["Location"] == response.url
        assert (stored.host, stored.method, stored.status) == ("object_store", "GET", 200)
        assert stored.path.startswith(f"/{OBJECT_STORE_BUCKET}/")
        assert "authorization" not in stored.headers
        assert emu.api_key not in json.dumps(stored.headers)


def test_an_authorization_header_is_refused_with_400_and_logged() -> None:
    with overflowing() as (emu, api, project_id):
        location = post(api, sql("project_logs", project_id, limit=5)).headers["Location"]
        refused = follow(location, Authorization=f"Bearer {emu.api_key}")
        assert refused.status_code == 400
        assert refused.headers["Content-Type"] == "application/xml"
        assert "<Code>InvalidArgument</Code>" in refused.text
        assert "Only one auth mechanism allowed" in refused.text
        assert emu.api_key not in refused.text
        entry = emu.request_log[-1]
        assert (entry.host, entry.status) == ("object_store", 400)
        assert entry.headers["authorization"] == f"Bearer {emu.api_key}"
        assert follow(location).status_code == 200  # the URL itself still works


def test_unknown_keys_and_wrong_signatures_are_404() -> None:
    with overflowing() as (emu, api, project_id):
        location = post(api, sql("project_logs", project_id, limit=5)).headers["Location"]
        signature = parse_qs(urlsplit(location).query)["X-Amz-Signature"][0]
        forged = location.replace(signature, "0" * len(signature))
        unsigned = location.split("?", 1)[0]
        unknown = f"{emu.object_store_url}/{OBJECT_STORE_BUCKET}/btql/nope.json?X-Amz-Signature=x"
        for url in (forged, unsigned, unknown):
            response = follow(url)
            assert response.status_code == 404, url
            assert "<Code>NoSuchKey</Code>" in response.text
        assert follow(location).status_code == 200


def test_urls_expire_after_their_ttl_with_403() -> None:
    with overflowing(overflow_url_ttl=0.3) as (_, api, project_id):
        query = sql("project_logs", project_id, limit=5)
        location = post(api, query).headers["Location"]
        assert parse_qs(urlsplit(location).query)["X-Amz-Expires"] == ["1"]  # whole seconds
        assert follow(location).status_code == 200
        time.sleep(0.4)
        expired = follow(location)
        assert expired.status_code == 403
        assert "<Code>AccessDenied</Code><Message>Request has expired</Message>" in expired.text
        fresh = post(api, query).headers["Location"]  # asking /btql again gives a working URL
        assert fresh != location
        assert follow(fresh).status_code == 200


def test_expire_overflow_urls_ends_every_url_issued_so_far() -> None:
    with overflowing() as (emu, api, project_id):
        query = sql("project_logs", project_id, limit=5)
        location = post(api, query).headers["Location"]
        emu.expire_overflow_urls()
        assert follow(location).status_code == 403
        assert follow(post(api, query).headers["Location"]).status_code == 200


def test_the_object_store_gzips_when_asked() -> None:
    with overflowing() as (_, api, project_id):
        location = post(api, sql("project_logs", project_id, limit=5)).headers["Location"]
        zipped = requests.get(location, headers={"Accept-Encoding": "gzip"}, stream=True, timeout=5)
        assert zipped.headers["Content-Encoding"] == "gzip"
        raw = zipped.raw.read(decode_content=False)
        assert len(json.loads(gzip.decompress(raw))["data"]) == 5
        plain = follow(location, **{"Accept-Encoding": "identity"})
        assert "Content-Encoding" not in plain.headers
        assert plain.content == gzip.decompress(raw)


def test_faults_on_the_bucket_path_hit_only_the_object_store() -> None:
    with overflowing(overflow_url_ttl=0.3) as (emu, api, project_id):
        query = sql("project_logs", project_id, limit=5)
        bucket = f"/{OBJECT_STORE_BUCKET}"
        status = emu.faults.add(FaultRule("status", path=bucket, status=503, times=1))
        location = post(api, query).headers["Location"]  # /btql is not faulted
        failed = follow(location)
        assert failed.status_code == 503
        assert "<Code>SlowDown</Code>" in failed.text
        assert follow(location).status_code == 200
        assert emu.faults.fired(status) == 1

        emu.faults.add(FaultRule("drop", path=bucket, times=1))
        with pytest.raises(requests.ConnectionError):
            follow(location)
        assert follow(location).status_code == 200

        emu.faults.add(FaultRule("slow", path=bucket, delay=0.4, times=1))
        late = post(api, query).headers["Location"]
        assert follow(late).status_code == 403  # expired while the store was slow
        faulted = [(e.host, e.fault, e.status) for e in emu.request_log if e.fault]
        assert faulted == [
            ("object_store", "status", 503),
            ("object_store", "drop", None),
            ("object_store", "slow", 403),
        ]


def test_the_object_store_runs_only_with_overflow_and_stops_with_the_emulator() -> None:
    with (
        running_emulator(strict=False) as plain,
        pytest.raises(RuntimeError, match="overflow_bytes"),
    ):
        _ = plain.object_store_url
    with overflowing() as (emu, api, project_id):
        location = post(api, sql("project_logs", project_id, limit=5)).headers["Location"]
        emu.stop()
        with pytest.raises(requests.ConnectionError):
            follow(location)
        with pytest.raises(RuntimeError):
            _ = emu.object_store_url


@pytest.mark.parametrize(
    "kwargs", [{"overflow_bytes": -1}, {"overflow_bytes": 10, "overflow_cursor": "trailer"}]
)
def test_bad_overflow_options_are_refused(kwargs: dict[str, Any]) -> None:
    with pytest.raises(ValueError, match="overflow"):
        Emulator(**kwargs)


def test_command_line_flags_turn_on_overflow_and_the_rate_limit() -> None:
    repo = Path(__file__).resolve().parents[2]
    command = [sys.executable, "-m", "tests.emulator", "--port", "0", "--demo"]
    command += ["--api-key", "sk-cli", "--overflow-bytes", "0", "--overflow-cursor", "header"]
    command += ["--btql-rate-limit", "1/60"]
    with subprocess.Popen(command, cwd=repo, stdout=subprocess.PIPE, text=True) as process:
        assert process.stdout is not None
        try:
            lines = [process.stdout.readline() for _ in range(4)]
            url = lines[1].rsplit(" ", 1)[-1].strip()
            store_url = lines[3].rsplit(" ", 1)[-1].strip()
            assert store_url.startswith("http://127.0.0.1:")
            assert store_url != url
            with requests.Session() as session:
                session.headers["Authorization"] = "Bearer sk-cli"
                projects = session.get(url + "/v1/project", timeout=5).json()["objects"]
                body = {"query": sql("project_logs", projects[0]["id"], limit=3)}
                first = session.post(url + "/btql", json=body, allow_redirects=False, timeout=5)
                second = session.post(url + "/btql", json=body, allow_redirects=False, timeout=5)
            assert (first.status_code, second.status_code) == (303, 429)
            assert first.headers["Location"].startswith(store_url + "/")
            assert "x-bt-cursor" in first.headers  # --overflow-cursor header
            process.send_signal(signal.SIGTERM)
            assert process.wait(timeout=10) == 0
        finally:
            if process.poll() is None:
                process.kill()
