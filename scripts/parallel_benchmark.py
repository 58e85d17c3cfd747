"""Do BATCH files keep target-postgres from being the bottleneck when two jobs run at once?

Run through `bash scripts/parallel-benchmark [--rows N] [--turns K] [--skew S]`. The emulator,
in its own process, holds two projects of N log rows (about 1.5 KB each; `--skew` puts that
share of all 2N rows in the first). `meltano run` of `project_logs` only, each time into a
fresh database of a throwaway PostgreSQL, after a serial set-up run that creates the tables
(start date in the future, `--no-state-update`; not timed):

- `one job`: `meltano run tap-braintrust target-postgres` reading both projects;
- `two parts`: `tap-braintrust--part-a` and `--part-b` (inherited from tap-braintrust, one
  project each), each with its own `meltano run ... target-postgres`, started at once;

each with RECORD messages and with `batch_config` jsonl.gz files. Wall time runs from the start
to the last exit. target-postgres' CPU seconds are sampled from /proc every 0.25 s (the last
fraction of a second may be missed); `cores busy` is all CPU seconds (the jobs from
getrusage, PostgreSQL's server and the emulator from /proc) over the wall time. Modes take
turns, rotated each turn, and the table shows medians over the turns.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import resource
import shutil
import statistics
import sys
import tempfile
import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any

from psycopg import sql

from scripts.benchmark import API_KEY, EmulatorProcess
from tests.meltano_project import MeltanoProject
from tests.postgres import PostgresServer, running_postgres

if TYPE_CHECKING:
    from multiprocessing.connection import Connection

TICK = os.sysconf("SC_CLK_TCK")
MESSAGES = {"RECORD": None, "BATCH jsonl.gz": {"format": "jsonl", "compression": "gzip"}}
LAYOUTS = ("one job", "two parts")
PARTS = ("tap-braintrust--part-a", "tap-braintrust--part-b")


def _serve(sizes: tuple[int, int], row_bytes: int, pipe: Connection) -> None:
    """The emulator's process: two projects of `sizes` rows; sends (url, ids, its pid)."""
    from tests.emulator import Emulator, generate_logs  # noqa: PLC0415 - a test fixture

    emulator = Emulator(api_key=API_KEY)
    ids = []
    for n, size in enumerate(sizes):
        project = emulator.store.add_project(f"bench-{n}")
        generate_logs(emulator.store, project["id"], size, row_bytes=row_bytes, seed=7 + n)
        ids.append(project["id"])
    with emulator:
        pipe.send((emulator.url, ids, os.getpid()))
        pipe.recv()


def _stat(pid: int) -> tuple[int, float, float]:
    """A process's parent, its own CPU seconds, and those of its reaped children."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    own, reaped = (int(fields[11]) + int(fields[12])), (int(fields[13]) + int(fields[14]))
    return int(fields[1]), own / TICK, reaped / TICK


class TargetCpu:
    """Samples the CPU seconds of this process's target-postgres descendants until `stop`."""

    def __init__(self) -> None:
        """Start sampling."""
        self._peak: dict[int, float] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)
        self._thread.start()

    def _loop(self) -> None:
        me = os.getpid()
        while not self._stop.wait(0.25):
            stats: dict[int, tuple[int, float, float]] = {}
            for entry in os.scandir("/proc"):
                with contextlib.suppress(OSError, IndexError, ValueError):  # gone, or no pid
                    stats[int(entry.name)] = _stat(int(entry.name))
            for pid, (parent, own, _) in stats.items():
                ancestor = parent  # only our own jobs, not another run's target-postgres
                while ancestor not in (me, 0, 1) and ancestor in stats:
                    ancestor = stats[ancestor][0]
                with contextlib.suppress(OSError):
                    cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
                    if ancestor == me and b"/bin/target-postgres\0" in cmdline:
                        self._peak[pid] = max(own, self._peak.get(pid, 0.0))

    def stop(self) -> float:
        """Stop sampling; the CPU seconds of every target-postgres seen."""
        self._stop.set()
        self._thread.join()
        return sum(self._peak.values())


@dataclass(frozen=True)
class Result:
    """One timed mode: wall seconds, target-postgres' CPU seconds, and all CPU seconds."""

    messages: str
    layout: str
    seconds: float
    target_cpu: float
    all_cpu: float


