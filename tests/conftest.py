"""Shared fixtures: a live emulator of the Braintrust API and a runner for the real tap CLI."""

from __future__ import annotations

import functools
import json
import os
import subprocess
import sys
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

from tap_braintrust import schemas
from tests.emulator import Emulator, running_emulator
from tests.meltano_project import PIPELINE_PLUGINS, PluginInstallError, install_plugins
from tests.postgres import PostgresServer, running_postgres, system_binaries

if TYPE_CHECKING:
    from collections.abc import Callable, Iterator, Mapping

    from tests.emulator.generator import Demo
    from tests.emulator.store import ObjectKind

API_KEY = "sk-test-5c1a9e0d7f3b4e8aa1b2c3d4e5f60718"
# Each object stream and the emulator's name for what it lists.
OBJECT_STREAMS: dict[str, ObjectKind] = {
    "projects": "project",
    "experiments": "experiment",
    "datasets": "dataset",
}
TAP_EXECUTABLE = str(Path(sys.executable).with_name("tap-braintrust"))
STREAM_SCHEMAS = {
    "projects": schemas.PROJECT,
    "experiments": schemas.EXPERIMENT,
    "datasets": schemas.DATASET,
    "project_logs": schemas.PROJECT_LOG,
    "experiment_events": schemas.EXPERIMENT_EVENT,
    "dataset_events": schemas.DATASET_EVENT,
}


def json_union_fields() -> set[str]:
    """`stream.field` of every free-form JSON field (typed as a union of all JSON types)."""
    return {
        f"{stream}.{name}"
        for stream, schema in STREAM_SCHEMAS.items()
        for name in schemas.json_text_fields(schema)
    }


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Adjust the SDK's attribute tests where they misread this tap's schemas.

    Braintrust lists only live objects, so `deleted_at` is always null in listings, and the
    demo's dataset rows are all inserted directly, so none has an `origin`: the SDK would
    warn (an error here) that it found no value to check. And the SDK checks a
    free-form JSON field (a union of every JSON type) as if it were each type alone, e.g.
    that every `input` is a boolean; those fields are checked against their full schema in
    test_core.py instead.
    """
    unions = json_union_fields()
    kept: list[pytest.Item] = []
    dropped: list[pytest.Item] = []
    for item in items:
        if item.nodeid.endswith((".deleted_at]", "dataset_events.origin]")):
            item.add_marker(pytest.mark.filterwarnings("ignore:No records were available"))
        attribute = item.nodeid.rpartition("[")[2].rstrip("]")
        is_type_check = "test_tap_stream_attribute_is_" in item.nodeid
        (dropped if is_type_check and attribute in unions else kept).append(item)
    if dropped:
        config.hook.pytest_deselected(items=dropped)
        items[:] = kept


@pytest.fixture
def emulator() -> Iterator[Emulator]:
    """An emulator with the deterministic demo data, fresh for each test."""
    with running_emulator(api_key=API_KEY, demo_seed=7) as emu:
        yield emu


def demo_of(emu: Emulator) -> Demo:
    """The demo data an emulator was started with."""
    assert emu.demo is not None, "this emulator has no demo data"
    return emu.demo


def select_only(catalog: dict[str, Any], stream: str) -> dict[str, Any]:
    """`catalog` (from --discover) with only `stream` selected."""
    for entry in catalog["streams"]:
        for metadata in entry["metadata"]:
            if metadata["breadcrumb"] == []:
                metadata["metadata"]["selected"] = entry["tap_stream_id"] == stream
    return catalog


def is_delete_check(body: Any) -> bool:
    """Whether a `/btql` body is one of delete detection's: a count, or a read at a version."""
    if not isinstance(body, dict):
        return False
    query = body.get("query")
    return (isinstance(query, str) and " AS row_count" in query) or "version" in body


def tap_config(emu: Emulator, **overrides: Any) -> dict[str, Any]:
    """A working config for `emu`; `overrides` add or replace settings."""
    return {"api_key": API_KEY, "api_url": emu.url, **overrides}


