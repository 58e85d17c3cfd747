"""How many `/btql` requests a sync costs on a wide org (issue 13, "Request economy").

Run through `bash scripts/request-benchmark [--tap-executable PATH] [--seed S]
[--page-byte-budget B] [--state-out FILE] [--server 2026|2025]`, or `--delete-cost ROWS` for
what finding one deleted record costs in a dataset of ROWS rows. Hosted Braintrust allows
about 20 `/btql` requests a minute per org, shared with everyone using it, so on an org of many
small objects a sync's cost is its number of requests, not its bytes. The emulator, in its own
process, holds the issue's wide org (`generate_wide_org`: 8 projects of 400 log rows, 320
experiments of 9-60 rows, 32 datasets; months of history) and cuts `/btql` pages at
`--page-byte-budget` bytes. Every count comes from the emulator's request log, not from the
client's own counters:

- `full sync`: the tap with all six streams and default settings, no state (`--state-out`
  keeps its final STATE);
- `idle`: again from that run's final state, nothing changed;
- `small change`: the issue's small change (`wide_org_small_change`: 28 annotations over
  log rows, experiment rows and dataset records, and 20 new log rows), then the tap from the
  idle run's state; every changed row must arrive;
- `floor client (keyset)`, right after the full sync: the fewest `/btql` requests any client
  needs for the same read in `_xact_id` order: one query per row kind naming all its objects
  (after one listing each), 1000 rows a page, each page after the last row's
  (`_xact_id`, `_pagination_key`) until an empty one; it must read as many rows as the full
  sync;
- `after deletes`: 2 rows deleted in each of 3 datasets and 2 experiments, then the tap from
  the small change's state; each deleted row must arrive marked (`_sdc_deleted_at`), and
  nothing else;
- `floor client (cursor)`, with `--server 2026` only: the same read following the server
  cursor on the `_xact_id` sort, which only the 2026 reference documents (the emulator takes
  it for this run alone).

`--server 2025` makes the emulator answer as the 2025 BTQL reference reads: a sorted query
gets no cursor.

`--tap-executable` picks the build to measure, e.g. an older one in a worktree of its own.
"""

from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys
import tempfile
import time
from collections import Counter
from dataclasses import dataclass, field
from datetime import datetime, timezone
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any

from scripts.benchmark import API_KEY, BIN, EmulatorProcess, cursor_pages, rows_query
from tap_braintrust.queries import ChangePosition, ObjectBound, RowsQuery, row_keys

if TYPE_CHECKING:
    from collections.abc import Callable, Iterator, Sequence
    from multiprocessing.connection import Connection

    import requests

    from tests.emulator import Emulator
    from tests.emulator.generator import SmallChange, WideOrg
    from tests.emulator.store import RowSource

REQUESTS_PER_MINUTE = 20
"""The /btql rate limit of hosted Free/Starter and Pro plans (API contract, section 7)."""
ROW_STREAMS: dict[str, tuple[RowSource, str]] = {
    "project_logs": ("project_logs", "project_id"),
    "experiment_events": ("experiment", "experiment_id"),
    "dataset_events": ("dataset", "dataset_id"),
}
"""Each row stream's row source and the record field naming its object."""
STREAMS = ("projects", "experiments", "datasets", *ROW_STREAMS)
OBJECT_KINDS = ("project", "experiment", "dataset")
_SOURCE = re.compile(r"\b(project_logs|experiment|dataset)\s*\(")
RowKey = tuple[str, str, str]
"""(row source, object id, row id): one row, the way `SmallChange` names them."""


# The emulator ------------------------------------------------------------------------------


def _serve_wide(seed: int, page_byte_budget: int, sorted_cursor: bool, pipe: Connection) -> None:  # noqa: FBT001
    """The emulator's process: make the wide org, serve it, answer the parent until "stop".

    Messages: `("log", n)` → (method, path, status, /btql row source) of each request after
    the first n; `("change",)` → the small change, written now; `("deletes",)` → rows
    deleted now in 3 datasets and 2 experiments; `("strict", flag)` → the emulator's dialect
    check on or off.
    """
    from tests.emulator import Emulator  # noqa: PLC0415 - a test fixture
    from tests.emulator.generator import generate_wide_org, wide_org_small_change  # noqa: PLC0415

    emulator = Emulator(
        api_key=API_KEY, page_byte_budget=page_byte_budget, sorted_cursor=sorted_cursor
    )
    org = generate_wide_org(emulator.store, seed=seed)
    with emulator:
        pipe.send((emulator.url, org))
        while (message := pipe.recv()) != "stop":
            if message[0] == "log":
                log = emulator.request_log[message[1] :]
                pipe.send([(r.method, r.path, r.status, _btql_source(r.json_body)) for r in log])
            elif message[0] == "strict":
                emulator.strict = message[1]
                pipe.send(None)
            elif message[0] == "deletes":
                pipe.send(_delete_some(emulator, org))
            else:
                pipe.send(wide_org_small_change(emulator.store, org, seed=seed))


