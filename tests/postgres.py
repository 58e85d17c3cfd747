"""A real, throwaway PostgreSQL server for the end-to-end tests.

`initdb` and `pg_ctl` start it in a temporary directory on a free loopback port, with a
password (scram-sha-256) as a real warehouse would have; everything is removed afterwards.
PostgreSQL refuses to run as root, so under root the server runs as the `postgres` user the
Debian package creates (else `nobody`). `scripts/test` installs the package when it is missing.
"""

from __future__ import annotations

import contextlib
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
    """The server binaries are missing or the server did not start."""


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

    def create_database(self, name: str) -> None:
        """An empty database, so each test loads into its own."""
        with self.connect("postgres", autocommit=True) as admin:
            admin.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))

    def target_env(self, database: str) -> dict[str, str]:
        """target-postgres settings, as Meltano reads them from the environment."""
        return {
            "TARGET_POSTGRES_HOST": self.host,
            "TARGET_POSTGRES_PORT": str(self.port),
            "TARGET_POSTGRES_USER": self.user,
            "TARGET_POSTGRES_PASSWORD": self.password,
            "TARGET_POSTGRES_DATABASE": database,
        }


def server_binaries() -> Path:
    """The directory holding `initdb` and `pg_ctl`: on PATH, else Debian's versioned one."""
    on_path = shutil.which("initdb")
    if on_path and shutil.which("pg_ctl"):
        return Path(on_path).resolve().parent
    versions = sorted(
        (
            path
            for path in _DEBIAN_BINARIES.glob("*/bin")
            if (path / "initdb").exists() and (path / "pg_ctl").exists()
        ),
        key=lambda path: int(path.parent.name) if path.parent.name.isdigit() else 0,
    )
    if not versions:
        message = (
            "PostgreSQL server programs (initdb, pg_ctl) not found on PATH or under "
            f"{_DEBIAN_BINARIES}; install them with `apt-get install -y postgresql` "
            "(`bash scripts/test` does so when it runs as root)"
        )
        raise PostgresUnavailableError(message)
    return versions[-1]


@contextlib.contextmanager
def running_postgres() -> Iterator[PostgresServer]:
    """Start a server, yield it, then stop it and delete its files."""
    binaries = server_binaries()
    account = _unprivileged_account()
    # Under root, a private TMPDIR would be out of the server account's reach.
    workdir = Path(tempfile.mkdtemp(prefix="tap-braintrust-pg-", dir=_shared_tmp()))
    try:
        os.chown(workdir, account.pw_uid, account.pw_gid)
        password = secrets.token_urlsafe(18)
        password_file = workdir / "password"
        password_file.write_text(password)
        os.chown(password_file, account.pw_uid, account.pw_gid)
        data = workdir / "data"
        server = _Programs(binaries, account, workdir)
        server.run("initdb", "--pgdata", str(data), "--username", _SUPERUSER,
                   "--pwfile", str(password_file), "--auth-host=scram-sha-256",
                   "--auth-local=trust", "--encoding=UTF8", "--locale=C", "--no-sync")  # fmt: skip
        password_file.unlink()
        port = server.start(data)
        try:
            yield PostgresServer("127.0.0.1", port, _SUPERUSER, password)
        finally:
            server.run("pg_ctl", "--pgdata", str(data), "--mode", "fast", "stop")
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


@dataclass(frozen=True)
class _Programs:
    """PostgreSQL's server programs, run as the unprivileged account."""

    binaries: Path
    account: pwd.struct_passwd
    workdir: Path

    def start(self, data: Path) -> int:
        """Start on a free loopback port (tried again if another process takes it first)."""
        log = self.workdir / "server.log"
        for attempt in range(_START_ATTEMPTS):
            port = _free_port()
            # Durability is not under test, so no fsync. The time zone is deliberately not
            # UTC, so the tests prove that loaded timestamps do not depend on it.
            options = (
                f"-h 127.0.0.1 -p {port} -k '{self.workdir}' -c fsync=off"
                f" -c synchronous_commit=off -c timezone={_SERVER_TIME_ZONE}"
            )
            try:
                self.run("pg_ctl", "--pgdata", str(data), "--log", str(log),
                         "--options", options, "--wait", "start")  # fmt: skip
            except PostgresUnavailableError as error:
                # A start that timed out may still come up: make sure it does not outlive us.
                with contextlib.suppress(PostgresUnavailableError):
                    self.run("pg_ctl", "--pgdata", str(data), "--mode", "immediate", "stop")
                if attempt == _START_ATTEMPTS - 1:
                    message = f"{error}\n{_tail(log)}"
                    raise PostgresUnavailableError(message) from None
            else:
                return port
        raise AssertionError  # unreachable: the last attempt returns or raises

    def run(self, program: str, *args: str) -> None:
        """Run one program; raise with its output if it fails."""
        privileged = os.geteuid() == 0
        environment = {k: v for k, v in os.environ.items() if not k.startswith("PG")}
        done = subprocess.run(
            [str(self.binaries / program), *args],
            user=self.account.pw_uid if privileged else None,
            group=self.account.pw_gid if privileged else None,
            extra_groups=[] if privileged else None,
            env={**environment, "LC_ALL": "C", "HOME": str(self.workdir)},
            cwd=self.workdir,
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
        if done.returncode != 0:
            message = f"{program} {' '.join(args)} failed ({done.returncode}): "
            raise PostgresUnavailableError(message + (done.stderr or done.stdout).strip())


def _shared_tmp() -> str | None:
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
