"""Settings: validation, discovery without config, and docs that stay in step with the code."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest
import yaml

from tap_braintrust.client import BraintrustStream
from tap_braintrust.tap import TapBraintrust
from tests.conftest import API_KEY, STREAM_SCHEMAS, TAP_EXECUTABLE

if TYPE_CHECKING:
    from collections.abc import Callable

    from tests.conftest import TapRun

ROOT = Path(__file__).parent.parent
GOOD = {"api_key": API_KEY, "api_url": "http://127.0.0.1:9"}


@pytest.mark.parametrize(
    ("config", "problem"),
    [
        ({}, "'api_key' is a required property"),
        ({**GOOD, "api_key": ""}, "should be non-empty"),
        ({**GOOD, "api_key": f" {API_KEY}\n"}, "api_key must be the key alone"),
        ({**GOOD, "api_key": "sk-abc\nsecret-tail"}, "api_key must be the key alone"),
        ({**GOOD, "api_key": "sk-abc\u2019"}, "api_key must be the key alone"),
        ({**GOOD, "org_name": " acme"}, "org_name must be the org's name"),
        ({**GOOD, "org_name": "acme\r\nX-Injected: 1"}, "org_name must be the org's name"),
        ({**GOOD, "org_name": "\u65e5\u672c"}, "in Latin-1 text"),
        (
            {**GOOD, "project_id": "abc"},
            "unknown setting 'project_id' (did you mean 'project_ids'?)",
        ),
        ({**GOOD, "api_url": None}, "api_url is null; remove it to use the default"),
        (
            {**GOOD, "request_timeout": None},
            "request_timeout is null; remove it to use the default",
        ),
        ({**GOOD, "api_url": "http://[::1"}, "api_url is not a valid URL (Invalid IPv6 URL)"),
        ({**GOOD, "api_url": "https://api.braintrust.dev:99999"}, "api_url is not a valid URL"),
        ({**GOOD, "api_url": "https://api.brain trust.dev"}, "api_url must be an http(s) base URL"),
        ({**GOOD, "api_url": "api.braintrust.dev"}, "api_url must be an http(s) base URL"),
        ({**GOOD, "api_url": "ftp://api.braintrust.dev"}, "api_url must be an http(s) base URL"),
        ({**GOOD, "api_url": "https://u:p@api.braintrust.dev"}, "must not carry credentials"),
        ({**GOOD, "api_url": "https://api.braintrust.dev/?x=1"}, "without a query string"),
        ({**GOOD, "start_date": "last tuesday"}, "start_date: 'last tuesday' is not an ISO-8601"),
        ({**GOOD, "start_date": "2026-02-30T00:00:00Z"}, "start_date: '2026-02-30T00:00:00Z'"),
        ({**GOOD, "page_size": 0}, "0 is less than the minimum of 1"),
        ({**GOOD, "page_size": 1001}, "1001 is greater than the maximum of 1000"),
        ({**GOOD, "page_size": "100"}, "'100' is not of type 'integer'"),
        ({**GOOD, "request_timeout": 0}, "0 is less than the minimum of 1"),
        ({**GOOD, "project_ids": "abc"}, "'abc' is not of type 'array'"),
        ({**GOOD, "project_ids": ["a", "a"]}, "project_ids lists a value more than once"),
        ({**GOOD, "project_names": [""]}, "should be non-empty"),
    ],
)
def test_bad_config_fails_with_a_clear_message(
    run_tap: Callable[..., TapRun], config: dict[str, Any], problem: str
) -> None:
    run = run_tap(config)
    assert run.returncode == 1
    assert problem in run.stderr
    assert "Traceback" not in run.stderr
    assert "secret-tail" not in run.stderr
    assert run.messages == []


def test_every_config_problem_is_reported_at_once(run_tap: Callable[..., TapRun]) -> None:
    run = run_tap({"api_url": "nope", "page_size": 0, "start_date": "soon"})
    assert run.returncode == 1
    for problem in ("'api_key' is a required property", "api_url must be", "minimum of 1", "soon"):
        assert problem in run.stderr


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
    (extractor,) = meltano["plugins"]["extractors"]
    declared = {setting["name"]: setting for setting in extractor["settings"]}
    properties = TapBraintrust.config_jsonschema["properties"]
    # The SDK adds its own settings (stream maps, batch...) to this schema in place.
    builtin: dict[str, Any] = {"properties": {}}
    TapBraintrust.append_builtin_config(builtin)
    assert declared.keys() == properties.keys() - builtin["properties"].keys()
    assert declared["api_key"]["sensitive"] is True
    for name, setting in declared.items():  # values and kinds agree too
        assert setting.get("value") == properties[name].get("default"), name
        kind = {"string": "string", "integer": "integer", "array": "array"}
        json_type = properties[name]["type"][0]
        expected_kind = "date_iso8601" if name == "start_date" else kind[json_type]
        assert setting["kind"] == expected_kind, name
