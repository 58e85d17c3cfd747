"""README command #1, end to end: the demo's two `meltano run`s into its own PostgreSQL.

The demo is run as the README says (its module, with an output folder of the test's own),
and what it leaves behind is read back and compared with demo data regenerated here, plus
the reviews the demo makes between its runs.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
from typing import TYPE_CHECKING, Any

import duckdb
import pytest

from scripts import demo
from tests.conftest import OBJECT_STREAMS
from tests.emulator import Store, generate_demo
from tests.meltano_project import ROOT, clean_environment
from tests.postgres import PostgresServer, remove_server_folder
from tests.warehouse import ROW_STREAMS, scores_by_model

if TYPE_CHECKING:
    from collections.abc import Iterator
    from pathlib import Path


def run_demo(output: Path, *args: str) -> subprocess.CompletedProcess[str]:
    """`python -m scripts.demo --output OUTPUT ARGS`, as `bash scripts/demo` runs it."""
    return subprocess.run(
        [sys.executable, "-m", "scripts.demo", "--output", str(output), *args],
        cwd=ROOT,
        env=clean_environment(),
        capture_output=True,
        text=True,
        check=False,
        timeout=600,
    )


@pytest.fixture
def output(tmp_path: Path) -> Iterator[Path]:
    """The demo's output folder; its server is stopped and its files removed afterwards.

    Under pytest's tmp_path, which only its user may enter: under root (CI, a container) the
    server's account cannot, and the demo must put the server's files where it can.
    """
    folder = tmp_path / "output"
    try:
        yield folder
    finally:
        files = demo.DemoFiles(folder)
        files.cluster.stop(mode="immediate")
        remove_server_folder(files.server_files)


def demo_truth(seed: int = 7) -> tuple[Store, dict[str, set[tuple[str, str]]]]:
    """The demo data after the demo's reviews, and the rows those reviews touched."""
    store = Store()
    made = generate_demo(store, seed=seed)
    return store, demo.review(store, made)


def loaded_server(output: Path) -> PostgresServer:
    """The demo's running server, logged in as the demo left it."""
    files = demo.DemoFiles(output)
    login = json.loads(files.login.read_text())
    port = files.cluster.running_port()
    assert port is not None, "the demo left its server stopped"
    return PostgresServer("127.0.0.1", port, login["user"], login["password"])


@pytest.mark.usefixtures("meltano_plugins")
def test_demo_loads_postgres_then_sends_only_reviewed_rows_and_answers_the_recipes(
    output: Path,
) -> None:
    done = run_demo(output)
    assert done.returncode == 0, done.stdout + done.stderr
    store, reviewed = demo_truth()
    server = loaded_server(output)

    def query(statement: str) -> list[tuple[Any, ...]]:
        with server.connect(demo.DATABASE) as connection:
            return connection.execute(statement.encode()).fetchall()

    for table, kind in OBJECT_STREAMS.items():
        names = query(f"SELECT name FROM braintrust.{table}")  # noqa: S608 - a test query
        assert sorted(name for (name,) in names) == sorted(o["name"] for o in store.objects(kind))
    # target-postgres stamps each row with its run's start; each run re-lists every project.
    second_run = "(SELECT max(_sdc_sync_started_at) FROM braintrust.projects)"
    for stream in ROW_STREAMS:
        keys = query(f"SELECT {stream.parent_key}, id FROM braintrust.{stream.name}")  # noqa: S608 - a test query
        expected = {
            (owner["id"], row["id"])
            for owner in store.objects(stream.owner)
            for row in store.rows(stream.source, owner["id"])
        }
        marked = (
            query(
                f"SELECT {stream.parent_key}, id FROM braintrust.{stream.name}"  # noqa: S608 - a test query
                " WHERE _sdc_deleted_at IS NOT NULL AND input IS NOT NULL"
            )
            if stream.name != "project_logs"
            else []
        )
        # The record the reviewers deleted stays, marked, with its content.
        assert set(marked) == reviewed[stream.name] - expected, stream.name
        assert len(keys) == len(set(keys))
        assert set(keys) == expected | set(marked), stream.name
        sent_again = query(
            f"SELECT {stream.parent_key}, id FROM braintrust.{stream.name}"  # noqa: S608 - a test query
            f" WHERE _sdc_sync_started_at = {second_run}"
        )
        # The reviewed rows, and at most the rows of the history's last write (the lookback).
        assert set(sent_again) >= reviewed[stream.name], stream.name
        assert len({owner for owner, _ in set(sent_again) - reviewed[stream.name]}) <= 1
        line = rf"\n  {stream.name} +{len(sent_again)}  the rows reviewed"
        assert re.search(line, done.stdout), stream.name
    assert re.search(r"\n  dataset_events +\d+  the rows reviewed \(1 marked deleted", done.stdout)
    corrected = query(
        "SELECT expected #>> '{}' FROM braintrust.project_logs"
        " WHERE expected #>> '{}' LIKE 'Corrected by a reviewer%'"
    )
    assert len(corrected) == 3

    for name, statement in demo.readme_recipes().items():
        rows = query(statement)
        assert rows, name
        assert f"-- Recipe: {name}: {len(rows)} rows" in done.stdout
    assert "bash scripts/demo" in done.stdout
    assert "psql" in done.stdout


