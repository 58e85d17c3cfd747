"""Meltano as the user runs it: this repository's `meltano.yml`, in a throwaway project.

Each copy gets its own system database (so its own state store, Meltano's default), `.env`
and `meltano.yml` edits, and shares the plugin venvs `meltano install` built in the
repository, so neither the tests nor the demo reinstall plugins or touch the developer's
own pipeline: its state, its `.env`, or tap settings it saved in `meltano.yml`.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml

if TYPE_CHECKING:
    from collections.abc import Iterator

ROOT = Path(__file__).resolve().parent.parent
MELTANO = str(Path(sys.executable).with_name("meltano"))
_PLUGIN_KINDS = ("extractors", "loaders")
# Settings a developer may have exported (PG* reach target-postgres' libpq); a copy must
# see only what it is given.
# Tap settings this repository's meltano.yml sets itself (tap-braintrust--json-text).
_SHIPPED_SETTINGS = frozenset({"json_fields_as_text"})
_OWN_PREFIXES = ("TAP_BRAINTRUST_", "TARGET_POSTGRES_", "TARGET_DUCKDB_", "MELTANO_", "PG")


def clean_environment(**settings: str) -> dict[str, str]:
    """This process's environment without plugin or Meltano settings, plus `settings`."""
    inherited = {k: v for k, v in os.environ.items() if not k.startswith(_OWN_PREFIXES)}
    return {**inherited, "MELTANO_SEND_ANONYMOUS_USAGE_STATS": "false", **settings}


# What the demo's and the tests' pipelines need on every supported Python.
PIPELINE_PLUGINS = ("tap-braintrust", "target-postgres")


class PluginInstallError(RuntimeError):
    """`meltano install` failed; the message ends with what it printed."""

    @property
    def no_wheel(self) -> bool:
        """Whether it failed for want of a wheel for this Python (meltano.yml's loaders
        refuse to build the packages they pin from source), not for another reason."""
        return "Wheels are required for" in str(self) or "has no usable wheels" in str(self)


def install_plugins(*names: str) -> None:
    """`meltano install NAMES` in the repository (quick when the venvs are already current).

    Only the plugins named: a loader the run does not use may not install on this Python.
    """
    MeltanoProject(ROOT, clean_environment()).install(*names)


def throwaway_definition(project: dict[str, Any]) -> dict[str, Any]:
    """The project as shipped: its plugins, without what a user added for a real org.

    That is tap settings saved by `meltano config set` (in the `dev` environment, or on the
    plugin) and a state backend or system database of their own, which a throwaway run
    must not write the emulator's watermarks into.
    """
    plugins = dict(project["plugins"])
    plugins["extractors"] = [_as_shipped(extractor) for extractor in plugins["extractors"]]
    return {
        "requires_meltano": project["requires_meltano"],
        "project_id": project["project_id"],
        "default_environment": project["default_environment"],
        "environments": [{"name": env["name"]} for env in project["environments"]],
        "plugins": plugins,
    }


def _as_shipped(extractor: dict[str, Any]) -> dict[str, Any]:
    """An extractor without its saved config, but for the settings the project ships."""
    shipped = {
        key: value
        for key, value in (extractor.get("config") or {}).items()
        if key in _SHIPPED_SETTINGS
    }
    kept = {key: value for key, value in extractor.items() if key != "config"}
    return {**kept, "config": shipped} if shipped else kept


@dataclass(frozen=True)
class Run:
    """One `meltano` command's outcome and how long it took."""

    returncode: int
    stdout: str
    stderr: str
    seconds: float

    @property
    def output(self) -> str:
        """Everything it printed: Meltano logs, and the plugins' logs, on stderr."""
        return self.stdout + self.stderr


@dataclass
class MeltanoProject:
    """A copy of the repository's Meltano project in `directory`, sharing its plugins."""

    directory: Path
    env: dict[str, str]

    @classmethod
    def copy_to(cls, directory: Path, **settings: str) -> MeltanoProject:
        """Make the copy; `settings` become environment variables of every command."""
        directory.mkdir(parents=True, exist_ok=True)
        shipped = throwaway_definition(yaml.safe_load((ROOT / "meltano.yml").read_text()))
        (directory / "meltano.yml").write_text(yaml.safe_dump(shipped, sort_keys=False))
        (directory / ".meltano").mkdir()
        for kind in _PLUGIN_KINDS:
            (directory / ".meltano" / kind).symlink_to(ROOT / ".meltano" / kind)
        return cls(directory, clean_environment(**settings))

    def with_env(self, **settings: str) -> MeltanoProject:
        """The same project, its commands run with more environment variables."""
        return MeltanoProject(self.directory, {**self.env, **settings})

    @contextlib.contextmanager
    def definition(self) -> Iterator[dict[str, Any]]:
        """This copy's `meltano.yml`, to change: written back when the block ends."""
        path = self.directory / "meltano.yml"
        definition = yaml.safe_load(path.read_text())
        yield definition
        path.write_text(yaml.safe_dump(definition, sort_keys=False))

    def install(self, *names: str) -> None:
        """`meltano install NAMES`; PluginInstallError, with what it printed, if it fails."""
        run = self.run("install", *names)
        if run.returncode != 0:
            message = f"`meltano install {' '.join(names)}` failed:\n{run.output[-3000:]}"
            raise PluginInstallError(message)

    def install_own_plugins(self, *names: str) -> None:
        """Install `names` in this copy rather than share the repository's (for another
        Python's plugins, with `MELTANO_PYTHON`)."""
        for kind in _PLUGIN_KINDS:
            (self.directory / ".meltano" / kind).unlink()
        with self.definition() as definition:
            for extractor in definition["plugins"]["extractors"]:
                if extractor.get("pip_url") == "-e .":  # the tap: this repository, not the copy
                    extractor["pip_url"] = f"-e {ROOT}"
        self.install(*names)

    def create_tables(self, tap: str = "tap-braintrust", loader: str = "target-postgres") -> Run:
        """The serial set-up run before parallel jobs (README "Parallel jobs"): a start date
        in the future makes the tap send every stream's SCHEMA and no rows, so the loader
        creates every table; no state is kept."""
        future = self.with_env(TAP_BRAINTRUST_START_DATE="2999-01-01T00:00:00Z")
        return future.succeed("run", "--no-state-update", tap, loader)

    def run(self, *args: str) -> Run:
        """`meltano ARGS` in this project."""
        started = time.monotonic()
        done = subprocess.run(
            [MELTANO, *args],
            cwd=self.directory,
            env=self.env,
            capture_output=True,
            text=True,
            timeout=600,
            check=False,
        )
        return Run(done.returncode, done.stdout, done.stderr, time.monotonic() - started)

    def succeed(self, *args: str) -> Run:
        """`meltano ARGS`, which must exit 0."""
        run = self.run(*args)
        assert run.returncode == 0, f"meltano {' '.join(args)}:\n{run.output[-6000:]}"
        return run
