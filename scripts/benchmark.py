"""How fast the tap reads, and in how much memory, next to the alternatives (README "Performance").

Run through `bash scripts/benchmark [--rows N] [--row-bytes B] [--runs K]`. The emulator, in
its own process, holds N log rows of about B bytes in one project, the same rows as records of
a dataset, and N/10 rows in a second project. Each reader runs as its own process, so its peak
RSS is its own, and the readers take turns, run after run, so a noisy machine slows each alike:

- `tap`: tap-braintrust with only `project_logs` selected, stdout to /dev/null;
- `floor`: the least any client must do: `requests` with the server cursor, decode each page,
  encode each row as one JSON line to /dev/null (`floor-json` with the standard library,
  `floor-msgspec` with the fastest codec);
- `sdk-export`: the official `braintrust` SDK iterating the dataset and writing JSON lines.

Then `meltano run tap-braintrust target-postgres` into the end-to-end tests' PostgreSQL, with
RECORD messages and with BATCH messages (jsonl.gz and parquet).
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml

if TYPE_CHECKING:
    from collections.abc import Callable, Iterator, Sequence
    from multiprocessing.connection import Connection

    import requests

ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent
API_KEY = "sk-benchmark-not-a-real-key"
READERS = ("tap", "floor-json", "floor-msgspec", "sdk-export")


@dataclass(frozen=True)
class BulkData:
    """Where the emulator serves the benchmark's rows."""

    url: str
    project_id: str
    tenth_project_id: str
    dataset_id: str


@dataclass(frozen=True)
class Measurement:
    """One reader's run: rows read, wall time from start to exit, and peak RSS."""

    reader: str
    rows: int
    seconds: float
    peak_rss_mb: float

    @property
    def rows_per_second(self) -> float:
        """Throughput over the whole run, start-up included."""
        return self.rows / self.seconds


# The emulator ------------------------------------------------------------------------------


