"""What each supported loader does with the tap's delete marks, through `meltano run`.

With `detect_deletes` (the default) a dataset record or experiment row deleted in Braintrust
arrives on the next run as a record carrying `_sdc_deleted_at` and the row's last content,
and a deleted experiment, dataset or project as a record with `_sdc_deleted_at` and only the
few fields state kept of it. Here Meltano runs the tap against the emulator three times into
each loader and warehouse the project supports: a first sync; one dataset record, one
experiment row, one dataset and one experiment deleted, then a second run; the deleted record
written again under its id, then a third. Each table is read back after each run:

| Loader                    | Settings                                | Marked row and object |
|:--------------------------|:----------------------------------------|:----------------------|
| target-postgres           | hard_delete true (meltano.yml) or false | kept, marked          |
| target-postgres           | add_record_metadata false               | kept, no marker       |
| target-duckdb (json-text) | hard_delete true                        | deleted               |
| target-duckdb (json-text) | hard_delete false                       | kept, marked          |
| pipelinewise (json-text)  | hard_delete true                        | deleted               |
| pipelinewise (json-text)  | hard_delete false                       | kept, marked          |

A kept row keeps its content; a kept object keeps the fields its record carries (id, name,
created, project_id, and public for an experiment) and every loader nulls its other columns.
The rows of a deleted object stay as last loaded, unmarked. Where the marker is kept, the
README's views (`LIVE_VIEWS`) hide deleted rows and the rows of deleted objects: they hold
exactly the live rows of live objects (and do as well where the loader deleted the marks).
With hard_delete (which turns their metadata columns on) or add_metadata_columns,
target-duckdb and pipelinewise type `_sdc_deleted_at` as text, else as the timestamp the tap
declares.
"""

from __future__ import annotations

import enum
import uuid
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from typing import TYPE_CHECKING, Any

import duckdb
import pytest

from tests.conftest import API_KEY, demo_of, require_loader
from tests.loaded_tables import (
    SCHEMA,
    DuckDBWarehouse,
    LoadedWarehouse,
    PostgresWarehouse,
    row_tables,
)
from tests.meltano_project import MeltanoProject
from tests.test_end_to_end import JSON_TEXT_TAP, TAP, pipelinewise_env
from tests.warehouse import truth

if TYPE_CHECKING:
    from pathlib import Path

    from tests.emulator import Emulator
    from tests.warehouse import Table

MARK = "_sdc_deleted_at"
# The fields a record of a deleted object carries (what state kept of it).
MARKED_OBJECT_FIELDS = {
    "datasets": ("id", "name", "created", "project_id"),
    "experiments": ("id", "name", "created", "project_id", "public"),
}
AGAIN = {"input": {"question": "asked again"}, "expected": "answered again"}
# The README's views, as a user writes them: live rows of live objects. A deleted project
# marks its experiments and datasets too, so joining the row's own object is enough.
LIVE_VIEWS = {
    "live_dataset_events": """
CREATE VIEW braintrust.live_dataset_events AS
SELECT e.*
FROM braintrust.dataset_events e
JOIN braintrust.datasets d ON d.id = e.dataset_id
WHERE e._sdc_deleted_at IS NULL AND d._sdc_deleted_at IS NULL
""",
    "live_experiment_events": """
CREATE VIEW braintrust.live_experiment_events AS
SELECT e.*
FROM braintrust.experiment_events e
JOIN braintrust.experiments x ON x.id = e.experiment_id
WHERE e._sdc_deleted_at IS NULL AND x._sdc_deleted_at IS NULL
""",
}
VIEW_OF = {"dataset_events": "live_dataset_events", "experiment_events": "live_experiment_events"}
MARKED_TABLES = ("dataset_events", "experiment_events", "datasets", "experiments")
NONE_MARKED: dict[str, set[Any]] = {table: set() for table in MARKED_TABLES}


class Marks(enum.Enum):
    """What a loader does with a record carrying `_sdc_deleted_at`."""

    KEPT = "kept, marker set"
    DELETED = "deleted"
    DROPPED = "marker dropped, looks live"