def _delete_some(emulator: Emulator, org: WideOrg) -> frozenset[RowKey]:
    """Delete 2 rows in each of 3 datasets and 2 experiments; their keys."""
    deleted: set[RowKey] = set()
    targets: list[tuple[RowSource, str]] = [("dataset", d) for d in org.datasets[:3]]
    targets += [("experiment", e) for e in org.experiments[:2]]
    for source, object_id in targets:
        ids = [row["id"] for row in emulator.store.rows(source, object_id)[:2]]
        emulator.store.delete_rows(source, object_id, ids)
        deleted.update((source, object_id, row_id) for row_id in ids)
    return frozenset(deleted)


def _btql_source(body: Any) -> str | None:
    """The row source a `/btql` body reads (JSON AST, SQL or BTQL text), if it names one."""
    query = body.get("query") if isinstance(body, dict) else None
    if isinstance(query, str):
        found = _SOURCE.search(query)
        return found.group(1) if found else None
    try:
        return str(query["from"]["name"]["name"][0])  # type: ignore[index]
    except (KeyError, IndexError, TypeError):
        return None


LoggedRequest = tuple[str, str, int | None, str | None]
"""(method, path, status, /btql row source) of one request in the emulator's log."""


@dataclass(frozen=True)
class Requests:
    """Requests the emulator received during one run, by kind, and /btql ones by row source."""

    btql: int
    listings: int
    other: int
    failed: int
    btql_by_source: dict[str, int]

    @classmethod
    def count(cls, log: Sequence[LoggedRequest]) -> Requests:
        """Sort logged requests into `/btql`, `/v1` listings and others."""
        kinds = Counter(_kind(method, path) for method, path, _, _ in log)
        failed = sum(status is None or status >= 400 for _, _, status, _ in log)  # noqa: PLR2004
        sources = Counter(str(source) for _, path, _, source in log if path == "/btql")
        return cls(kinds["btql"], kinds["listings"], kinds["other"], failed, dict(sources))


def _kind(method: str, path: str) -> str:
    """`btql`, `listings` (`GET /v1/project|experiment|dataset`) or `other`."""
    if path == "/btql":
        return "btql"
    parts = path.strip("/").split("/")
    listing = method == "GET" and len(parts) == 2 and parts[0] == "v1"  # noqa: PLR2004
    return "listings" if listing and parts[1] in OBJECT_KINDS else "other"


class WideOrgEmulator(EmulatorProcess):
    """The emulator with the wide org; tells what each run cost from its request log."""

    def __init__(self, seed: int, page_byte_budget: int, *, sorted_cursor: bool) -> None:
        """Start it; returns once the org is made and it listens."""
        super().__init__(_serve_wide, seed, page_byte_budget, sorted_cursor)
        self.url: str
        self.org: WideOrg
        self.url, self.org = self.ready
        self._seen = 0

    def requests(self) -> Requests:
        """The requests received since the last call."""
        log = self.ask(("log", self._seen))
        self._seen += len(log)
        return Requests.count(log)

    def strict(self, *, on: bool) -> None:
        """Turn the emulator's check of the evidenced dialect on or off."""
        self.ask(("strict", on))

    def delete_some(self) -> frozenset[RowKey]:
        """Delete rows in 3 datasets and 2 experiments now; which."""
        deleted: frozenset[RowKey] = self.ask(("deletes",))
        return deleted

    def small_change(self) -> SmallChange:
        """Write the issue's small change now; what it touched."""
        change: SmallChange = self.ask(("change",))
        return change


# Runs --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Run:
    """One measured run: its requests, the records it sent per stream, its wall time."""

    name: str
    requests: Requests
    records: dict[str, int]
    seconds: float
    state: dict[str, Any] | None = None
    row_keys: frozenset[RowKey] = field(default=frozenset(), repr=False)
    marked: frozenset[RowKey] = field(default=frozenset(), repr=False)

    @property
    def rows(self) -> int:
        """Rows of the three row streams (object records not counted)."""
        return sum(self.records.get(stream, 0) for stream in ROW_STREAMS)

    @property
    def minutes(self) -> float:
        """How long its `/btql` requests take at the hosted rate limit."""
        return self.requests.btql / REQUESTS_PER_MINUTE