def _serve(rows: int, row_bytes: int, pipe: Connection) -> None:
    """The emulator's process: make the rows, serve them, stop when the pipe says so."""
    from tests.emulator import Emulator, generate_logs  # noqa: PLC0415 - a test fixture

    emulator = Emulator(api_key=API_KEY)
    store = emulator.store
    project = store.add_project("benchmark")
    dataset = store.add_dataset(project["id"], "benchmark-records")
    generate_logs(store, project["id"], rows, row_bytes=row_bytes, dataset_id=dataset["id"])
    tenth = store.add_project("benchmark-tenth")
    generate_logs(store, tenth["id"], rows // 10, row_bytes=row_bytes, seed=8)
    with emulator:
        pipe.send(BulkData(emulator.url, project["id"], tenth["id"], dataset["id"]))
        pipe.recv()


class EmulatorProcess:
    """An emulator in a child process, so it never competes with a client for one GIL.

    `serve(*args, pipe)` runs in the child: it fills and starts an emulator, sends what the
    parent needs to know, then answers messages until one says "stop".
    """

    def __init__(self, serve: Callable[..., None], *args: Any) -> None:
        """Start it; returns once the child has sent its first message (it listens)."""
        context = multiprocessing.get_context("spawn")
        self._pipe, child_end = context.Pipe()
        self._process = context.Process(target=serve, args=(*args, child_end), daemon=True)
        self._process.start()
        self.ready: Any = self._pipe.recv()

    def ask(self, message: Any) -> Any:
        """Send the child a message and wait for its answer."""
        self._pipe.send(message)
        return self._pipe.recv()

    def stop(self) -> None:
        """Stop serving and wait for the process."""
        self._pipe.send("stop")
        self._process.join(30)


class BulkEmulator(EmulatorProcess):
    """The emulator with the rows `_serve` makes."""

    def __init__(self, rows: int, row_bytes: int) -> None:
        """Start it; returns once the rows are made and it listens."""
        super().__init__(_serve, rows, row_bytes)
        self.data: BulkData = self.ready


# Readers, each run as its own process ------------------------------------------------------


def rows_query(
    object_ids: str | Sequence[str],
    cursor: str | None,
    source: str = "project_logs",
    *,
    sorted_by_xact_id: bool = False,
) -> dict[str, Any]:
    """The `/btql` body for a full read of one or more objects, paged by the server cursor.

    Unsorted (newest first), the form recorded traffic shows; or oldest write first, the
    sorted cursor only the 2026 reference documents (a lenient emulator takes it).
    """
    ids = [object_ids] if isinstance(object_ids, str) else list(object_ids)
    query: dict[str, Any] = {
        "select": [{"op": "star"}],
        "from": {
            "op": "function",
            "name": {"op": "ident", "name": [source]},
            "args": [{"op": "literal", "value": object_id} for object_id in ids],
        },
        "limit": 1000,
        "cursor": cursor,
    }
    if sorted_by_xact_id:
        query["sort"] = [{"expr": {"op": "ident", "name": ["_xact_id"]}, "dir": "asc"}]
    return {"query": query, "fmt": "json", "brainstore_realtime": True}


def cursor_pages(
    session: requests.Session,
    url: str,
    body: Callable[[str | None], dict[str, Any]],
    decode: Callable[[bytes], Any],
) -> Iterator[list[Any]]:
    """The rows of each page of one `/btql` query, following the server cursor to the end."""
    cursor = None
    while True:
        response = session.post(f"{url}/btql", json=body(cursor), timeout=60)
        response.raise_for_status()
        page = decode(response.content)
        yield page["data"]
        cursor = page.get("cursor")
        if not cursor:
            return


def floor_client(url: str, project_id: str, codec: str) -> int:
    """Read every row with the server cursor; write each as a JSON line to /dev/null."""
    import requests  # noqa: PLC0415 - imported in the reader's own process

    decode: Callable[[bytes], Any]
    encode: Callable[[Any], bytes]
    if codec == "msgspec":
        import msgspec  # noqa: PLC0415

        decode, encode = msgspec.json.decode, msgspec.json.encode
    else:
        decode = json.loads
        encode = lambda row: json.dumps(row).encode()  # noqa: E731
    session = requests.Session()
    session.headers["Authorization"] = f"Bearer {API_KEY}"
    rows = 0
    with Path(os.devnull).open("wb") as out:
        for page in cursor_pages(session, url, partial(rows_query, project_id), decode):
            out.writelines(encode(row) + b"\n" for row in page)
            rows += len(page)
    return rows


def sdk_export(url: str, dataset_id: str) -> int:
    """Braintrust's documented export: iterate the dataset with the SDK, write JSON lines."""
    import braintrust  # noqa: PLC0415

    dataset = braintrust.init_dataset(dataset_id=dataset_id, app_url=url, api_key=API_KEY)
    rows = 0
    with Path(os.devnull).open("w") as out:
        for record in dataset:
            out.write(json.dumps(record, default=str) + "\n")
            rows += 1
    return rows


def _run_reader(argv: Sequence[str]) -> int:
    """`python -m scripts.benchmark --reader NAME URL OBJECT_ID`: prints the rows it read."""
    reader, url, object_id = argv
    if reader == "sdk-export":
        rows = sdk_export(url, object_id)
    else:
        rows = floor_client(url, object_id, reader.removeprefix("floor-"))
    sys.stderr.write(f"rows: {rows}\n")
    return 0


# Measuring ---------------------------------------------------------------------------------


def measure(reader: str, command: list[str], rows: int, env: dict[str, str]) -> Measurement:
    """Run one reader process to the end; its wall time and peak RSS (from wait4)."""
    with tempfile.TemporaryFile() as log:
        started = time.perf_counter()
        process = subprocess.Popen(  # noqa: S603 - our own programs
            command, stdout=subprocess.DEVNULL, stderr=log, env=env, cwd=ROOT
        )
        _, status, usage = os.wait4(process.pid, 0)
        seconds = time.perf_counter() - started
        process.returncode = os.waitstatus_to_exitcode(status)
        if process.returncode != 0:
            log.seek(0)
            tail = log.read().decode(errors="replace")[-3000:]
            msg = f"{reader} exited {process.returncode}:\n{tail}"
            raise RuntimeError(msg)
        log.seek(0)
        said = log.read().decode(errors="replace")
    if reader != "tap" and f"rows: {rows}\n" not in said:
        msg = f"{reader} did not read {rows} rows:\n{said[-2000:]}"
        raise RuntimeError(msg)
    return Measurement(reader, rows, seconds, usage.ru_maxrss / 1024)


@dataclass(frozen=True)
class TapSetup:
    """Config and catalog files that make the tap read one project's logs."""

    directory: Path
    url: str

    def config(self, project_id: str) -> Path:
        """A config reading only `project_id`."""
        path = self.directory / f"config-{project_id}.json"
        settings = {"api_url": self.url, "api_key": API_KEY, "project_ids": [project_id]}
        path.write_text(json.dumps(settings))
        return path

    def catalog(self) -> Path:
        """The discovered catalog with only `project_logs` selected."""
        path = self.directory / "catalog.json"
        discovered = subprocess.run(  # noqa: S603
            [str(BIN / "tap-braintrust"), "--discover"],
            capture_output=True,
            check=True,
            text=True,
        )
        catalog = json.loads(discovered.stdout)
        for entry in catalog["streams"]:
            for metadata in entry["metadata"]:
                if not metadata["breadcrumb"]:
                    metadata["metadata"]["selected"] = entry["tap_stream_id"] == "project_logs"
        path.write_text(json.dumps(catalog))
        return path

    def command(self, project_id: str) -> list[str]:
        """The tap's command line for one project."""
        return [
            str(BIN / "tap-braintrust"),
            "--config",
            str(self.config(project_id)),
            "--catalog",
            str(self.catalog()),
        ]


def count_tap_records(command: list[str]) -> int:
    """RECORD messages of one tap run (not timed): proof the timed runs read every row.

    Read line by line, so this process stays small: a reader's peak RSS from wait4 counts
    the memory of the process that started it.
    """
    with subprocess.Popen(  # noqa: S603
        command, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL
    ) as tap:
        lines = tap.stdout or ()
        records = sum(1 for line in lines if line.startswith(b'{"type":"RECORD"'))
    if tap.returncode != 0:
        msg = f"the tap exited {tap.returncode}"
        raise RuntimeError(msg)
    return records


def reader_runs(data: BulkData, rows: int, runs: int, work: Path) -> list[Measurement]:
    """Every reader `runs` times, in turns that rotate so none always goes first."""
    setup = TapSetup(work, data.url)
    commands = {
        "tap": setup.command(data.project_id),
        "sdk-export": [
            sys.executable,
            "-m",
            "scripts.benchmark",
            "--reader",
            "sdk-export",
            data.url,
            data.dataset_id,
        ],
    }
    for codec in ("json", "msgspec"):
        commands[f"floor-{codec}"] = [
            sys.executable,
            "-m",
            "scripts.benchmark",
            "--reader",
            f"floor-{codec}",
            data.url,
            data.project_id,
        ]
    emitted = count_tap_records(commands["tap"])
    if emitted != rows:
        msg = f"the tap emitted {emitted} records, not {rows}"
        raise RuntimeError(msg)
    env = {**os.environ, "HOME": str(work), "BRAINTRUST_DISABLE_ATEXIT_FLUSH": "1"}
    measurements = []
    for run in range(runs):
        for index in range(len(READERS)):
            reader = READERS[(index + run) % len(READERS)]
            measurement = measure(reader, commands[reader], rows, env)
            print(f"  run {run + 1}: {_line(measurement)}", flush=True)
            measurements.append(measurement)
    return measurements


def tap_memory(data: BulkData, rows: int, runs: int, work: Path) -> tuple[float, float]:
    """Median peak RSS of the tap over the N-row and the N/10-row project, in turns."""
    setup = TapSetup(work, data.url)
    at_n, at_tenth = [], []
    for _ in range(runs):
        at_n.append(measure("tap", setup.command(data.project_id), rows, dict(os.environ)))
        at_tenth.append(
            measure("tap", setup.command(data.tenth_project_id), rows // 10, dict(os.environ))
        )
    return (
        statistics.median(m.peak_rss_mb for m in at_n),
        statistics.median(m.peak_rss_mb for m in at_tenth),
    )


# meltano run tap-braintrust target-postgres ------------------------------------------------

LOAD_MODES: dict[str, dict[str, Any] | None] = {
    "RECORD messages": None,
    "BATCH jsonl.gz": {"format": "jsonl", "compression": "gzip"},
    "BATCH parquet": {"format": "parquet", "compression": "gzip"},
}
# Parquet files need pyarrow on both sides; the shipped project installs neither with it.
_PARQUET_PLUGINS = {
    "tap-braintrust": f"-e {ROOT}[parquet]",
    "target-postgres": "meltanolabs-target-postgres==0.8.1 pyarrow",
}


def meltano_project(directory: Path) -> Path:
    """This repository's Meltano project in `directory`, its plugins installed with pyarrow."""
    from tests.meltano_project import MeltanoProject, clean_environment, throwaway_definition  # noqa: PLC0415

    definition = throwaway_definition(yaml.safe_load((ROOT / "meltano.yml").read_text()))
    for kind in ("extractors", "loaders"):
        for plugin in definition["plugins"][kind]:
            plugin["pip_url"] = _PARQUET_PLUGINS.get(plugin["name"], plugin["pip_url"])
    directory.mkdir(parents=True)
    (directory / "meltano.yml").write_text(yaml.safe_dump(definition, sort_keys=False))
    MeltanoProject(directory, clean_environment()).succeed("install")
    return directory


def meltano_runs(data: BulkData, rows: int, runs: int, work: Path) -> list[tuple[str, float]]:
    """`meltano run` of project_logs into a fresh PostgreSQL database, each mode in turn."""
    from tests.meltano_project import MeltanoProject, clean_environment  # noqa: PLC0415
    from tests.postgres import running_postgres  # noqa: PLC0415

    directory = meltano_project(work / "meltano")
    timings: list[tuple[str, float]] = []
    with running_postgres() as server:
        for run in range(runs):
            for mode, encoding in LOAD_MODES.items():
                database = f"bench_{len(timings)}"
                server.create_database(database)
                settings = {
                    "TAP_BRAINTRUST_API_URL": data.url,
                    "TAP_BRAINTRUST_API_KEY": API_KEY,
                    "TAP_BRAINTRUST_PROJECT_IDS": json.dumps([data.project_id]),
                    "TAP_BRAINTRUST__SELECT": json.dumps(["project_logs.*"]),
                    **server.target_env(database),
                }
                if encoding is not None:
                    batches = work / f"batches-{len(timings)}"
                    batches.mkdir()
                    settings["TAP_BRAINTRUST_BATCH_CONFIG"] = json.dumps(
                        {"encoding": encoding, "storage": {"root": batches.as_uri()}}
                    )
                project = MeltanoProject(directory, clean_environment(**settings))
                done = project.succeed("run", "--full-refresh", "tap-braintrust", "target-postgres")
                with server.connect(database) as connection:
                    loaded = connection.execute(
                        "SELECT count(*) FROM braintrust.project_logs"
                    ).fetchone()
                if loaded is None or loaded[0] != rows:
                    msg = f"{mode}: PostgreSQL holds {loaded} rows, not {rows}"
                    raise RuntimeError(msg)
                print(
                    f"  run {run + 1}: {mode:<16} {done.seconds:7.1f} s "
                    f"{rows / done.seconds:>9,.0f} rows/s",
                    flush=True,
                )
                timings.append((mode, done.seconds))
    return timings


def _line(m: Measurement) -> str:
    return (
        f"{m.reader:<14} {m.rows:>8} rows {m.seconds:7.2f} s "
        f"{m.rows_per_second:>9,.0f} rows/s {m.peak_rss_mb:7.1f} MB"
    )


def report(measurements: list[Measurement], memory: tuple[float, float], rows: int) -> str:
    """The Markdown table for the README, with the ratios the goals are stated in."""
    lines = [
        (
            f"{datetime.now(timezone.utc):%Y-%m-%d}, {os.cpu_count()} cores, "
            f"{rows:,} rows, median of {len(measurements) // len(READERS)} runs:"
        ),
        "",
        "| reader | rows/s | seconds | peak RSS (MB) |",
        "|---|---:|---:|---:|",
    ]
    medians: dict[str, float] = {}
    for reader in READERS:
        mine = [m for m in measurements if m.reader == reader]
        medians[reader] = statistics.median(m.rows_per_second for m in mine)
        lines.append(
            f"| {reader} | {medians[reader]:,.0f} "
            f"| {statistics.median(m.seconds for m in mine):.1f} "
            f"| {statistics.median(m.peak_rss_mb for m in mine):.0f} |"
        )
    at_n, at_tenth = memory
    lines += [
        "",
        (
            f"- tap / floor-json: {medians['tap'] / medians['floor-json']:.2f}x; "
            f"tap / floor-msgspec: {medians['tap'] / medians['floor-msgspec']:.2f}x; "
            f"tap / sdk-export: {medians['tap'] / medians['sdk-export']:.1f}x"
        ),
        (
            f"- tap peak RSS: {at_n:.0f} MB at {rows:,} rows, {at_tenth:.0f} MB at "
            f"{rows // 10:,} ({(at_n / at_tenth - 1) * 100:+.0f}%)"
        ),
    ]
    return "\n".join(lines)


def load_report(timings: list[tuple[str, float]], rows: int) -> str:
    """The Markdown table of `meltano run` into PostgreSQL, per message mode."""
    lines = [
        (
            f"`meltano run tap-braintrust target-postgres`, project_logs only, {rows:,} rows, "
            f"median of {len(timings) // len(LOAD_MODES)} runs (Meltano's start-up included):"
        ),
        "",
        "| messages | rows/s | seconds |",
        "|---|---:|---:|",
    ]
    for mode in LOAD_MODES:
        seconds = statistics.median(s for m, s in timings if m == mode)
        lines.append(f"| {mode} | {rows / seconds:,.0f} | {seconds:.1f} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark and print the README table."""
    args_list = sys.argv[1:] if argv is None else argv
    if args_list[:1] == ["--reader"]:
        return _run_reader(args_list[1:])
    parser = argparse.ArgumentParser(prog="bash scripts/benchmark", description=__doc__)
    parser.add_argument("--rows", type=int, default=200_000, help="log rows (default 200,000)")
    parser.add_argument("--row-bytes", type=int, default=1500, help="JSON bytes per row")
    parser.add_argument("--runs", type=int, default=5, help="turns of every reader")
    parser.add_argument(
        "--meltano-runs", type=int, default=2, help="turns of each load mode (0: skip loading)"
    )
    args = parser.parse_args(args_list)
    started = time.monotonic()
    print(f"making {args.rows:,} rows of ~{args.row_bytes} bytes ...", flush=True)
    emulator = BulkEmulator(args.rows, args.row_bytes)
    try:
        with tempfile.TemporaryDirectory() as work:
            print(f"ready in {time.monotonic() - started:.0f} s; readers:", flush=True)
            measurements = reader_runs(emulator.data, args.rows, args.runs, Path(work))
            memory = tap_memory(emulator.data, args.rows, args.runs, Path(work))
            print(report(measurements, memory, args.rows), flush=True)
            if args.meltano_runs:
                print("meltano run into PostgreSQL:", flush=True)
                timings = meltano_runs(emulator.data, args.rows, args.meltano_runs, Path(work))
                print(load_report(timings, args.rows))
    finally:
        emulator.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
