"""README command #1: the emulator with demo data, Meltano into DuckDB, and a summary.

Run through `bash scripts/demo`, which installs everything first. Meltano runs in a
throwaway copy of this project (tests/meltano_project.py) and loads its own file, so the
demo never touches a pipeline you set up here for a real org: its state, settings or data.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import duckdb

from tap_braintrust.tap import STREAM_NAMES
from tests.emulator import running_emulator
from tests.meltano_project import MeltanoProject

ROOT = Path(__file__).resolve().parent.parent
WAREHOUSE = ROOT / "output" / "demo.duckdb"
MELTANO_LOG = ROOT / "output" / "demo-meltano.log"
SCHEMA = "braintrust"
DEMO_API_KEY = "sk-demo-not-a-real-key"
TABLES = STREAM_NAMES
# One real question, answered over the loaded logs: how do people rate each model's answers?
RATING_PER_MODEL = """
SELECT coalesce(metadata->>'model', '(no model)') AS model,
       count(*) AS reviewed,
       avg(CAST(scores->>'user_rating' AS DOUBLE)) AS average_rating
FROM braintrust.project_logs
WHERE scores->>'user_rating' IS NOT NULL
GROUP BY 1
ORDER BY average_rating DESC, model
"""


def main(argv: list[str] | None = None) -> int:
    """Run the demo; 0 on success."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--seed", type=int, default=7, help="demo data seed")
    args = parser.parse_args(argv)

    WAREHOUSE.parent.mkdir(exist_ok=True)
    WAREHOUSE.unlink(missing_ok=True)
    with (
        running_emulator(api_key=DEMO_API_KEY, demo_seed=args.seed) as emulator,
        tempfile.TemporaryDirectory(prefix="tap-braintrust-demo-") as scratch,
    ):
        print(f"Braintrust emulator with demo data at {emulator.url}")
        project = MeltanoProject.copy_to(
            Path(scratch),
            TAP_BRAINTRUST_API_URL=emulator.url,
            TAP_BRAINTRUST_API_KEY=DEMO_API_KEY,
            TARGET_DUCKDB_FILEPATH=str(WAREHOUSE),
        )
        log = MELTANO_LOG.relative_to(ROOT)
        print(f"$ meltano run tap-braintrust target-duckdb   (log: {log})")
        done = project.run("run", "tap-braintrust", "target-duckdb")
    MELTANO_LOG.write_text(done.output)
    if done.returncode != 0:
        print(done.output[-4000:], file=sys.stderr)
        print(f"meltano run failed with exit code {done.returncode}", file=sys.stderr)
        return done.returncode
    print(summary(done.seconds))
    return 0


def summary(elapsed: float) -> str:
    """What landed in the warehouse, as a person would want to read it."""
    with duckdb.connect(str(WAREHOUSE), read_only=True) as db:
        counts = {
            table: db.execute(f"SELECT count(*) FROM {SCHEMA}.{table}").fetchone()  # noqa: S608
            for table in TABLES
        }
        per_project = db.execute(
            f"""
            SELECT p.name,
                   (SELECT count(*) FROM {SCHEMA}.experiments e WHERE e.project_id = p.id),
                   (SELECT count(*) FROM {SCHEMA}.datasets d WHERE d.project_id = p.id)
            FROM {SCHEMA}.projects p ORDER BY p.name
            """  # noqa: S608 - fixed identifiers
        ).fetchall()
        ratings = db.execute(RATING_PER_MODEL).fetchall()
    relative = WAREHOUSE.relative_to(ROOT)
    lines = [
        "",
        f"Loaded Braintrust into DuckDB in {elapsed:.1f} s: {relative}, schema {SCHEMA}",
        "",
        f"  {'table':<18}{'rows':>6}",
    ]
    lines += [f"  {table:<18}{row[0] if row else 0:>6}" for table, row in counts.items()]
    lines += ["", "  Per project:"]
    lines += [
        f"    {name:<32}{experiments:>3} experiments {datasets:>3} datasets"
        for name, experiments, datasets in per_project
    ]
    lines += ["", "  Human review (scores.user_rating, 0 to 1) per model, in SQL:"]
    lines += [f"    {line}" for line in RATING_PER_MODEL.strip().splitlines()]
    lines += ["", f"    {'model':<20}{'reviewed':>9}{'average':>9}"]
    lines += [
        f"    {model:<20}{reviewed:>9}{average:>9.2f}" for model, reviewed, average in ratings
    ]
    lines += ["", f"Explore it: duckdb {relative}  (or any DuckDB client)"]
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