@dataclass(frozen=True)
class Case:
    """A pipeline and the loader settings it runs with, and what it does with marks."""

    extractor: str
    loader: str
    settings: dict[str, bool]
    marks: Marks


CASES = {
    # meltano.yml's own: target-postgres with hard_delete: true.
    "target-postgres": Case(TAP, "target-postgres", {"hard_delete": True}, Marks.KEPT),
    "target-postgres-soft": Case(TAP, "target-postgres", {"hard_delete": False}, Marks.KEPT),
    # Without record metadata it refuses to start unless ACTIVATE_VERSION is off too.
    "target-postgres-no-record-metadata": Case(
        TAP,
        "target-postgres",
        {"add_record_metadata": False, "activate_version": False},
        Marks.DROPPED,
    ),
    "target-duckdb-hard": Case(
        JSON_TEXT_TAP, "target-duckdb", {"hard_delete": True}, Marks.DELETED
    ),
    "target-duckdb-soft": Case(JSON_TEXT_TAP, "target-duckdb", {"hard_delete": False}, Marks.KEPT),
    "pipelinewise-hard": Case(
        JSON_TEXT_TAP, "target-postgres-pipelinewise", {"hard_delete": True}, Marks.DELETED
    ),
    "pipelinewise-soft": Case(
        JSON_TEXT_TAP, "target-postgres-pipelinewise", {"hard_delete": False}, Marks.KEPT
    ),
    # As tests/test_end_to_end.py runs it: its own `_sdc_*` columns, the marker's as text.
    "pipelinewise-soft-metadata-columns": Case(
        JSON_TEXT_TAP,
        "target-postgres-pipelinewise",
        {"hard_delete": False, "add_metadata_columns": True},
        Marks.KEPT,
    ),
}


@dataclass(frozen=True)
class Deleted:
    """What the test deletes in Braintrust between the first and second runs."""

    dataset: str  # a dataset that stays, one of whose records is deleted
    record: str
    experiment: str  # an experiment that stays, one of whose rows is deleted
    row: str
    gone_dataset: str  # deleted as a whole
    gone_experiment: str

    @classmethod
    def choose(cls, emu: Emulator) -> Deleted:
        """A record of the first dataset, a row of the first experiment, the second of each."""
        demo = demo_of(emu)
        dataset, experiment = demo.datasets[0]["id"], demo.experiments[0]["id"]
        return cls(
            dataset,
            emu.store.rows("dataset", dataset)[0]["id"],
            experiment,
            emu.store.rows("experiment", experiment)[0]["id"],
            demo.datasets[1]["id"],
            demo.experiments[1]["id"],
        )

    def apply(self, emu: Emulator) -> None:
        """Delete them in Braintrust."""
        emu.store.delete_rows("dataset", self.dataset, [self.record])
        emu.store.delete_rows("experiment", self.experiment, [self.row])
        emu.store.delete_object("dataset", self.gone_dataset)
        emu.store.delete_object("experiment", self.gone_experiment)

    @property
    def rows(self) -> dict[str, set[tuple[str, str]]]:
        """The deleted rows' keys, by table."""
        return {
            "dataset_events": {(self.dataset, self.record)},
            "experiment_events": {(self.experiment, self.row)},
        }

    @property
    def objects(self) -> dict[str, str]:
        """The deleted objects' ids, by table."""
        return {"datasets": self.gone_dataset, "experiments": self.gone_experiment}

    @property
    def marks(self) -> dict[str, set[Any]]:
        """Everything it marks, as `marked` reads the marks back."""
        return {**self.rows, **{table: {id_} for table, id_ in self.objects.items()}}


@pytest.fixture(params=list(CASES))
def case(request: pytest.FixtureRequest) -> Case:
    """The pipeline, its loader installed (or the test skipped for want of a wheel)."""
    chosen = CASES[request.param]
    if chosen.loader != "target-postgres":
        require_loader(chosen.loader)
    return chosen


