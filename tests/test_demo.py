"""README command #1, end to end: Meltano runs the tap into DuckDB against the emulator."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import duckdb

from scripts import demo
from tests.conftest import OBJECT_STREAMS
from tests.emulator import Store, generate_demo
from tests.warehouse import ROW_STREAMS

ROOT = Path(__file__).parent.parent
MELTANO = str(Path(sys.executable).with_name("meltano"))


def test_demo_loads_every_object_and_row_into_duckdb() -> None:
    env = {key: value for key, value in os.environ.items() if not key.startswith("TAP_BRAINTRUST")}
    subprocess.run([MELTANO, "install"], cwd=ROOT, env=env, check=True, capture_output=True)
    done = subprocess.run(
        [sys.executable, "-m", "scripts.demo"],
        cwd=ROOT,
        env=env,
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