@dataclass(frozen=True)
class Bench:
    """Where the rows come from and go to: the emulator and a running PostgreSQL."""

    server: PostgresServer
    work: Path
    url: str
    ids: list[str]
    emulator_pid: int
    rows: int

    def project(self, database: str, messages: str) -> MeltanoProject:
        """A throwaway Meltano project into `database`: project_logs only, with the parts."""
        settings = {"TAP_BRAINTRUST_API_URL": self.url, "TAP_BRAINTRUST_API_KEY": API_KEY}
        encoding = MESSAGES[messages]
        if encoding is not None:
            batches = self.work / f"{database}-batches"
            batches.mkdir()
            batch_config = {"encoding": encoding, "storage": {"root": batches.as_uri()}}
            settings["TAP_BRAINTRUST_BATCH_CONFIG"] = json.dumps(batch_config)
        settings.update(self.server.target_env(database))
        project = MeltanoProject.copy_to(self.work / database, **settings)
        with project.definition() as definition:
            extractors: list[dict[str, Any]] = definition["plugins"]["extractors"]
            for plugin in extractors:
                if plugin["name"] == "tap-braintrust":
                    plugin["select"] = ["project_logs.*"]
                    plugin["config"] = {**plugin.get("config", {}), "project_ids": self.ids}
            extractors += [
                {
                    "name": name,
                    "inherit_from": "tap-braintrust",
                    "config": {"project_ids": [project_id]},
                    "select": ["project_logs.*"],
                }
                for name, project_id in zip(PARTS, self.ids, strict=True)
            ]
        return project

    def measure(self, messages: str, layout: str) -> Result:
        """One mode into a fresh database, after the untimed set-up run; checks every row."""
        database = f"bench_{uuid.uuid4().hex[:8]}"
        self.server.create_database(database)
        try:
            project = self.project(database, messages)
            project.create_tables()
            result = self.timed(project, messages, layout)
            with self.server.connect(database) as connection:
                loaded = connection.execute(
                    "SELECT count(*), count(DISTINCT (project_id, id)) FROM braintrust.project_logs"
                ).fetchone()
        finally:
            shutil.rmtree(self.work / database, ignore_errors=True)
            shutil.rmtree(self.work / f"{database}-batches", ignore_errors=True)
            with self.server.connect("postgres", autocommit=True) as admin:
                drop = sql.SQL("DROP DATABASE {} WITH (FORCE)")
                admin.execute(drop.format(sql.Identifier(database)))
        if loaded != (self.rows, self.rows):
            msg = f"{messages}, {layout}: (rows, distinct rows) loaded {loaded}, not {self.rows}"
            raise RuntimeError(msg)
        return result

    def timed(self, project: MeltanoProject, messages: str, layout: str) -> Result:
        """The runs of one layout, started at once, to the last exit."""
        extractors = ["tap-braintrust"] if layout == "one job" else list(PARTS)
        server = self.postmaster()
        before = resource.getrusage(resource.RUSAGE_CHILDREN)
        emulator_before, server_before = _stat(self.emulator_pid)[1], sum(_stat(server)[1:])
        sampler = TargetCpu()
        started = time.monotonic()
        with ThreadPoolExecutor(len(extractors)) as pool:
            runs = list(pool.map(lambda e: project.run("run", e, "target-postgres"), extractors))
        seconds = time.monotonic() - started
        target = sampler.stop()
        after = resource.getrusage(resource.RUSAGE_CHILDREN)
        jobs = (after.ru_utime + after.ru_stime) - (before.ru_utime + before.ru_stime)
        emulator = _stat(self.emulator_pid)[1] - emulator_before
        for run in runs:
            if run.returncode != 0 or "database is locked" in run.output:
                msg = f"{messages}, {layout}: meltano run failed:\n{run.output[-3000:]}"
                raise RuntimeError(msg)
        all_cpu = jobs + emulator + sum(_stat(server)[1:]) - server_before
        return Result(messages, layout, seconds, target, all_cpu)

    def postmaster(self) -> int:
        """The PostgreSQL server's main process: the parent of any backend."""
        with self.server.connect("postgres") as connection:  # its /proc entry while it lives
            return _stat(connection.info.backend_pid)[0]


def report(results: list[Result], rows: int, turns: int, skew: float) -> str:
    """The Markdown table: medians per mode."""
    lines = [
        (
            f"{datetime.now(timezone.utc):%Y-%m-%d}, {os.cpu_count()} cores, {rows:,} rows "
            f"({skew:.0%} in the first project), median of {turns} turn(s):"
        ),
        "",
        "| messages | jobs | seconds | rows/s | target-postgres CPU s | cores busy |",
        "|---|---|---:|---:|---:|---:|",
    ]
    for messages in MESSAGES:
        for layout in LAYOUTS:
            mine = [r for r in results if (r.messages, r.layout) == (messages, layout)]
            seconds = statistics.median(r.seconds for r in mine)
            lines.append(
                f"| {messages} | {layout} | {seconds:.1f} | {rows / seconds:,.0f} "
                f"| {statistics.median(r.target_cpu for r in mine):.1f} "
                f"| {statistics.median(r.all_cpu / r.seconds for r in mine):.1f} |"
            )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark and print the table."""
    parser = argparse.ArgumentParser(prog="bash scripts/parallel-benchmark", description=__doc__)
    parser.add_argument("--rows", type=int, default=100_000, help="log rows per project")
    parser.add_argument("--row-bytes", type=int, default=1500, help="JSON bytes per row")
    parser.add_argument("--turns", type=int, default=3, help="turns of every mode")
    parser.add_argument("--skew", type=float, default=0.5, help="share of rows in project 1")
    args = parser.parse_args(argv)
    if not 0 < args.skew < 1:
        parser.error("--skew must be between 0 and 1")
    total = 2 * args.rows
    first = round(total * args.skew)
    started = time.monotonic()
    print(f"making {first:,} + {total - first:,} rows of ~{args.row_bytes} bytes ...", flush=True)
    emulator = EmulatorProcess(_serve, (first, total - first), args.row_bytes)
    modes = [(m, layout) for m in MESSAGES for layout in LAYOUTS]
    results = []
    try:
        print(f"ready in {time.monotonic() - started:.0f} s", flush=True)
        with tempfile.TemporaryDirectory() as work, running_postgres() as server:
            url, ids, emulator_pid = emulator.ready
            bench = Bench(server, Path(work), url, ids, emulator_pid, total)
            for turn in range(args.turns):
                for messages, layout in modes[turn % 4 :] + modes[: turn % 4]:
                    result = bench.measure(messages, layout)
                    print(
                        f"  turn {turn + 1}: {messages:<15} {layout:<9} {result.seconds:6.1f} s "
                        f"{total / result.seconds:>8,.0f} rows/s, target-postgres "
                        f"{result.target_cpu:.1f} CPU s, {result.all_cpu / result.seconds:.1f} "
                        "cores busy",
                        flush=True,
                    )
                    results.append(result)
    finally:
        emulator.stop()
    print(report(results, total, args.turns, args.skew))
    return 0


if __name__ == "__main__":
    sys.exit(main())