def run_tap(  # noqa: PLR0913
    name: str,
    emulator: WideOrgEmulator,
    tap: Path,
    work: Path,
    state: dict[str, Any] | None,
    *,
    settings: dict[str, Any],
) -> Run:
    """The tap with every stream and `settings` (from `state`, if given), to the end."""
    config = work / "config.json"
    config.write_text(json.dumps({"api_url": emulator.url, "api_key": API_KEY, **settings}))
    command = [str(tap), "--config", str(config)]
    if state is not None:
        (work / "state.json").write_text(json.dumps(state))
        command += ["--state", str(work / "state.json")]
    emulator.requests()  # start counting here
    output, log = work / f"{name}.jsonl", work / f"{name}.log"
    with output.open("wb") as stdout, log.open("wb") as stderr:
        started = time.perf_counter()
        done = subprocess.run(  # noqa: S603 - the tap under test
            command, stdout=stdout, stderr=stderr, check=False, cwd=work
        )
        seconds = time.perf_counter() - started
    requests = emulator.requests()
    if done.returncode != 0:
        tail = log.read_text(errors="replace")[-3000:]
        msg = f"{name}: the tap exited {done.returncode}:\n{tail}"
        raise RuntimeError(msg)
    records: Counter[str] = Counter()
    keys: set[RowKey] = set()
    marked: set[RowKey] = set()
    final_state = None
    with output.open("rb") as lines:
        for line in lines:
            if not line.strip():
                continue
            message = json.loads(line)
            if message["type"] == "RECORD":
                stream, record = message["stream"], message["record"]
                records[stream] += 1
                if stream in ROW_STREAMS:
                    source, parent = ROW_STREAMS[stream]
                    key = (source, record[parent], record["id"])
                    (marked if record.get("_sdc_deleted_at") else keys).add(key)
            elif message["type"] == "STATE":
                final_state = message["value"]
    return Run(
        name, requests, dict(records), seconds, final_state, frozenset(keys), frozenset(marked)
    )


def list_ids(session: requests.Session, url: str, kind: str) -> list[str]:
    """Every object of a kind, from its `/v1` listing (1000 a page)."""
    ids: list[str] = []
    while True:
        params = {"limit": "1000", **({"starting_after": ids[-1]} if ids else {})}
        response = session.get(f"{url}/v1/{kind}", params=params, timeout=60)
        response.raise_for_status()
        found = [obj["id"] for obj in response.json()["objects"]]
        ids += found
        if len(found) < 1000:  # noqa: PLR2004
            return ids


def keyset_pages(
    session: requests.Session, url: str, query: RowsQuery, decode: Callable[[bytes], Any]
) -> Iterator[list[Any]]:
    """The rows of each page of `query`, each after the last row's keys, to an empty page."""
    after = None
    while True:
        response = session.post(f"{url}/btql", json=query.body(after), timeout=60)
        response.raise_for_status()
        answer = decode(response.content)
        yield answer["data"]
        if not answer["data"]:
            return
        # Up to what the first page says is visible, as the tap reads.
        through = int(answer["freshness_state"]["last_processed_xact_id"])
        after = ChangePosition(*row_keys(answer["data"][-1]), after.through if after else through)


def run_floor(emulator: WideOrgEmulator, paging: str) -> Run:
    """The least any client must do: list the objects, then one read per row kind."""
    import msgspec  # noqa: PLC0415
    import requests  # noqa: PLC0415

    session = requests.Session()
    session.headers["Authorization"] = f"Bearer {API_KEY}"
    emulator.strict(on=paging == "keyset")
    emulator.requests()
    records: dict[str, int] = {}
    started = time.perf_counter()
    for kind, (stream, (source, _)) in zip(OBJECT_KINDS, ROW_STREAMS.items(), strict=True):
        ids = list_ids(session, emulator.url, kind)
        if paging == "keyset":
            query = RowsQuery(source, tuple(ObjectBound(object_id) for object_id in ids))
            pages = keyset_pages(session, emulator.url, query, msgspec.json.decode)
        else:
            body = partial(rows_query, ids, source=source, sorted_by_xact_id=True)
            pages = cursor_pages(session, emulator.url, body, msgspec.json.decode)
        records[stream] = sum(len(page) for page in pages)
    seconds = time.perf_counter() - started
    emulator.strict(on=True)
    return Run(f"floor client ({paging})", emulator.requests(), records, seconds)


# Report ------------------------------------------------------------------------------------


