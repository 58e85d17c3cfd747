"""The API key stays secret, TLS is verified, and names from config or the API stay data."""

from __future__ import annotations

import contextlib
import socket
import ssl
import threading
from typing import TYPE_CHECKING, Any

import pytest
import trustme

from tests.conftest import is_delete_check
from tests.emulator import FaultRule, running_emulator
from tests.throwaway_server import answer, serve

if TYPE_CHECKING:
    from collections.abc import Callable, Iterator
    from http.server import BaseHTTPRequestHandler
    from pathlib import Path

    from tests.conftest import TapRun
    from tests.emulator import Emulator

CANARY_KEY = "sk-CANARY-do-not-print-7e3f0a9c51b24d68a0c4e2f1b3d5a7c9"
DEBUG = {"TAP_BRAINTRUST_LOGLEVEL": "DEBUG"}


@pytest.fixture
def canary_emulator() -> Iterator[Emulator]:
    with running_emulator(api_key=CANARY_KEY, demo_seed=7) as emu:
        yield emu


def _leaks(run: TapRun) -> list[str]:
    """Where the key (or a recognisable part of it) shows up in what the tap printed."""
    fragments = (CANARY_KEY, CANARY_KEY[10:40], "CANARY")
    return [
        f"{where}: {fragment}"
        for where, text in (("stdout", run.stdout), ("stderr", run.stderr))
        for fragment in fragments
        if fragment in text
    ]


def test_a_debug_sync_through_faults_never_prints_the_key(
    canary_emulator: Emulator, run_tap: Callable[..., TapRun]
) -> None:
    emu = canary_emulator
    for rule in (
        FaultRule("status", path="/btql", status=429, retry_after=1, times=1),
        FaultRule("status", path="/v1/experiment", status=503, times=1),
        FaultRule("drop", path="/btql", times=1),
        FaultRule("truncate", path="/v1/dataset", times=1),
        FaultRule("garbage", path="/btql", times=1),
    ):
        emu.faults.add(rule)
    config = {"api_key": CANARY_KEY, "api_url": emu.url, "max_backoff_seconds": 0.1}
    run = run_tap(config, env=DEBUG)
    assert run.returncode == 0, run.stderr
    assert " | DEBUG " in run.stderr  # really at DEBUG, request logging included
    assert "/btql HTTP/1.1" in run.stderr
    assert run.stderr.count("retrying in") == 5
    assert [m for m in run.messages if m["type"] == "STATE"]
    assert _leaks(run) == []
    # The emulator did receive the key, so it was really sent, only never printed.
    assert all(
        entry.headers["authorization"] == f"Bearer {CANARY_KEY}" for entry in emu.request_log
    )


def test_the_key_from_the_environment_is_not_printed_either(
    canary_emulator: Emulator, run_tap: Callable[..., TapRun]
) -> None:
    env = {
        **DEBUG,
        "TAP_BRAINTRUST_API_KEY": CANARY_KEY,
        "TAP_BRAINTRUST_API_URL": canary_emulator.url,
    }
    for args in (("--about",), ("--about", "--format=json"), ("--discover",), ()):
        run = run_tap(None, "--config", "ENV", *args, env=env)
        assert run.returncode == 0, run.stderr
        assert _leaks(run) == [], args
    assert run.records("project_logs")  # the last run synced, with the key from ENV


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        ({"page_size": 0}, "page_size"),
        ({"project_id": "p"}, "unknown setting 'project_id'"),
        ({"api_url": "ftp://example.invalid"}, "api_url must be"),
    ],
    ids=["out-of-range", "misspelt", "bad-url"],
)
def test_config_errors_at_debug_do_not_print_the_key(
    canary_emulator: Emulator,
    run_tap: Callable[..., TapRun],
    settings: dict[str, Any],
    message: str,
) -> None:
    config = {"api_key": CANARY_KEY, "api_url": canary_emulator.url, **settings}
    run = run_tap(config, env=DEBUG)
    assert run.returncode == 1
    assert message in run.stderr
    assert _leaks(run) == []


def test_a_wrong_key_is_not_printed(emulator: Emulator, run_tap: Callable[..., TapRun]) -> None:
    run = run_tap({"api_key": CANARY_KEY, "api_url": emulator.url}, env=DEBUG)
    assert run.returncode == 1
    assert "check `api_key`" in run.stderr
    assert _leaks(run) == []


@pytest.fixture(scope="module")
def private_ca(tmp_path_factory: pytest.TempPathFactory) -> tuple[trustme.CA, Path]:
    """A certificate authority no system trusts, and its PEM file."""
    ca = trustme.CA()
    pem = tmp_path_factory.mktemp("ca") / "private-ca.pem"
    ca.cert_pem.write_to_path(str(pem))
    return ca, pem


