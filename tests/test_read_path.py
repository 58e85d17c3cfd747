"""The fast read path keeps every value exact and every SDK feature working.

Rows are decoded with msgspec into fields left as the JSON text Braintrust sent, written by a
buffered msgspec writer, and the next page is fetched while this one is written. These tests
hold that path to what the plain one guaranteed: values byte for byte (and text msgspec
refuses), fields outside the schema, BATCH files, flattening, nested deselection, at most one
request out, and no retrying once nobody wants the page.
"""

from __future__ import annotations

import contextlib
import gzip
import io
import json
import re
import threading
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

import msgspec
import pytest
from singer_sdk.singerlib import RecordMessage

from tap_braintrust.queries import ObjectBound, RowsQuery
from tap_braintrust.streams import ProjectLogsStream
from tap_braintrust.tap import TapBraintrust
from tap_braintrust.writer import BufferedMessageWriter
from tests.conftest import API_KEY, select_only, tap_config
from tests.emulator import running_emulator
from tests.throwaway_server import answer, serve

if TYPE_CHECKING:
    from collections.abc import Callable, Iterator
    from http.server import BaseHTTPRequestHandler

    from tests.conftest import TapRun
    from tests.emulator import Emulator

# Values a decode-and-re-encode could change: a float written as 1.0, an integer beyond 64
# bits, key order, non-ASCII text, and a string cut inside a surrogate pair upstream.
EXACT_OUTPUT = {"z": 1.0, "a": [2**70, 0.1, -0.0], "é": "✓ naïve"}
CUT_TEXT = "the answer is \ud83d"


@pytest.fixture
def logs_emulator() -> Iterator[tuple[Emulator, str]]:
    """A project with rows holding values that are easy to get subtly wrong."""
    with running_emulator(api_key=API_KEY) as emu:
        project = emu.store.add_project("exact")
        emu.store.insert_rows(
            "project_logs",
            project["id"],
            [
                {"id": "exact", "output": EXACT_OUTPUT, "metrics": {"tokens": 7, "end": 2.5}},
                {"id": "cut", "output": CUT_TEXT, "metadata": {"note": CUT_TEXT}},
                {"id": "plain", "input": {"q": "2+2?"}, "output": "4", "tags": ["ok"]},
            ],
        )
        yield emu, project["id"]


def logs_catalog(run_tap: Callable[..., TapRun]) -> dict[str, Any]:
    return select_only(json.loads(run_tap(None, "--discover").stdout), "project_logs")


