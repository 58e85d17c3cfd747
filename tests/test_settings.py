"""Settings: defaults, discovery without config, and docs that stay in step with the code.

Bad settings are in test_bad_input.py."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml

from tap_braintrust.client import BraintrustStream
from tap_braintrust.tap import TapBraintrust
from tests.conftest import API_KEY, STREAM_SCHEMAS, TAP_EXECUTABLE

if TYPE_CHECKING:
    from collections.abc import Callable

    from tests.conftest import TapRun

ROOT = Path(__file__).parent.parent
GOOD = {"api_key": API_KEY, "api_url": "http://127.0.0.1:9"}


def test_api_url_tolerates_a_trailing_slash() -> None:
    tap = TapBraintrust(config={**GOOD, "api_url": "https://api-eu.braintrust.dev/"})
    projects = tap.streams["projects"]
    assert isinstance(projects, BraintrustStream)
    assert projects.url_base == "https://api-eu.braintrust.dev"


def test_defaults_apply() -> None:
    tap = TapBraintrust(config={"api_key": API_KEY})
    assert tap.config["api_url"] == "https://api.braintrust.dev"
    assert tap.config["page_size"] == 1000
    assert tap.config["request_timeout"] == 60


def test_discover_needs_no_config_and_no_network() -> None:
    # No config at all, and every HTTP(S) request would go to a proxy that is not there.
    dead_proxy = "http://127.0.0.1:9"
    env = {**os.environ, "HTTP_PROXY": dead_proxy, "HTTPS_PROXY": dead_proxy, "NO_PROXY": ""}
    env = {key: value for key, value in env.items() if not key.startswith("TAP_BRAINTRUST_")}
    done = subprocess.run(
        [TAP_EXECUTABLE, "--discover"],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
        env=env,
    )
    catalog = json.loads(done.stdout)
    streams = {entry["tap_stream_id"]: entry for entry in catalog["streams"]}
    assert set(streams) == set(STREAM_SCHEMAS)
    for name in ("projects", "experiments", "datasets"):
        assert streams[name]["key_properties"] == ["id"]
        assert streams[name]["replication_method"] == "FULL_TABLE"
    for name, parent_key in (
        ("project_logs", "project_id"),
        ("experiment_events", "experiment_id"),
        ("dataset_events", "dataset_id"),
    ):
        assert streams[name]["key_properties"] == [parent_key, "id"]
        assert streams[name]["replication_method"] == "INCREMENTAL"
        assert streams[name]["replication_key"] == "created"


def test_readme_settings_table_matches_about(run_tap: Callable[..., TapRun]) -> None:
    about = run_tap(None, "--about", "--format=markdown").stdout
    table = [line for line in about.splitlines() if line.startswith("|")]
    readme = (ROOT / "README.md").read_text().splitlines()
    assert table, "no settings table in --about output"
    start = readme.index(table[0])
    assert readme[start : start + len(table)] == table


def test_about_shows_no_secret(run_tap: Callable[..., TapRun]) -> None:
    run = run_tap({"api_key": API_KEY}, "--about", "--format=json")
    assert run.returncode == 0, run.stderr
    assert API_KEY not in run.stdout + run.stderr
    settings = json.loads(run.stdout)["settings"]["properties"]
    assert settings["api_key"]["secret"] is True


def test_meltano_settings_mirror_the_config_schema() -> None:
    meltano = yaml.safe_load((ROOT / "meltano.yml").read_text())
    (extractor,) = [e for e in meltano["plugins"]["extractors"] if e["name"] == "tap-braintrust"]
    declared = {setting["name"]: setting for setting in extractor["settings"]}
    properties = TapBraintrust.config_jsonschema["properties"]
    # The SDK adds its own settings (stream maps, batch...) to this schema in place.
    builtin: dict[str, Any] = {"properties": {}}
    TapBraintrust.append_builtin_config(builtin)
    # Of the SDK's, only batch_config is declared: Meltano passes on declared settings only.
    assert "batch_config" in builtin["properties"]
    assert declared.keys() == (properties.keys() - builtin["properties"].keys()) | {"batch_config"}
    assert declared["batch_config"]["kind"] == "object"
    assert declared["api_key"]["sensitive"] is True
    del declared["batch_config"]
    for name, setting in declared.items():  # values and kinds agree too
        assert setting.get("value") == properties[name].get("default"), name
        kind = {
            "string": "string",
            "integer": "integer",
            "number": "decimal",
            "array": "array",
            "boolean": "boolean",
        }
        json_type = properties[name]["type"][0]
        expected_kind = "date_iso8601" if name == "start_date" else kind[json_type]
        assert setting["kind"] == expected_kind, name
