"""A sync split across parallel jobs: two `meltano run`s at once into one PostgreSQL database.

The recipe (README "Parallel jobs"), as an orchestrator would run it:

- Each part is its own extractor, inherited from `tap-braintrust` (`tap-braintrust--part-a`,
  `tap-braintrust--part-b`), given its projects in `TAP_BRAINTRUST_PROJECT_IDS`. Its own name
  gives it its own state ID (`dev:tap-braintrust--part-a-to-target-postgres`) and its own
  `.meltano/run/<extractor>/`, where Meltano writes the catalog and the state file the tap
  reads: two runs of one extractor name in one project overwrite each other's (a broken
  catalog fails both, or one tap silently starts from the other's state).
- A short serial run first (`start_date` in the future, `--no-state-update`) creates
  Meltano's system database, the schema and every table, so the parallel loaders never race
  to create one ("already exists").
- A report stream (`custom_streams` with `sql`) runs in one part only: its ACTIVATE_VERSION
  with `hard_delete` replaces the whole table.
- Both parts share the project's SQLite system database.

Checked: together the parts load exactly what one job over every project loads, table by
table and value by value; each part's state holds only its own objects; and after reviewers
change rows of both parts, re-running one part loads its changes and leaves the other part's
state, rows (their `_sdc_` stamps too) and report exactly as they were.
"""

from __future__ import annotations

import json
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING, Any

import pytest
from psycopg import sql
from psycopg.rows import dict_row

from tests.conftest import API_KEY, demo_of
from tests.loaded_tables import SCHEMA
from tests.meltano_project import MeltanoProject, Run
from tests.test_report_streams import daily_by_model

if TYPE_CHECKING:
    from pathlib import Path

    from tests.emulator import Emulator
    from tests.emulator.store import RowSource
    from tests.postgres import PostgresServer

LOADER = "target-postgres"
PART_A = "tap-braintrust--part-a"
PART_B = "tap-braintrust--part-b"  # also runs the report
REPORT = "daily_models"
# Each table's primary key, and the column naming the object that owns a row.
KEYS: dict[str, tuple[str, ...]] = {
    "projects": ("id",),
    "experiments": ("id",),
    "datasets": ("id",),
    "project_logs": ("project_id", "id"),
    "experiment_events": ("experiment_id", "id"),
    "dataset_events": ("dataset_id", "id"),
    REPORT: ("day", "model"),
}
OWNER_COLUMN = {
    "projects": "id",
    "experiments": "project_id",
    "datasets": "project_id",
    "project_logs": "project_id",
    "experiment_events": "experiment_id",
    "dataset_events": "dataset_id",
}
ROW_SOURCES: dict[str, RowSource] = {  # row table: the emulator's name for its rows
    "project_logs": "project_logs",
    "experiment_events": "experiment",
    "dataset_events": "dataset",
}
Rows = dict[tuple[Any, ...], dict[str, Any]]


