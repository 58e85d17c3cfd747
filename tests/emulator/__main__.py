"""Run the emulator by hand: `python -m tests.emulator --port 8787 --demo [--seed 7] [--api-key K]`.

Useful for pointing the tap (or Meltano) at a local Braintrust while developing; it serves until
SIGINT or SIGTERM and then shuts down cleanly. `--overflow-bytes N` redirects bigger /btql
answers to the object store; `--btql-rate-limit 20/60` answers 429 past 20 /btql requests a minute.
"""

from __future__ import annotations

import argparse
import signal
import sys
import threading
from typing import TYPE_CHECKING, get_args

from tests.emulator.server import DeletedSources, Emulator, OverflowCursor

if TYPE_CHECKING:
    from types import FrameType


def main(argv: list[str] | None = None) -> int:
    """Parse arguments, serve, and return the exit status."""
    parser = argparse.ArgumentParser(prog="python -m tests.emulator", description=__doc__)
    parser.add_argument("--port", type=int, default=8787, help="port on 127.0.0.1 (0 = any free)")
    parser.add_argument("--demo", action="store_true", help="load the deterministic demo data")
    parser.add_argument("--seed", type=int, default=7, help="seed of the demo data")
    parser.add_argument("--api-key", default="sk-demo", help="the API key clients must send")
    parser.add_argument("--org-name", default="acme", help="the organization of that key")
    parser.add_argument(
        "--page-byte-budget",
        type=int,
        default=2_000_000,
        help="a /btql page stops before its rows pass this many bytes",
    )
    parser.add_argument(
        "--overflow-bytes",
        type=int,
        default=None,
        help="answer /btql bodies bigger than this with a 303 to the object store",
    )
    parser.add_argument(
        "--overflow-cursor",
        choices=get_args(OverflowCursor),
        default="body",
        help="where a redirected answer carries its cursor",
    )
    parser.add_argument(
        "--btql-rate-limit",
        type=rate_limit,
        default=None,
        metavar="N/SECONDS",
        help="answer 429 past N /btql requests in a rolling window of SECONDS",
    )
    parser.add_argument(
        "--lenient",
        action="store_true",
        help="take any construct the parser reads, not only the evidenced dialect",
    )
    parser.add_argument(
        "--2025",
        dest="reference_2025",
        action="store_true",
        help="answer as the 2025 BTQL reference reads: no cursor on a sorted query",
    )
    parser.add_argument(
        "--deleted-sources",
        choices=get_args(DeletedSources),
        default="forbidden",
        help="how /btql answers a source naming a deleted object: 403, 400, or without its rows",
    )
    parser.add_argument(
        "--no-pinned-counts",
        dest="pinned_counts",
        action="store_false",
        help="answer 400 to a query with both a version and an aggregate",
    )
    args = parser.parse_args(argv)
    stopping = threading.Event()

    def request_stop(signum: int, frame: FrameType | None) -> None:
        stopping.set()

    signal.signal(signal.SIGINT, request_stop)
    signal.signal(signal.SIGTERM, request_stop)
    emulator = Emulator(
        api_key=args.api_key,
        org_name=args.org_name,
        port=args.port,
        page_byte_budget=args.page_byte_budget,
        overflow_bytes=args.overflow_bytes,
        overflow_cursor=args.overflow_cursor,
        btql_rate_limit=args.btql_rate_limit,
        strict=not args.lenient,
        sorted_cursor=not args.reference_2025,
        deleted_sources=args.deleted_sources,
        pinned_counts=args.pinned_counts,
    )
    with emulator:
        if args.demo:
            demo = emulator.load_demo(seed=args.seed)
            rows = sum(demo.row_counts.values())
            _say(f"demo data: {len(demo.projects)} projects, {rows} rows (seed {args.seed})")
        _say(f"Braintrust emulator listening on {emulator.url}")
        _say(f"api key: {args.api_key}  (org {args.org_name!r}; Ctrl-C to stop)")
        if args.overflow_bytes is not None:
            _say(f"object store (overflow redirects) on {emulator.object_store_url}")
        while not stopping.wait(0.5):
            pass
    _say("stopped")
    return 0


def rate_limit(text: str) -> tuple[int, float]:
    """Read `N/SECONDS` (e.g. `20/60`) as (requests, window seconds)."""
    requests, slash, seconds = text.partition("/")
    try:
        limit = (int(requests), float(seconds))
    except ValueError:
        limit = (0, 0.0)
    if not slash or limit[0] < 1 or not limit[1] > 0:
        msg = f"expected N/SECONDS with N >= 1 and SECONDS > 0, e.g. 20/60; got {text!r}"
        raise argparse.ArgumentTypeError(msg)
    return limit


def _say(line: str) -> None:
    """Print and flush at once: a parent process may be waiting for the URL line."""
    sys.stdout.write(line + "\n")
    sys.stdout.flush()


if __name__ == "__main__":
    sys.exit(main())