def warehouse_for(
    case: Case, request: pytest.FixtureRequest, tmp_path: Path
) -> tuple[LoadedWarehouse, dict[str, str]]:
    """An empty warehouse for the loader, and the settings pointing the loader at it."""
    if case.loader == "target-duckdb":
        path = tmp_path / "warehouse.duckdb"
        return DuckDBWarehouse(path), {"TARGET_DUCKDB_FILEPATH": str(path)}
    server = request.getfixturevalue("postgres")
    database = f"deletes_{uuid.uuid4().hex[:12]}"
    server.create_database(database)
    if case.loader == "target-postgres-pipelinewise":
        return PostgresWarehouse(server, database), pipelinewise_env(server, database)
    return PostgresWarehouse(server, database), server.target_env(database)


def configure(project: MeltanoProject, loader: str, settings: dict[str, bool]) -> None:
    """Set the loader's settings in the project's meltano.yml, declared as booleans so the
    loader gets `false`, not the string "false" (pipelinewise and target-duckdb test the
    setting for truth)."""
    with project.definition() as definition:
        plugin = next(p for p in definition["plugins"]["loaders"] if p["name"] == loader)
        declared = {setting["name"] for setting in plugin.setdefault("settings", [])}
        for name, value in settings.items():
            if name not in declared:
                plugin["settings"].append({"name": name, "kind": "boolean"})
            plugin.setdefault("config", {})[name] = value


@pytest.mark.usefixtures("meltano_plugins")
def test_each_loader_keeps_or_deletes_the_marked_rows_and_objects(
    case: Case, emulator: Emulator, request: pytest.FixtureRequest, tmp_path: Path
) -> None:
    warehouse, env = warehouse_for(case, request, tmp_path)
    project = MeltanoProject.copy_to(
        tmp_path / "project",
        TAP_BRAINTRUST_API_URL=emulator.url,
        TAP_BRAINTRUST_API_KEY=API_KEY,
        **env,
    )
    configure(project, case.loader, case.settings)
    deleted = Deleted.choose(emulator)

    first = project.succeed("run", case.extractor, case.loader)
    rows, objects = row_tables(warehouse), object_tables(warehouse)
    assert all(rows[table].keys() >= keys for table, keys in deleted.rows.items())
    assert all(id_ in objects[table] for table, id_ in deleted.objects.items())
    if has_marker(warehouse):
        assert marked(warehouse) == NONE_MARKED

    deleted.apply(emulator)
    started = datetime.now(timezone.utc)
    second = project.succeed("run", case.extractor, case.loader)
    ended = datetime.now(timezone.utc)
    print(  # noqa: T201 - for the README's table of loaders
        f"\n{case.loader} {case.settings}: marked rows and objects {case.marks.value};"
        f" {MARK} column: {warehouse.column_types('dataset_events').get(MARK, 'none')};"
        f" meltano runs {first.seconds:.1f} s, {second.seconds:.1f} s"
    )
    after, after_objects = row_tables(warehouse), object_tables(warehouse)
    if case.marks is Marks.DELETED:
        # The loader deletes every record carrying the marker: rows and objects.
        for table, keys in deleted.rows.items():
            assert after[table] == {k: v for k, v in rows[table].items() if k not in keys}
        for table, id_ in deleted.objects.items():
            assert after_objects[table] == {k: v for k, v in objects[table].items() if k != id_}
    else:
        # Kept with their content (each marked record is the row as the first run loaded
        # it), and nothing else changed.
        for table in deleted.rows:
            assert after[table] == rows[table], table
        # A deleted object keeps the fields its record carries; the loader nulls the rest.
        for table, id_ in deleted.objects.items():
            few = {field: objects[table][id_][field] for field in MARKED_OBJECT_FIELDS[table]}
            assert after_objects[table] == {**objects[table], id_: few}, table
            assert objects[table][id_].keys() > few.keys()  # it had more before
    # The rows of the deleted objects stay as last loaded, unmarked: the views hide them.
    for table, id_ in (
        ("dataset_events", deleted.gone_dataset),
        ("experiment_events", deleted.gone_experiment),
    ):
        orphans = {key: row for key, row in rows[table].items() if key[0] == id_}
        assert orphans, table
        assert {key: after[table][key] for key in orphans} == orphans, table

    if case.marks is Marks.DROPPED:
        # target-postgres makes no marker column at all: the deleted rows look live.
        assert not has_marker(warehouse)
        return

    expected_marks = NONE_MARKED if case.marks is Marks.DELETED else deleted.marks
    assert marked(warehouse) == expected_marks
    for when in marker_times(warehouse):
        assert started - timedelta(seconds=1) <= when <= ended, when
    create_views(warehouse)
    assert_views_show_live_rows(warehouse, emulator)

    # Written again under its id in Braintrust, the record is live again.
    emulator.store.insert_rows("dataset", deleted.dataset, [{"id": deleted.record, **AGAIN}])
    project.succeed("run", case.extractor, case.loader)
    again = row_tables(warehouse)["dataset_events"][(deleted.dataset, deleted.record)]
    assert {field: again.get(field) for field in AGAIN} == AGAIN
    assert marked(warehouse) == {**expected_marks, "dataset_events": set()}
    assert_views_show_live_rows(warehouse, emulator)


