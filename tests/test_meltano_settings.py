"""Settings reach the tap through Meltano (`meltano config set`, meltano.yml, environment
variables), and Meltano never shows the API key."""

from __future__ import annotations

import json
from typing import TYPE_CHECKING

import pytest
import yaml

from tests.conftest import API_KEY, demo_of, is_delete_check
from tests.loaded_tables import PostgresWarehouse
from tests.meltano_project import ROOT, MeltanoProject, throwaway_definition

if TYPE_CHECKING:
    from pathlib import Path

    from tests.emulator import Emulator
    from tests.postgres import PostgresServer


@pytest.mark.usefixtures("meltano_plugins")
def test_settings_reach_the_tap_and_the_key_is_never_shown(
    emulator: Emulator, postgres: PostgresServer, tmp_path: Path
) -> None:
    postgres.create_database("settings")
    warehouse = PostgresWarehouse(postgres, "settings")
    project = MeltanoProject.copy_to(
        tmp_path / "project",
        TAP_BRAINTRUST_API_URL=emulator.url,
        **postgres.target_env("settings"),
    )
    chosen = demo_of(emulator).projects[1]
    project.succeed("config", "set", "tap-braintrust", "api_key", API_KEY)
    names = json.dumps([chosen["name"]])
    project.succeed("config", "set", "tap-braintrust", "project_names", names)
    project.succeed("config", "set", "tap-braintrust", "page_size", "7")
    # A sensitive setting goes to `.env`, the others to meltano.yml.
    assert API_KEY in (project.directory / ".env").read_text()
    meltano_yml = (project.directory / "meltano.yml").read_text()
    assert API_KEY not in meltano_yml
    assert "page_size: 7" in meltano_yml

    listing = project.succeed("config", "list", "--all", "tap-braintrust")
    printed = project.succeed("config", "print", "tap-braintrust")
    assert "api_key [env: TAP_BRAINTRUST_API_KEY] current value: (redacted)" in listing.stdout
    assert f"current value: '{emulator.url}' (from the TAP_BRAINTRUST_API_URL" in listing.stdout
    assert json.loads(printed.stdout)["page_size"] == 7
    assert json.loads(printed.stdout)["api_key"] == "*****"
    run = project.succeed("run", "tap-braintrust", "target-postgres")
    for shown in (listing, printed, run):
        assert API_KEY not in shown.output
        assert API_KEY[3:15] not in shown.output

    # Only the named project, read 7 rows or objects at a time, with the key from `.env`.
    assert warehouse.query("SELECT id FROM braintrust.projects") == [(chosen["id"],)]
    assert warehouse.query("SELECT DISTINCT project_id FROM braintrust.project_logs") == [
        (chosen["id"],)
    ]
    btql = [
        request
        for request in emulator.request_log
        if request.path == "/btql" and not is_delete_check(request.json_body)
    ]
    assert btql
    assert {request.json_body["query"]["limit"] for request in btql} == {7}
    assert all(r.headers["authorization"] == f"Bearer {API_KEY}" for r in emulator.request_log)


def test_a_throwaway_copy_leaves_out_what_a_user_set_up_for_a_real_org() -> None:
    """The demo and these tests must neither read a user's settings nor write their state."""
    shipped = yaml.safe_load((ROOT / "meltano.yml").read_text())
    customised = {
        **shipped,
        "state_backend": {"uri": "s3://their-bucket/meltano-state"},
        "database_uri": "postgresql://their-meltano-db",
        "environments": [
            {
                "name": "dev",
                "config": {"plugins": {"extractors": [
                    {"name": "tap-braintrust", "config": {"project_names": ["Support bot"]}}
                ]}},
            }
        ],
    }  # fmt: skip
    customised["plugins"]["extractors"][0]["config"] = {"start_date": "2026-01-01"}
    copy = throwaway_definition(customised)
    text = yaml.safe_dump(copy)
    for added in ("their-bucket", "their-meltano-db", "Support bot", "2026-01-01"):
        assert added not in text
    assert copy["plugins"]["loaders"] == shipped["plugins"]["loaders"]  # their env and config
    assert copy["environments"] == [{"name": "dev"}]