def checks(
    org: WideOrg,
    runs: Sequence[Run],
    change: SmallChange,
    deleted: frozenset[RowKey],
    *,
    detects_deletes: bool,
) -> list[str]:
    """What must hold for the figures to mean anything (full, idle, change, deletes, floors).

    The deleted rows arrive marked, and nothing else, unless `detect_deletes` is off.
    """
    full, _, changed, after_deletes, *floors = runs
    problems = [
        f"{run.name}: {run.records.get(stream, 0)} {stream} rows, the org has {org.rows(source)}"
        for stream, (source, _) in ROW_STREAMS.items()
        for run in (full, *floors)
        if run.records.get(stream, 0) != org.rows(source)
    ]
    objects = {"projects": org.projects, "experiments": org.experiments, "datasets": org.datasets}
    problems += [
        f"full sync: {full.records.get(stream, 0)} {stream}, not {len(ids)}"
        for stream, ids in objects.items()
        if full.records.get(stream, 0) != len(ids)
    ]
    missing = change.changed - changed.row_keys
    if missing:
        problems.append(
            f"small change: {len(missing)} of {len(change.changed)} changed rows never arrived, "
            f"e.g. {sorted(missing)[:3]}"
        )
    if after_deletes.marked != (deleted if detects_deletes else frozenset()):
        problems.append(
            f"after deletes: marked {len(after_deletes.marked)} rows, deleted {len(deleted)}; "
            f"e.g. {sorted(after_deletes.marked ^ deleted)[:3]}"
        )
    failed = [run.name for run in runs if run.requests.failed]
    if failed:
        problems.append(f"requests failed (4xx/5xx or dropped) during: {', '.join(failed)}")
    return problems


def report(  # noqa: PLR0913, PLR0917 - one report, all its parts
    tap: Path, budget: int, org: WideOrg, runs: Sequence[Run], change: SmallChange, server: str
) -> str:
    """The Markdown table, rows per stream, and how the org and the change were made."""
    lines = [
        (
            f"{datetime.now(timezone.utc):%Y-%m-%d}, `{tap}`, {server} server, "
            f"page byte budget {budget:,}; "
            f"org: {len(org.projects)} projects, {len(org.experiments)} experiments, "
            f"{len(org.datasets)} datasets, {org.rows():,} rows "
            f"({org.rows('project_logs'):,} log rows); small change: "
            f"{len(change.annotated)} annotations, {len(change.new_log_rows)} new log rows"
        ),
        "",
        "| run | /btql requests | listing requests | rows | wall s | minutes at 20/min |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    lines += [
        f"| {run.name} | {run.requests.btql:,} | {run.requests.listings:,} | {run.rows:,} "
        f"| {run.seconds:.1f} | {run.minutes:.1f} |"
        for run in runs
    ]
    lines += ["", "Records per stream:", ""]
    lines += [
        f"- {run.name}: "
        + ", ".join(f"{stream} {run.records.get(stream, 0):,}" for stream in STREAMS)
        + "; /btql by source: "
        + ", ".join(f"{source} {n}" for source, n in sorted(run.requests.btql_by_source.items()))
        + (f"; other requests {run.requests.other}" if run.requests.other else "")
        for run in runs
    ]
    return "\n".join(lines)


def delete_cost(tap: Path, rows: int) -> str:
    """What finding one deleted record costs in a dataset of `rows` rows, in `/btql` requests.

    Its own emulator, in this process: one dataset written in transactions of 10,000 rows,
    a full sync, the record in the middle deleted, then the measured run.
    """
    from tests.emulator import running_emulator  # noqa: PLC0415 - a test fixture

    with running_emulator(api_key=API_KEY) as emulator, tempfile.TemporaryDirectory() as work:
        project = emulator.store.add_project("big")
        dataset = emulator.store.add_dataset(project["id"], "golden")["id"]
        for start in range(0, rows, 10_000):
            batch = range(start, min(rows, start + 10_000))
            emulator.store.insert_rows(
                "dataset", dataset, [{"id": f"r{n:07d}", "input": n} for n in batch]
            )
        config = Path(work) / "config.json"
        config.write_text(json.dumps({"api_url": emulator.url, "api_key": API_KEY}))
        state = Path(work) / "state.json"
        costs = []
        for run in ("full", "after"):
            command = [str(tap), "--config", str(config)]
            if run == "after":
                victim = f"r{rows // 2:07d}"
                emulator.store.delete_rows("dataset", dataset, [victim])
                command += ["--state", str(state)]
            before = len(emulator.request_log)
            done = subprocess.run(command, capture_output=True, check=True, cwd=work)  # noqa: S603
            lines = [json.loads(line) for line in done.stdout.splitlines() if line.strip()]
            state.write_text(
                json.dumps(next(m for m in reversed(lines) if m["type"] == "STATE")["value"])
            )
            marked = [
                m["record"]["id"]
                for m in lines
                if m["type"] == "RECORD" and m["record"].get("_sdc_deleted_at")
            ]
            costs.append(
                sum(
                    1
                    for r in emulator.request_log[before:]
                    if r.path == "/btql" and _is_detection(r.json_body)
                )
            )
        if marked != [victim]:
            msg = f"delete cost: marked {marked}, deleted {victim}"
            raise RuntimeError(msg)
    return f"one deleted record in {rows:,} rows: {costs[1]} delete-detection requests"