def object_tables(warehouse: LoadedWarehouse) -> dict[str, dict[str, dict[str, Any]]]:
    """The datasets and experiments tables, by id, as the tap emitted their records."""
    return {
        table: {record["id"]: record for record in warehouse.records(table)}
        for table in MARKED_OBJECT_FIELDS
    }


def has_marker(warehouse: LoadedWarehouse) -> bool:
    """Whether the loader made a `_sdc_deleted_at` column (in every table it marks)."""
    found = {MARK in warehouse.column_types(table) for table in MARKED_TABLES}
    assert len(found) == 1, "a marker column in some tables only"
    return found.pop()


def marked(warehouse: LoadedWarehouse) -> dict[str, set[Any]]:
    """The keys of the rows with `_sdc_deleted_at` set, by table: (object id, id) of a row,
    the id of an object."""
    keys = {"dataset_events": "dataset_id, id", "experiment_events": "experiment_id, id"}
    found: dict[str, set[Any]] = {}
    for table in MARKED_TABLES:
        statement = f"SELECT {keys.get(table, 'id')} FROM {SCHEMA}.{table} WHERE {MARK} IS NOT NULL"  # noqa: S608
        found[table] = {row if len(row) > 1 else row[0] for row in warehouse.query(statement)}
    return found


def marker_times(warehouse: LoadedWarehouse) -> list[datetime]:
    """Every `_sdc_deleted_at` set, as an aware UTC time (a naive one is taken as UTC)."""
    times = []
    for table in MARKED_TABLES:
        for (value,) in warehouse.query(
            f"SELECT {MARK} FROM {SCHEMA}.{table} WHERE {MARK} IS NOT NULL"  # noqa: S608
        ):
            when = value if isinstance(value, datetime) else datetime.fromisoformat(value)
            times.append(when if when.tzinfo else when.replace(tzinfo=timezone.utc))
    return times


def create_views(warehouse: LoadedWarehouse) -> None:
    """The README's views, made in the loaded warehouse."""
    if isinstance(warehouse, DuckDBWarehouse):
        with duckdb.connect(str(warehouse.path)) as connection:
            for statement in LIVE_VIEWS.values():
                connection.execute(statement)
        return
    assert isinstance(warehouse, PostgresWarehouse)
    with warehouse.server.connect(warehouse.database, autocommit=True) as connection:
        for statement in LIVE_VIEWS.values():
            connection.execute(statement.encode())


def assert_views_show_live_rows(warehouse: LoadedWarehouse, emu: Emulator) -> None:
    """Each view holds exactly the live rows of live objects: the emulator's truth."""
    live: dict[str, Table] = truth(emu)
    keys = {"dataset_events": "dataset_id, id", "experiment_events": "experiment_id, id"}
    for table, view in VIEW_OF.items():
        shown = warehouse.query(f"SELECT {keys[table]} FROM {SCHEMA}.{view}")  # noqa: S608
        assert len(shown) == len(set(shown)), view
        assert set(shown) == set(live[table]), view