@pytest.mark.usefixtures("meltano_plugins")
def test_two_parallel_jobs_load_what_one_job_loads_and_keep_to_their_own_part(
    emulator: Emulator, postgres: PostgresServer, tmp_path: Path
) -> None:
    demo = demo_of(emulator)
    projects = [project["id"] for project in demo.projects]
    parts = {PART_A: projects[:1], PART_B: projects[1:]}
    report = json.dumps([report_stream(projects[1])])
    api = {"TAP_BRAINTRUST_API_URL": emulator.url, "TAP_BRAINTRUST_API_KEY": API_KEY}

    # One job over every project: what the parts must load together.
    one_database = new_database(postgres, "one_job")
    one_job = MeltanoProject.copy_to(
        tmp_path / "one-job",
        **api,
        TAP_BRAINTRUST_CUSTOM_STREAMS=report,
        **postgres.target_env(one_database),
    )
    single = one_job.succeed("run", "tap-braintrust", LOADER)

    # The recipe: a part per extractor, a serial set-up run, then the parts at once.
    database = new_database(postgres, "parts")
    project = MeltanoProject.copy_to(tmp_path / "parts", **api, **postgres.target_env(database))
    declare_parts(project, parts)
    jobs = {
        PART_A: project.with_env(TAP_BRAINTRUST_PROJECT_IDS=json.dumps(parts[PART_A])),
        PART_B: project.with_env(
            TAP_BRAINTRUST_PROJECT_IDS=json.dumps(parts[PART_B]),
            TAP_BRAINTRUST_CUSTOM_STREAMS=report,
        ),
    }
    setup = project.create_tables(loader=LOADER)
    assert tables_of(postgres, database) >= set(KEYS) - {REPORT}
    assert row_count(postgres, database, "project_logs") == 0
    started = time.monotonic()
    runs = run_in_parallel({name: (job, ("run", name, LOADER)) for name, job in jobs.items()})
    wall = time.monotonic() - started

    owners = owner_projects(emulator)
    states = assert_each_part_has_its_own_state(project, parts, owners)
    together = {table: content(postgres, database, table) for table in KEYS}
    for table in KEYS:
        assert together[table] == content(postgres, one_database, table), table
    assert counts(together) == {
        "projects": len(demo.projects),
        "experiments": len(demo.experiments),
        "datasets": len(demo.datasets),
        **{
            table: sum(n for (kind, _), n in demo.row_counts.items() if kind == source)
            for table, source in ROW_SOURCES.items()
        },
        REPORT: len(together[REPORT]),
    }
    assert len(together[REPORT]) >= 2

    # Reviewers change rows of both parts; then only part A runs again.
    before = {table: stamped(postgres, database, table) for table in KEYS}
    changed = review(emulator, projects)
    rerun = jobs[PART_A].succeed("run", PART_A, LOADER)
    after = {table: stamped(postgres, database, table) for table in KEYS}
    assert stored_state(project, PART_B) == states[PART_B]
    assert stored_state(project, PART_A) != states[PART_A]
    assert_only_part_a_was_written(emulator, before, after, changed, set(parts[PART_B]))

    for run in (setup, *(run for _, run in runs.values()), rerun):
        assert "database is locked" not in run.output
    (_, a_run), (_, b_run) = runs[PART_A], runs[PART_B]
    print(  # noqa: T201 - figures for the README and the closing note
        f"\none job over 3 projects: {single.seconds:.1f} s; set-up run {setup.seconds:.1f} s;"
        f" parts A ({len(parts[PART_A])} project) and B ({len(parts[PART_B])}) in parallel:"
        f" {a_run.seconds:.1f} s and {b_run.seconds:.1f} s, {wall:.1f} s wall;"
        f" part A again: {rerun.seconds:.1f} s; rows {dict(sorted(counts(together).items()))}"
    )


def assert_each_part_has_its_own_state(
    project: MeltanoProject, parts: dict[str, list[str]], owners: dict[str, str]
) -> dict[str, dict[str, Any]]:
    """One state ID per part (none for the set-up run), bookmarking its own projects only."""
    listed = project.succeed("state", "list").stdout.split()
    assert set(listed) == {f"dev:{name}-to-{LOADER}" for name in parts}
    states = {name: stored_state(project, name) for name in parts}
    for name, state in states.items():
        assert bookmarked_projects(state, owners) == set(parts[name]), name
    return states


def assert_only_part_a_was_written(
    emu: Emulator,
    before: dict[str, Rows],
    after: dict[str, Rows],
    changed: list[tuple[str, tuple[str, str]]],
    part_b: set[str],
) -> None:
    """Part B's rows (its report too) are as they were, `_sdc_` stamps included, its changes
    not loaded; part A's changes are loaded."""
    owners = owner_projects(emu)
    for table in KEYS:
        of_b = {key for key, row in before[table].items() if owned_by(table, row, owners, part_b)}
        assert of_b, table
        assert {key: after[table].get(key) for key in of_b} == {
            key: before[table][key] for key in of_b
        }, f"part A's run touched part B's rows in {table}"
    assert len(changed) >= 6
    for table, key in changed:
        now = current_row(emu, table, key)
        loaded = unstamped(after[table][key])
        old = unstamped(before[table][key])
        assert old["tags"] != now["tags"]  # a real change, in both parts
        if owned_by(table, before[table][key], owners, part_b):
            assert loaded == old, f"part B's change was loaded by part A: {table} {key}"
        else:
            assert loaded["tags"] == now["tags"], f"part A's change is missing: {table} {key}"
            assert after[table][key]["_sdc_extracted_at"] > before[table][key]["_sdc_extracted_at"]


def report_stream(project_id: str) -> dict[str, Any]:
    """A report (per day and model) over one project: it runs in part B only."""
    return {"name": REPORT, "sql": daily_by_model(project_id), "primary_keys": ["day", "model"]}


def declare_parts(project: MeltanoProject, parts: dict[str, list[str]]) -> None:
    """Add one extractor per part to the copy's meltano.yml, each inherited from the tap."""
    with project.definition() as definition:
        definition["plugins"]["extractors"] += [
            {"name": name, "inherit_from": "tap-braintrust"} for name in parts
        ]


def run_in_parallel(
    commands: dict[str, tuple[MeltanoProject, tuple[str, ...]]],
) -> dict[str, tuple[float, Run]]:
    """Start every command at once; when each started, and its outcome. All must succeed."""

    def timed(job: MeltanoProject, args: tuple[str, ...]) -> tuple[float, Run]:
        return time.monotonic(), job.run(*args)

    with ThreadPoolExecutor(len(commands)) as pool:
        futures = {name: pool.submit(timed, *command) for name, command in commands.items()}
        done = {name: future.result() for name, future in futures.items()}
    for name, (_, run) in done.items():
        assert run.returncode == 0, f"meltano run {name}:\n{run.output[-6000:]}"
    # They ran at the same time: the last to start started before the first to end ended.
    assert max(start for start, _ in done.values()) < min(
        start + run.seconds for start, run in done.values()
    )
    return done


