"""Shared fixtures: a live emulator of the Braintrust API and a runner for the real tap CLI."""

from __future__ import annotations

import json
import subprocess
import sys
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

from tests.emulator import Emulator, running_emulator

if TYPE_CHECKING:
    from collections.abc import Callable, Iterator

    from tests.emulator.store import ObjectKind

API_KEY = "sk-test-5c1a9e0d7f3b4e8aa1b2c3d4e5f60718"
# Each object stream and the emulator's name for what it lists.
OBJECT_STREAMS: dict[str, ObjectKind] = {
    "projects": "project",
    "experiments": "experiment",
    "datasets": "dataset",
}
TAP_EXECUTABLE = str(Path(sys.executable).with_name("tap-braintrust"))


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Let the SDK's attribute tests pass over `deleted_at`, which listings never fill.

    Braintrust lists only live objects, so the field is always null there and the SDK
    would warn (an error here) that it found no value to check.
    """
    for item in items:
        if item.nodeid.endswith(".deleted_at]"):
            item.add_marker(pytest.mark.filterwarnings("ignore:No records were available"))


@pytest.fixture
def emulator() -> Iterator[Emulator]:
    """An emulator with the deterministic demo data, fresh for each test."""
    with running_emulator(api_key=API_KEY, demo_seed=7) as emu:
        yield emu


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


@pytest.fixture
def run_tap(tmp_path: Path) -> Callable[..., TapRun]:
    """Run the installed `tap-braintrust` command with a config (and optional catalog)."""

    def run(
        config: dict[str, Any] | None,
        *args: str,
        catalog: dict[str, Any] | None = None,
    ) -> TapRun:
        command = [TAP_EXECUTABLE, *args]
        if config is not None:
            config_path = tmp_path / "config.json"
            config_path.write_text(json.dumps(config))
            command += ["--config", str(config_path)]
        if catalog is not None:
            catalog_path = tmp_path / "catalog.json"
            catalog_path.write_text(json.dumps(catalog))
            command += ["--catalog", str(catalog_path)]
        done = subprocess.run(command, capture_output=True, text=True, timeout=300, check=False)
        return TapRun(done.returncode, done.stdout, done.stderr)

    return run