@dataclass
class TapRun:
    """What one run of the tap CLI printed, parsed into Singer messages."""

    returncode: int
    stdout: str
    stderr: str

    @cached_property
    def messages(self) -> list[dict[str, Any]]:
        """Every Singer message on stdout."""
        return [json.loads(line) for line in self.stdout.splitlines() if line.startswith("{")]

    def records(self, stream: str) -> list[dict[str, Any]]:
        """The records emitted for `stream`, in order."""
        return [
            m["record"] for m in self.messages if m["type"] == "RECORD" and m["stream"] == stream
        ]

    def schemas(self) -> dict[str, dict[str, Any]]:
        """The last SCHEMA message of each stream."""
        return {m["stream"]: m for m in self.messages if m["type"] == "SCHEMA"}

    @property
    def final_state(self) -> dict[str, Any]:
        """The value of the last STATE message: what the next run starts from."""
        states: list[dict[str, Any]] = [m["value"] for m in self.messages if m["type"] == "STATE"]
        assert states, "the run emitted no STATE message"
        return states[-1]


def run_tap_in(
    directory: Path,
    config: dict[str, Any] | None,
    *args: str,
    catalog: dict[str, Any] | None = None,
    state: dict[str, Any] | None = None,
    env: Mapping[str, str] | None = None,
) -> TapRun:
    """Run the installed `tap-braintrust` command, its input files written in `directory`.

    `env` adds environment variables (e.g. `TAP_BRAINTRUST_LOGLEVEL`) to this process's.
    """
    command = [TAP_EXECUTABLE, *args]
    for option, content in (("--config", config), ("--catalog", catalog), ("--state", state)):
        if content is not None:
            path = directory / f"{option[2:]}.json"
            path.write_text(json.dumps(content))
            command += [option, str(path)]
    done = subprocess.run(
        command,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
        env={**os.environ, **env} if env else None,
    )
    return TapRun(done.returncode, done.stdout, done.stderr)


@pytest.fixture
def run_tap(tmp_path: Path) -> Callable[..., TapRun]:
    """Run the installed `tap-braintrust` command with a config (and optional catalog, state)."""
    return functools.partial(run_tap_in, tmp_path)


@pytest.fixture(scope="session")
def postgres() -> Iterator[PostgresServer]:
    """A real PostgreSQL for the whole session; each test creates its own database."""
    with running_postgres() as server:
        yield server


@pytest.fixture(scope="session")
def system_postgres() -> Iterator[PostgresServer]:
    """The same, from Debian's PostgreSQL packages; skips the test when they are missing."""
    binaries = system_binaries()
    if binaries is None:
        pytest.skip("Debian's PostgreSQL server packages are not installed")
    with running_postgres(binaries) as server:
        yield server


@pytest.fixture(scope="session")
def meltano_plugins() -> None:
    """The tap and target-postgres installed in the repository's Meltano project."""
    install_plugins(*PIPELINE_PLUGINS)


@functools.cache
def _loader_without_wheel(loader: str) -> str | None:
    """Why `loader` has no wheel for this Python, or None once it is installed.

    Tried once a session. Any other install failure (an index outage, say) fails the tests.
    """
    try:
        install_plugins(loader)
    except PluginInstallError as error:
        if not error.no_wheel:
            raise
        return str(error)
    return None


def require_loader(loader: str) -> None:
    """Install `loader`, or skip the test, saying why.

    Some loaders pin packages that have no wheel for the newest Pythons (meltano.yml), and
    nothing is compiled from source.
    """
    problem = _loader_without_wheel(loader)
    if problem is not None:
        version = ".".join(map(str, sys.version_info[:2]))
        pytest.skip(f"{loader} has no wheel for Python {version}: {_wheel_message(problem)}")


def _wheel_message(output: str) -> str:
    """The installer's lines about the missing wheel, out of Meltano's framed output."""
    lines = (line.strip(" │╭╮╰╯─") for line in output.splitlines())
    return " ".join(line for line in lines if "wheel" in line.lower())