def new_database(server: PostgresServer, prefix: str) -> str:
    name = f"{prefix}_{uuid.uuid4().hex[:10]}"
    server.create_database(name)
    return name


def stored_state(project: MeltanoProject, extractor: str) -> dict[str, Any]:
    """The state Meltano keeps for one part."""
    stored: dict[str, Any] = json.loads(
        project.succeed("state", "get", f"dev:{extractor}-to-{LOADER}").stdout
    )
    return stored


def owner_projects(emu: Emulator) -> dict[str, str]:
    """The project of every project, experiment and dataset, by id."""
    store = emu.store
    owners = {project["id"]: project["id"] for project in store.objects("project")}
    owners |= {item["id"]: item["project_id"] for item in store.objects("experiment")}
    owners |= {item["id"]: item["project_id"] for item in store.objects("dataset")}
    return owners


def bookmarked_projects(state: dict[str, Any], owners: dict[str, str]) -> set[str]:
    """The projects whose objects a state has bookmarks for."""
    found: set[str] = set()
    for bookmark in state["singer_state"]["bookmarks"].values():
        for partition in bookmark.get("partitions", []):
            (object_id,) = partition["context"].values()
            found.add(owners[object_id])
    return found


def owned_by(table: str, row: dict[str, Any], owners: dict[str, str], part: set[str]) -> bool:
    """Whether `row` of `table` belongs to a project of `part` (the report: to part B)."""
    if table == REPORT:
        return True
    return owners[row[OWNER_COLUMN[table]]] in part


def tables_of(server: PostgresServer, database: str) -> set[str]:
    with server.connect(database) as connection:
        rows = connection.execute(
            "SELECT table_name FROM information_schema.tables WHERE table_schema = %s", (SCHEMA,)
        ).fetchall()
    return {name for (name,) in rows}


def row_count(server: PostgresServer, database: str, table: str) -> int:
    statement = sql.SQL("SELECT count(*) FROM {}.{}").format(
        sql.Identifier(SCHEMA), sql.Identifier(table)
    )
    with server.connect(database) as connection:
        row = connection.execute(statement).fetchone()
    assert row is not None
    return int(row[0])


def stamped(server: PostgresServer, database: str, table: str) -> Rows:
    """Every row of `table` by primary key, every column, the loader's `_sdc_` ones too."""
    statement = sql.SQL("SELECT * FROM {}.{}").format(sql.Identifier(SCHEMA), sql.Identifier(table))
    with server.connect(database, row_factory=dict_row) as connection:
        rows = connection.execute(statement).fetchall()
    by_key = {tuple(row[column] for column in KEYS[table]): dict(row) for row in rows}
    assert len(by_key) == len(rows), f"duplicate keys in {table}"
    return by_key


def content(server: PostgresServer, database: str, table: str) -> Rows:
    """Every row of `table` by primary key, without the loader's `_sdc_` columns."""
    return {key: unstamped(row) for key, row in stamped(server, database, table).items()}


def unstamped(row: dict[str, Any]) -> dict[str, Any]:
    return {name: value for name, value in row.items() if not name.startswith("_sdc_")}


def counts(tables: dict[str, Rows]) -> dict[str, int]:
    return {table: len(rows) for table, rows in tables.items()}


def review(emu: Emulator, projects: list[str]) -> list[tuple[str, tuple[str, str]]]:
    """Reviewers tag a log row of every project and a row of every experiment and dataset
    (so of both parts); the (table, key) of each row changed."""
    store = emu.store
    targets = [("project_logs", project) for project in projects]
    targets += [("experiment_events", e["id"]) for e in store.objects("experiment")]
    targets += [("dataset_events", d["id"]) for d in store.objects("dataset")]
    changed = []
    for table, object_id in targets:
        source = ROW_SOURCES[table]
        row = min(store.rows(source, object_id), key=lambda row: str(row["id"]))
        tags = sorted({*(row.get("tags") or []), "reviewed-after-the-split"})
        store.merge_rows(source, object_id, [{"id": row["id"], "tags": tags}])
        changed.append((table, (object_id, str(row["id"]))))
    return changed


def current_row(emu: Emulator, table: str, key: tuple[str, str]) -> dict[str, Any]:
    """The row as Braintrust holds it now."""
    object_id, row_id = key
    rows = emu.store.rows(ROW_SOURCES[table], object_id)
    return next(row for row in rows if row["id"] == row_id)