@pytest.mark.usefixtures("meltano_plugins")
def test_demo_server_is_reused_opened_stopped_and_removed(output: Path) -> None:
    first = run_demo(output)
    assert first.returncode == 0, first.stdout + first.stderr
    port = loaded_server(output).port
    again = run_demo(output)  # the next demo: same server, a fresh database and state
    assert again.returncode == 0, again.stdout + again.stderr
    assert loaded_server(output).port == port
    assert "the rows reviewed" in again.stdout

    opened = run_demo(output, "psql", "-tA", "-c", "SELECT count(*) FROM braintrust.projects")
    assert opened.returncode == 0, opened.stderr
    assert opened.stdout.strip() == "3"
    stopped = run_demo(output, "stop")
    assert stopped.returncode == 0, stopped.stderr
    assert demo.DemoFiles(output).cluster.running_port() is None
    removed = run_demo(output, "remove")
    assert removed.returncode == 0, removed.stderr
    assert not (output / "postgres").exists()
    assert not (output / "demo-meltano.log").exists()
    never_made = run_demo(output, "psql")
    assert never_made.returncode == 1
    assert "run `bash scripts/demo` first" in never_made.stderr


@pytest.mark.usefixtures("meltano_plugins")
def test_duckdb_demo_loads_valid_json_and_answers_its_question(output: Path) -> None:
    done = run_demo(output, "--duckdb")
    assert done.returncode == 0, done.stdout + done.stderr
    store = Store()
    generate_demo(store, seed=7)
    with duckdb.connect(str(demo.DemoFiles(output).duckdb), read_only=True) as db:
        for stream in ROW_STREAMS:
            count = sum(
                len(store.rows(stream.source, o["id"])) for o in store.objects(stream.owner)
            )
            loaded = db.execute(f"SELECT count(*) FROM braintrust.{stream.name}").fetchone()  # noqa: S608 - a test query
            assert loaded == (count,), stream.name
        invalid = db.execute(
            "SELECT count(*) FROM braintrust.project_logs"
            " WHERE NOT json_valid(output) OR NOT json_valid(input) OR NOT json_valid(metadata)"
        ).fetchone()
        assert invalid == (0,)

    logs = [row for p in store.objects("project") for row in store.rows("project_logs", p["id"])]
    ratings = scores_by_model(logs, "user_rating")
    assert len(ratings) > 2
    for model, values in ratings.items():
        mean = sum(values) / len(values)
        line = rf"\n +{re.escape(model or '(no model)')} +{len(values)} +{mean:.2f}\n"
        assert re.search(line, done.stdout), model