def by_id(records: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    return {record["id"]: record for record in records}


def test_values_reach_the_output_as_braintrust_sent_them(
    logs_emulator: tuple[Emulator, str], run_tap: Callable[..., TapRun]
) -> None:
    emu, project_id = logs_emulator
    # One row per page: the cut text's page is decoded in full, the others pass through.
    run = run_tap(tap_config(emu, page_size=1), catalog=logs_catalog(run_tap))
    assert run.returncode == 0, run.stderr
    sent = {row["id"]: row for row in emu.store.rows("project_logs", project_id)}
    exact_line = next(line for line in run.stdout.splitlines() if '"id":"exact"' in line)
    # The very bytes: 1.0 stays 1.0, 2**70 stays whole, keys keep their order.
    server_text = json.dumps(EXACT_OUTPUT, ensure_ascii=False, separators=(",", ":"))
    assert f'"output":{server_text}' in exact_line
    records = by_id(run.records("project_logs"))
    assert records["cut"]["output"] == CUT_TEXT  # msgspec refuses it; the fallback keeps it
    assert records["cut"]["metadata"] == {"note": CUT_TEXT}
    for row_id, row in sent.items():
        assert records[row_id] == {**row, "created": records[row_id]["created"]}


def _key(page: int) -> str:
    """The `_pagination_key` of the one row on page `page` of a fake server."""
    return f"p{page:020d}"


def _remembering_page(
    respond: Callable[[BaseHTTPRequestHandler], None],
) -> Callable[[BaseHTTPRequestHandler], None]:
    """`respond`, with the page a /btql request asks for in `handler.page` first: 0, or
    the one after the row whose `_pagination_key` its keyset condition names."""

    def wrapped(handler: BaseHTTPRequestHandler) -> None:
        body = handler.body  # type: ignore[attr-defined]  # kept by serve()
        keys = re.findall(r'"(p[0-9]{20})"', body.decode() if body else "")
        handler.page = int(keys[0][1:]) + 1 if keys else 0  # type: ignore[attr-defined]
        respond(handler)

    return wrapped


def test_batch_files_hold_the_same_rows_and_state_as_records(
    emulator: Emulator, run_tap: Callable[..., TapRun], tmp_path: Path
) -> None:
    catalog = logs_catalog(run_tap)
    plain = run_tap(tap_config(emulator), catalog=catalog)
    batch_config = {
        "encoding": {"format": "jsonl", "compression": "gzip"},
        "storage": {"root": (tmp_path / "batches").as_uri(), "prefix": "logs-"},
    }
    (tmp_path / "batches").mkdir()
    batched = run_tap(tap_config(emulator, batch_config=batch_config), catalog=catalog)
    assert plain.returncode == batched.returncode == 0, batched.stderr
    assert not batched.records("project_logs")
    rows = []
    for message in batched.messages:
        if message["type"] == "BATCH":
            for url in message["manifest"]:
                with gzip.open(Path(urlsplit(url).path)) as lines:
                    rows += [json.loads(line) for line in lines]
    assert len(rows) == len(plain.records("project_logs")) > 1000
    assert by_id(rows) == by_id(plain.records("project_logs"))
    assert batched.final_state == plain.final_state


def test_flattening_sees_decoded_values(
    logs_emulator: tuple[Emulator, str], run_tap: Callable[..., TapRun]
) -> None:
    emu, _ = logs_emulator
    config = tap_config(emu, flattening_enabled=True, flattening_max_depth=1)
    run = run_tap(config, catalog=logs_catalog(run_tap))
    assert run.returncode == 0, run.stderr
    exact = by_id(run.records("project_logs"))["exact"]
    assert (exact["metrics__tokens"], exact["metrics__end"]) == (7, 2.5)


def test_a_deselected_nested_field_is_left_out(
    logs_emulator: tuple[Emulator, str], run_tap: Callable[..., TapRun]
) -> None:
    emu, _ = logs_emulator
    catalog = logs_catalog(run_tap)
    (entry,) = [e for e in catalog["streams"] if e["tap_stream_id"] == "project_logs"]
    entry["metadata"].append(
        {
            "breadcrumb": ["properties", "metrics", "properties", "tokens"],
            "metadata": {"selected": False},
        }
    )
    run = run_tap(tap_config(emu), catalog=catalog)
    assert run.returncode == 0, run.stderr
    assert by_id(run.records("project_logs"))["exact"]["metrics"] == {"end": 2.5}


def test_pages_are_fetched_one_at_a_time_and_an_abandoned_one_stops_retrying() -> None:
    in_flight, most, lock = [0], [0], threading.Lock()
    fails_from = [99]

    def respond(handler: BaseHTTPRequestHandler) -> None:
        with lock:
            in_flight[0] += 1
            most[0] = max(most[0], in_flight[0])
        time.sleep(0.05)
        with lock:
            in_flight[0] -= 1
        page = handler.page  # type: ignore[attr-defined]
        if page >= fails_from[0]:
            answer(handler, 503, {"Message": "busy"})
            return
        row = {"id": f"r{page}", "_xact_id": str(100 + page), "created": "2026-01-01T00:00Z"}
        answer(handler, 200, {"data": [{**row, "_pagination_key": _key(page)}] if page < 6 else []})

    with serve(_remembering_page(respond)) as (url, paths):
        tap = TapBraintrust(config={"api_key": API_KEY, "api_url": url, "max_backoff_seconds": 0.1})
        stream = tap.streams["project_logs"]
        assert isinstance(stream, ProjectLogsStream)
        query = RowsQuery("project_logs", (ObjectBound("p"),))  # the page loop alone
        assert [page.rows[0]["id"] for page in stream.query_pages(query) if page.rows] == [
            f"r{n}" for n in range(6)
        ]
        assert most[0] == 1
        assert len(paths) == 7  # six pages and the empty one that ends the read

        fails_from[0] = 2  # page 2 now fails until the tap gives up on it
        pages = stream.query_pages(query)
        next(pages)  # page 0 arrives and page 1 is fetched meanwhile
        next(pages)  # page 1 arrives and page 2 is asked for, in vain
        pages.close()  # the reader stops: page 2 is abandoned
        time.sleep(0.5)
        asked = len(paths)
        time.sleep(1.0)
        assert len(paths) == asked, "the abandoned page was still being retried"
        assert asked == 7 + 2 + 1  # pages 0 and 1, and one try of page 2


def test_the_writer_escapes_a_lone_surrogate_beside_fields_kept_as_text() -> None:
    writer = BufferedMessageWriter()
    out = io.TextIOWrapper(io.BytesIO(), encoding="utf-8")
    record = {"output": msgspec.Raw(b'{"x":1.0,"n":[2]}'), "note": CUT_TEXT}
    with contextlib.redirect_stdout(out):
        writer.write_message(RecordMessage(stream="project_logs", record=record))
        writer.flush()
    out.seek(0)
    assert json.loads(out.read())["record"] == {"output": {"x": 1.0, "n": [2]}, "note": CUT_TEXT}
