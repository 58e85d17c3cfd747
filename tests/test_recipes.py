"""The README's SQL recipes, run as written against PostgreSQL loaded by `meltano run`.

Each recipe's answer is recomputed from the emulator's data, so a recipe that reads a column
wrongly (a JSON null taken for a value, a timestamp compared in the wrong zone) fails here.
"""

from __future__ import annotations

from collections import defaultdict
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any

import pytest
from psycopg.rows import dict_row

from scripts.demo import readme_recipes
from tests.conftest import API_KEY
from tests.emulator import running_emulator
from tests.loaded_tables import PostgresWarehouse
from tests.meltano_project import MeltanoProject
from tests.warehouse import truth

if TYPE_CHECKING:
    from collections.abc import Iterator

    from tests.emulator import Emulator
    from tests.postgres import PostgresServer

RECIPES = readme_recipes()
Loaded = tuple["Emulator", PostgresWarehouse]


@pytest.fixture(scope="module")
def loaded(
    postgres: PostgresServer, meltano_plugins: None, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Loaded]:
    """The demo data (its rows lie in the week before now) loaded by `meltano run`."""
    with running_emulator(api_key=API_KEY, demo_seed=7) as emu:
        postgres.create_database("recipes")
        project = MeltanoProject.copy_to(
            tmp_path_factory.mktemp("recipes"),
            TAP_BRAINTRUST_API_URL=emu.url,
            TAP_BRAINTRUST_API_KEY=API_KEY,
            **postgres.target_env("recipes"),
        )
        project.succeed("run", "tap-braintrust", "target-postgres")
        yield emu, PostgresWarehouse(postgres, "recipes")


def run_recipe(warehouse: PostgresWarehouse, name: str) -> tuple[datetime, list[dict[str, Any]]]:
    """The recipe's rows, and `now()` in UTC as the recipe saw it (one transaction)."""
    with warehouse.server.connect(warehouse.database, row_factory=dict_row) as connection:
        now = connection.execute("SELECT now() AT TIME ZONE 'utc' AS now").fetchone()
        rows = connection.execute(RECIPES[name].encode()).fetchall()
    assert now is not None
    return now["now"], rows


def test_the_readme_has_the_three_recipes() -> None:
    assert sorted(RECIPES) == ["7-day report", "training set", "user corrections"]


def test_a_json_null_is_stored_as_a_json_value_not_sql_null(loaded: Loaded) -> None:
    """Why the recipes test `jsonb_typeof(expected) <> 'null'`, as the README says."""
    emu, warehouse = loaded
    rows = truth(emu)["project_logs"].values()
    assert sum(row["expected"] is None for row in rows) > 100
    assert warehouse.query(
        "SELECT count(*) FILTER (WHERE expected IS NULL), count(*) FROM braintrust.project_logs"
    ) == [(0, len(rows))]


def test_training_set_is_every_dataset_record_with_an_expected_answer(loaded: Loaded) -> None:
    emu, warehouse = loaded
    _, rows = run_recipe(warehouse, "training set")
    names = {dataset["id"]: dataset["name"] for dataset in emu.store.objects("dataset")}
    expected = sorted(
        (names[dataset_id], row["id"], row["input"], row["expected"])
        for (dataset_id, _), row in truth(emu)["dataset_events"].items()
        if row["expected"] is not None
    )
    assert len(expected) > 50
    got = [(r["dataset"], r["id"], r["input"], r["expected"]) for r in rows]
    assert sorted(got) == expected


def test_user_corrections_are_the_corrected_log_rows(loaded: Loaded) -> None:
    emu, warehouse = loaded
    _, rows = run_recipe(warehouse, "user corrections")
    names = {project["id"]: project["name"] for project in emu.store.objects("project")}
    expected = sorted(
        (names[project_id], row["id"], row["created"], row["input"], row["output"], row["expected"])
        for (project_id, _), row in truth(emu)["project_logs"].items()
        if isinstance(row["metadata"], dict)
        and row["metadata"].get("user_correction") is True
        and row["expected"] is not None
    )
    assert len(expected) >= 3
    got = [
        (r["project"], r["id"], f"{r['created']:%Y-%m-%dT%H:%M:%S.%fZ}", r["input"], r["output"],
         r["expected"])
        for r in rows
    ]  # fmt: skip
    assert sorted(got) == expected


def test_seven_day_report_summarises_traces_per_day_and_model(loaded: Loaded) -> None:
    emu, warehouse = loaded
    now, rows = run_recipe(warehouse, "7-day report")
    since = f"{now - timedelta(days=7):%Y-%m-%dT%H:%M:%S.%fZ}"
    groups: dict[tuple[str, str], list[dict[str, Any]]] = defaultdict(list)
    for row in truth(emu)["project_logs"].values():
        if row["is_root"] and row["created"] >= since:
            model = (row["metadata"] or {}).get("model") or "(no model)"
            groups[row["created"][:10], model].append(row["scores"] or {})
    assert len(groups) > 20

    report = {(f"{r['day']:%Y-%m-%d}", r["model"]): r for r in rows}
    assert report.keys() == groups.keys()
    for key, scores in groups.items():
        accuracy = [s["accuracy"] for s in scores if s.get("accuracy") is not None]
        ratings = [s["user_rating"] for s in scores if s.get("user_rating") is not None]
        line = report[key]
        assert (line["traces"], line["rated"]) == (len(scores), len(ratings)), key
        assert _mean_or_none(line["accuracy"]) == _rounded_mean(accuracy), key
        assert _mean_or_none(line["user_rating"]) == _rounded_mean(ratings), key


def _rounded_mean(values: list[float]) -> Any:
    """The mean, as the recipe rounds it to 3 decimals (plus float noise)."""
    return pytest.approx(sum(values) / len(values), abs=5.01e-4) if values else None


def _mean_or_none(value: Any) -> float | None:
    return None if value is None else float(value)
