"""README command #1, end to end: Meltano runs the tap into DuckDB against the emulator."""

from __future__ import annotations

import subprocess
import sys

import duckdb
import pytest

from scripts import demo
from tests.conftest import OBJECT_STREAMS
from tests.emulator import Store, generate_demo
from tests.meltano_project import ROOT, clean_environment
from tests.warehouse import ROW_STREAMS, scores_by_model


@pytest.mark.usefixtures("meltano_plugins")
def test_demo_loads_every_object_and_row_into_duckdb_and_answers_its_question() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "scripts.demo"],
        cwd=ROOT,
        env=clean_environment(),
        capture_output=True,
        text=True,
        check=False,
        timeout=600,
    )
    assert done.returncode == 0, done.stdout + done.stderr

    truth = Store()
    generate_demo(truth, seed=7)
    with duckdb.connect(str(demo.WAREHOUSE), read_only=True) as db:
        for table, kind in OBJECT_STREAMS.items():
            rows = db.execute(f"SELECT name FROM {demo.SCHEMA}.{table}").fetchall()  # noqa: S608
            expected = sorted(o["name"] for o in truth.objects(kind))
            assert sorted(name for (name,) in rows) == expected
            assert f"{table:<18}{len(rows):>6}" in done.stdout
        for stream in ROW_STREAMS:
            keys = db.execute(
                f"SELECT {stream.parent_key}, id FROM {demo.SCHEMA}.{stream.name}"  # noqa: S608
            ).fetchall()
            expected_count = sum(
                len(truth.rows(stream.source, owner["id"])) for owner in truth.objects(stream.owner)
            )
            assert len(keys) == len(set(keys)) == expected_count, stream.name
            assert f"{stream.name:<18}{len(keys):>6}" in done.stdout

    logs = [row for p in truth.objects("project") for row in truth.rows("project_logs", p["id"])]
    ratings = scores_by_model(logs, "user_rating")
    assert len(ratings) > 2
    for model, values in ratings.items():
        line = f"{model or '(no model)':<20}{len(values):>9}{sum(values) / len(values):>9.2f}"
        assert line in done.stdout