@pytest.fixture
def tls_data_plane(private_ca: tuple[trustme.CA, Path]) -> Iterator[tuple[str, list[str]]]:
    """An HTTPS server on loopback with a certificate from the private CA, listing nothing."""
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    private_ca[0].issue_cert("127.0.0.1").configure_cert(context)

    def no_objects(handler: BaseHTTPRequestHandler) -> None:
        answer(handler, 200, {"objects": []})

    with serve(no_objects, tls=context) as server:
        yield server


def test_tls_is_verified_and_a_private_ca_needs_ca_bundle(
    tls_data_plane: tuple[str, list[str]],
    private_ca: tuple[trustme.CA, Path],
    run_tap: Callable[..., TapRun],
) -> None:
    url, paths = tls_data_plane
    untrusted = run_tap({"api_key": CANARY_KEY, "api_url": url})
    assert untrusted.returncode == 1
    assert "certificate failed verification (unable to get local issuer" in untrusted.stderr
    assert "set `ca_bundle`" in untrusted.stderr
    assert "retrying" not in untrusted.stderr  # a trust problem is not retried
    assert paths == []  # nothing, key included, was sent over the untrusted connection

    trusted = run_tap({"api_key": CANARY_KEY, "api_url": url, "ca_bundle": str(private_ca[1])})
    assert trusted.returncode == 0, trusted.stderr
    assert paths == ["/v1/project?limit=1000"]
    assert _leaks(untrusted) == _leaks(trusted) == []


def test_a_tls_connection_cut_short_is_retried_not_blamed_on_trust(
    run_tap: Callable[..., TapRun],
) -> None:
    # A load balancer that reads the ClientHello and hangs up: a transient failure.
    accepted: list[int] = []
    with socket.create_server(("127.0.0.1", 0)) as listener:

        def hang_up() -> None:
            with contextlib.suppress(OSError):
                while True:
                    connection, _ = listener.accept()
                    accepted.append(1)
                    connection.recv(4096)  # closing with it unread would send a reset
                    connection.close()

        thread = threading.Thread(target=hang_up, daemon=True)
        thread.start()
        url = f"https://127.0.0.1:{listener.getsockname()[1]}"
        try:
            run = run_tap({"api_key": CANARY_KEY, "api_url": url, "max_tries": 3})
        finally:
            listener.shutdown(socket.SHUT_RDWR)  # wakes the accept() so the thread ends
            thread.join(timeout=5)
    assert run.returncode == 1
    assert run.stderr.count("(SSLError); retrying in") == 2, run.stderr[-3000:]
    assert "got no usable answer (SSLError). Gave up after 3 tries" in run.stderr
    assert "verification" not in run.stderr
    assert len(accepted) == 3


def test_https_to_a_plain_http_port_fails_at_once(
    canary_emulator: Emulator, run_tap: Callable[..., TapRun]
) -> None:
    url = canary_emulator.url.replace("http://", "https://")
    run = run_tap({"api_key": CANARY_KEY, "api_url": url})
    assert run.returncode == 1
    assert "TLS failed (WRONG_VERSION_NUMBER)" in run.stderr
    assert "uses https only where the data plane serves TLS" in run.stderr
    assert "retrying" not in run.stderr


INJECTION = "x') OR 1=1 --"
QUOTED = 'O\'Brien "evals" ✓'


def test_names_that_look_like_sql_select_only_their_own_rows(
    run_tap: Callable[..., TapRun],
) -> None:
    with running_emulator(api_key=CANARY_KEY) as emu:
        store = emu.store
        wanted = store.add_project(INJECTION)
        other = store.add_project("other")
        for project in (wanted, other):
            store.insert_rows("project_logs", project["id"], [{"input": project["name"]}])
            experiment = store.add_experiment(project["id"], QUOTED)
            store.insert_rows("experiment", experiment["id"], [{"input": project["name"]}])
            dataset = store.add_dataset(project["id"], INJECTION)
            store.insert_rows("dataset", dataset["id"], [{"input": project["name"]}])
        config = {"api_key": CANARY_KEY, "api_url": emu.url, "project_names": [INJECTION]}
        run = run_tap(config)
        assert run.returncode == 0, run.stderr
        queries = [
            entry.json_body["query"]
            for entry in emu.request_log
            if entry.path == "/btql" and not is_delete_check(entry.json_body)
        ]

    rows = [
        record
        for stream in ("project_logs", "experiment_events", "dataset_events")
        for record in run.records(stream)
    ]
    assert [record["input"] for record in rows] == [INJECTION] * 3
    assert [p["name"] for p in run.records("projects")] == [INJECTION]
    assert [e["name"] for e in run.records("experiments")] == [QUOTED]
    # Each query reads one object by id, passed as a literal, never a name.
    read = {query["from"]["args"][0]["value"] for query in queries}
    assert wanted["id"] in read
    assert not any(INJECTION in str(query) or QUOTED in str(query) for query in queries)