def _is_detection(body: Any) -> bool:
    """Whether a `/btql` body is delete detection's: a count, or a read of ids or at a version."""
    query = body.get("query")
    if isinstance(query, str):
        return " AS row_count" in query
    select = [item.get("alias") for item in query.get("select", [])]
    return "version" in body or select == ["id", "_pagination_key"]


def _progress(run: Run) -> None:
    print(
        f"  {run.name}: {run.requests.btql} /btql, {run.requests.listings} listing requests, "
        f"{run.rows:,} rows, {run.seconds:.1f} s",
        flush=True,
    )


def main(argv: list[str] | None = None) -> int:
    """Run the four measurements and print the table; exit 1 if a check fails."""
    parser = argparse.ArgumentParser(prog="bash scripts/request-benchmark", description=__doc__)
    parser.add_argument(
        "--tap-executable",
        type=Path,
        default=BIN / "tap-braintrust",
        help="the tap-braintrust to measure (default: this venv's)",
    )
    parser.add_argument("--seed", type=int, default=13, help="seed of the wide org and change")
    parser.add_argument(
        "--page-byte-budget", type=int, default=512_000, help="bytes of rows per /btql page"
    )
    parser.add_argument("--state-out", type=Path, help="write the full sync's final STATE here")
    parser.add_argument(
        "--server",
        choices=("2026", "2025"),
        default="2026",
        help="2025: sorted queries get no cursor, as the 2025 BTQL reference reads",
    )
    parser.add_argument(
        "--delete-cost",
        type=int,
        metavar="ROWS",
        help="only measure what one deleted record costs in a dataset of ROWS rows",
    )
    parser.add_argument(
        "--setting",
        action="append",
        default=[],
        metavar="NAME=JSON",
        help="a tap setting for every run, e.g. objects_per_query=250 (repeatable)",
    )
    args = parser.parse_args(sys.argv[1:] if argv is None else argv)
    tap = args.tap_executable.absolute()
    settings = {
        name: json.loads(value) for name, _, value in (s.partition("=") for s in args.setting)
    }
    if args.delete_cost:
        print(delete_cost(tap, args.delete_cost))
        return 0
    started = time.monotonic()
    print(f"making the wide org (seed {args.seed}) ...", flush=True)
    emulator = WideOrgEmulator(
        args.seed, args.page_byte_budget, sorted_cursor=args.server == "2026"
    )
    try:
        org = emulator.org
        print(f"ready in {time.monotonic() - started:.0f} s; measuring {tap}", flush=True)
        with tempfile.TemporaryDirectory() as directory:
            work = Path(directory)
            full = run_tap("full sync", emulator, tap, work, None, settings=settings)
            _progress(full)
            if args.state_out:
                args.state_out.write_text(json.dumps(full.state, indent=1))
            # The same data as the full sync.
            floors = [run_floor(emulator, "keyset")]
            if args.server == "2026":
                floors.append(run_floor(emulator, "cursor"))
            for floor in floors:
                _progress(floor)
            idle = run_tap("idle", emulator, tap, work, full.state, settings=settings)
            _progress(idle)
            change = emulator.small_change()
            changed = run_tap("small change", emulator, tap, work, idle.state, settings=settings)
            _progress(changed)
            deleted = emulator.delete_some()
            after = run_tap("after deletes", emulator, tap, work, changed.state, settings=settings)
            _progress(after)
    finally:
        emulator.stop()
    runs = (full, idle, changed, after, *floors)
    print(report(tap, args.page_byte_budget, org, runs, change, args.server))
    problems = checks(
        org, runs, change, deleted, detects_deletes=settings.get("detect_deletes", True)
    )
    if not problems:
        print(
            f"\nChecks passed: every changed row ({len(change.changed)}) arrived; the floor "
            f"client read the full sync's {full.rows:,} rows."
        )
    for problem in problems:
        print(f"CHECK FAILED: {problem}", file=sys.stderr)
    print(f"benchmark took {time.monotonic() - started:.0f} s")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
