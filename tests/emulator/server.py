"""The Braintrust data API over real HTTP on 127.0.0.1, backed by a `Store`.

It answers the way the API contract (shared/braintrust-api.md) says the service does (auth,
strict listings, /btql with its cursor and byte-budget paging, the legacy fetch endpoints the
official SDK uses), so a client that works here has been held to the contract rather than
to a lenient stub. Two opt-in behaviours of the hosted service are emulated too: big /btql
answers redirected (303) to pre-signed object-storage URLs served by a second loopback server
(`ObjectStore`), and the rolling-window /btql rate limit (429).
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import dataclasses
import gzip
import hmac
import json
import math
import secrets
import socket
import sys
import threading
import time
import traceback
from bisect import bisect_right
from collections import deque
from dataclasses import dataclass, field
from datetime import datetime, timezone
from email.utils import formatdate
from html import escape
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import TYPE_CHECKING, Any, Literal, Protocol, get_args
from urllib.parse import parse_qs, urlsplit

from tests.emulator import dialect
from tests.emulator.btql import (
    Aggregate,
    BTQLError,
    Bucket,
    Expr,
    Ident,
    Query,
    aggregate_rows,
    constrained_fields,
    evaluate,
    is_sql,
    matches,
    parse_query,
    sort_rows,
    sort_value,
)
from tests.emulator.faults import FaultInjector, FaultRule
from tests.emulator.generator import Demo, generate_demo
from tests.emulator.store import (
    FIELD_SCHEMAS,
    OWNER_KIND,
    ROW_SOURCES,
    ObjectKind,
    Order,
    OrderedRows,
    RowSource,
    Store,
    StoredRow,
    iso_ms,
    order_key,
)
from tests.emulator.summary import representative, summary_row, summary_schema

if TYPE_CHECKING:
    from collections.abc import Callable, Iterable, Iterator
    from types import TracebackType

    from typing_extensions import Self

MAX_LIMIT = 1000
DEFAULT_ORDER: Order = (("_pagination_key", True),)
_CURSOR_FIELDS = frozenset({("_pagination_key",), ("_xact_id",)})
_RANGE_FIELDS = frozenset({"created", "_xact_id", "_pagination_key", "id", "root_span_id"})
_SUMMARY_CURSOR = "summary|"
"""Prefix of a summary page's cursor signature: its positions are traces', not spans'."""
_MAX_TZ_OFFSET = 1440
_AGGREGATE_SCHEMAS: dict[str, dict[str, Any]] = {
    **{name: {"type": "integer"} for name in ("count", "count_distinct")},
    **{name: {"type": ["number", "null"]} for name in ("sum", "avg", "percentile")},
}
_BUCKET_SCHEMA = {"type": ["string", "null"], "format": "date-time"}
_MISSING_RANGE_WARNING = {
    "code": "missingSegmentEliminationSpecs",
    "message": "No filters available for segment elimination. Add a range filter on created, "
    "_xact_id, or _pagination_key, or scope to a specific root_span_id or id.",
    "stage": "optimizer",
    "severity": "warning",
}
_OBJECT_KINDS: tuple[ObjectKind, ...] = ("project", "experiment", "dataset")
_PROJECT_LIST_PARAMS = frozenset(
    {"limit", "starting_after", "ending_before", "ids", "org_name", "project_name"}
)
_LIST_PARAMS: dict[ObjectKind, frozenset[str]] = {
    "project": _PROJECT_LIST_PARAMS,
    "experiment": _PROJECT_LIST_PARAMS | {"project_id", "experiment_name"},
    "dataset": _PROJECT_LIST_PARAMS | {"project_id", "dataset_name"},
}
_FETCH_PARAMS = frozenset({"limit", "cursor", "version"})
# A view's rows grouped by trace, with each trace's cursor key (see Emulator._traces).
_TraceCache = tuple[OrderedRows, list[list[StoredRow]], list[tuple[int, ...]]]
Host = Literal["api", "object_store"]
"""Which of the emulator's servers a request reached (`LoggedRequest.host`)."""
OverflowCursor = Literal["body", "header", "meta_underscore", "meta_dash"]
"""Where a redirected /btql answer carries its cursor (see `Emulator`)."""
DeletedSources = Literal["forbidden", "refused", "missing"]
"""How /btql answers a source naming a deleted object (see `Emulator`)."""
OBJECT_STORE_BUCKET = "bt-overflow"
"""The object store's only bucket: `FaultRule(path="/bt-overflow")` targets its requests."""
_META_CURSOR_HEADERS: dict[OverflowCursor, str] = {
    "meta_underscore": "x-amz-meta-bt_cursor",
    "meta_dash": "x-amz-meta-bt-cursor",
}
_TWO_AUTH_MESSAGE = (
    "Only one auth mechanism allowed; only the X-Amz-Algorithm query parameter, Signature query"
    " string parameter or the Authorization header should be specified"
)
_GARBAGE = b"<html><head><title>502 Bad Gateway</title></head><body>upstream hiccup</body></html>"


class ApiError(Exception):
    """An error answer: the status and the `Message` the service would send."""

    def __init__(
        self, status: int, message: str, headers: tuple[tuple[str, str], ...] = ()
    ) -> None:
        """Keep the status (and any extra headers, e.g. Retry-After) next to the message."""
        super().__init__(message)
        self.status = status
        self.message = message
        self.headers = headers


@dataclass(frozen=True)
class LoggedRequest:
    """One request the emulator received (faulted ones too), for tests to inspect.

    `time` is when the request arrived (wall clock); `headers` keys are lower-case;
    `status` is None when a `drop` fault sent nothing; `fault` names the injected fault
    kind, if any; `response_headers` are the extra headers of the answer (e.g. Retry-After,
    Location); `host` is "object_store" for requests to the overflow object store.
    """

    time: float
    method: str
    path: str
    query: dict[str, list[str]]
    headers: dict[str, str]
    json_body: Any
    status: int | None
    fault: str | None = None
    response_headers: dict[str, str] = field(default_factory=dict)
    host: Host = "api"


@dataclass(frozen=True)
class Response:
    """An answer before transport encoding (gzip, truncation); no content type for no body."""

    status: int
    body: bytes
    content_type: str | None = "application/json"
    headers: tuple[tuple[str, str], ...] = ()


@dataclass
class Request:
    """A received request, with its JSON body and /btql query parsed at most once."""

    method: str
    path: str
    query: dict[str, list[str]]
    headers: dict[str, str]
    body: bytes
    _json: Any = field(default=None, init=False)
    _json_error: str | None = field(default=None, init=False)
    _btql: Query | BTQLError | None = field(default=None, init=False)

    def __post_init__(self) -> None:
        """Decode the body once; an undecodable body only fails the routes that need JSON."""
        if self.body:
            try:
                self._json = json.loads(self.body)
            except ValueError as exc:
                self._json_error = f"request body is not valid JSON: {exc}"

    @property
    def json_body(self) -> Any:
        """The decoded body (None when empty or invalid)."""
        return self._json

    def json_object(self) -> dict[str, Any]:
        """The body as a JSON object, or a 400."""
        if self._json_error is not None:
            raise ApiError(400, self._json_error)
        if not isinstance(self._json, dict):
            raise ApiError(400, "request body must be a JSON object")
        return self._json

    def btql_query(self) -> Query:
        """The parsed /btql query, or a 400 with the parser's reason."""
        if self._btql is None:
            body = self.json_object()
            if "query" not in body:
                raise ApiError(400, "request body needs a 'query'")
            try:
                self._btql = parse_query(body["query"])
            except BTQLError as exc:
                self._btql = exc
        if isinstance(self._btql, BTQLError):
            raise ApiError(400, str(self._btql))
        return self._btql

    def btql_ids(self) -> int | None:
        """How many object ids a /btql request's source names (for `min_ids` faults)."""
        if self.path != "/btql":
            return None
        try:
            return len(self.btql_query().object_ids)
        except ApiError:
            return None

    def btql_sql(self) -> bool:
        """Whether this is a /btql request whose query is SQL text (for `sql_only` faults)."""
        body = self._json
        return self.path == "/btql" and isinstance(body, dict) and is_sql(body.get("query"))

    def btql_limit(self) -> int | None:
        """The page size a /btql request asks for (for `min_limit` faults); None if unparsable.

        An aggregate (a count) answers a row per group, never a big page: None too.
        """
        if self.path != "/btql":
            return None
        try:
            query = self.btql_query()
        except ApiError:
            return None
        if query.aggregate:
            return None
        return MAX_LIMIT if query.limit is None else query.limit


def _json_bytes(payload: Any) -> bytes:
    """Compact UTF-8 JSON; text with a lone surrogate goes out with ``\\u`` escapes instead."""
    try:
        return json.dumps(
            payload, ensure_ascii=False, separators=(",", ":"), default=_json_default
        ).encode()
    except UnicodeEncodeError:
        return json.dumps(payload, separators=(",", ":"), default=_json_default).encode()


def _json_default(value: Any) -> Any:
    if isinstance(value, datetime):  # now() arithmetic in a select list
        return iso_ms(value)
    msg = f"cannot encode {type(value).__name__} as JSON"
    raise TypeError(msg)


def json_response(
    payload: Any, status: int = 200, headers: tuple[tuple[str, str], ...] = ()
) -> Response:
    """A JSON answer."""
    return Response(status, _json_bytes(payload), headers=headers)


def error_response(
    status: int, message: str, headers: tuple[tuple[str, str], ...] = ()
) -> Response:
    """An error answer in the service's shape: `{"Message": ...}`."""
    return json_response({"Message": message}, status, headers)


def forbidden(what: str) -> ApiError:
    """The 403 of an object the caller cannot read: another org's, unknown (/btql) or deleted.

    One message for all, as the service does not tell a deleted object from lost access.
    """
    return ApiError(403, f"ForbiddenError: Missing read access to {what}")


def _encode_cursor(order: Order, key: tuple[int, ...], scope: str = "") -> str:
    raw = _json_bytes({"o": scope + _order_signature(order), "k": list(key)})
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def _decode_cursor(cursor: str, order: Order, scope: str = "") -> tuple[int, ...]:
    """The position a cursor points after; 400 if it is malformed or made for another sort.

    ``scope`` tells apart cursors of the same order over other things (summary rows).
    """
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4))
        payload = json.loads(raw)
        signature, key = payload["o"], payload["k"]
        position = tuple(int(part) for part in key)
    except (binascii.Error, ValueError, TypeError, KeyError) as exc:
        raise ApiError(400, "malformed cursor") from exc
    if signature != scope + _order_signature(order) or len(position) != _key_length(order):
        raise ApiError(400, "the cursor was made for a different sort; restart without it")
    return position


def _key_length(order: Order) -> int:
    """Components of an order's key: its fields plus the `_pagination_key` tie-break if absent."""
    return len(order) + (order[-1][0] != "_pagination_key")


def _order_signature(order: Order) -> str:
    return ",".join(f"{name}:{'desc' if descending else 'asc'}" for name, descending in order)


def _sort_key(path: tuple[str, ...]) -> Callable[[StoredRow], tuple[int, Any]]:
    return lambda row: sort_value(path, row.row)


def _tz_offset(body: dict[str, Any]) -> int:
    """The request's ``tz_offset``: integer minutes WEST of UTC (480 = US Pacific standard)."""
    value = body.get("tz_offset")
    if value is None:
        return 0
    if isinstance(value, bool) or not isinstance(value, int):
        raise ApiError(400, f"tz_offset must be an integer number of minutes, got {value!r}")
    if abs(value) > _MAX_TZ_OFFSET:
        raise ApiError(
            400, f"tz_offset must be within -{_MAX_TZ_OFFSET} and {_MAX_TZ_OFFSET}, got {value}"
        )
    return value


def _first_traces(rows: list[StoredRow], limit: int) -> list[StoredRow]:
    """The leading rows that belong to at most `limit` distinct traces."""
    roots: set[str] = set()
    kept = []
    for row in rows:
        root = row.row["root_span_id"]
        if root not in roots:
            if len(roots) >= limit:
                break
            roots.add(root)
        kept.append(row)
    return kept


def _item_schema(expr: Expr, columns: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """The JSON Schema of one select item: its column's, an aggregate's or a bucket's."""
    if isinstance(expr, Ident) and len(expr.path) == 1:
        return columns.get(expr.path[0], {})
    if isinstance(expr, Aggregate):
        return _AGGREGATE_SCHEMAS.get(expr.func, {})
    return _BUCKET_SCHEMA if isinstance(expr, Bucket) else {}


def _xact_param(value: Any, name: str) -> int:
    text = str(value)
    if isinstance(value, bool) or not text.isdigit():
        raise ApiError(400, f"{name} must be an _xact_id (a decimal integer), got {value!r}")
    return int(text)


class Emulator:
    """The Braintrust data plane (and the login call of its control plane) on 127.0.0.1.

    Args:
        api_key: the key of the default org.
        org_name: the default org, created in the store.
        port: 0 picks a free port.
        page_byte_budget: a /btql page stops before its rows' JSON would pass this many bytes
            (at least one row per page), so pages come short while rows remain.
        limit_over_cap: a /btql limit above 1000 is clamped or answered with a 400.
        clock: unix seconds, for `created`, `_xact_id` and `now()`.
        fault_seed: seeds the RNG of probabilistic faults.
        report_freshness: False leaves `freshness_state` out of /btql answers.
        overflow_bytes: a 200 /btql answer whose body passes this many bytes is stored in the
            object store and answered `303 See Other` to its pre-signed URL; None: never.
        overflow_cursor: where a redirected answer's cursor goes: "body" (the stored JSON, and
            `x-bt-cursor` on the 303), "header" (only `x-bt-cursor` on the 303), "meta_underscore"
            / "meta_dash" (only the object store's `x-amz-meta-bt_cursor` / `x-amz-meta-bt-cursor`).
        overflow_url_ttl: seconds (time.monotonic) a pre-signed URL works; then 403.
        btql_rate_limit: (requests, window seconds): a /btql request finding that many requests
            let through in the last window seconds (time.monotonic) is answered 429; None: no limit.
        rate_limit_retry_after: whether those 429s carry `Retry-After`.
        strict: answer 400 to any /btql construct outside the evidenced dialect
            (`dialect.py`), as Braintrust does to syntax it does not know; False takes all
            the parser reads.
        sorted_cursor: False behaves like the 2025 BTQL reference: a query with a `sort`
            gets no cursor (its pages still cut by `limit` and bytes), and a cursor sent
            with a sort is a 400.
        full_summary_previews: False answers 400 to `preview_length: -1` on the summary
            shape (no client is known to send it there).
        deleted_sources: how /btql answers a source naming a deleted object (see
            `Store.delete_object`): "forbidden" (403 for the whole query, as for lost access),
            "refused" (400 naming the id) or "missing" (answered without its rows).
        pinned_counts: False answers 400 to a query with both a `version` and an aggregate
            (the service's support for a count at a pinned version is unproven).
    """

    def __init__(  # noqa: PLR0913
        self,
        *,
        api_key: str = "sk-test-key",
        org_name: str = "acme",
        port: int = 0,
        page_byte_budget: int = 2_000_000,
        limit_over_cap: Literal["clamp", "error"] = "clamp",
        clock: Callable[[], float] = time.time,
        fault_seed: int = 0,
        report_freshness: bool = True,
        overflow_bytes: int | None = None,
        overflow_cursor: OverflowCursor = "body",
        overflow_url_ttl: float = 300.0,
        btql_rate_limit: tuple[int, float] | None = None,
        rate_limit_retry_after: bool = True,
        strict: bool = True,
        sorted_cursor: bool = True,
        full_summary_previews: bool = True,
        deleted_sources: DeletedSources = "forbidden",
        pinned_counts: bool = True,
    ) -> None:
        """Configure; nothing listens until `start()`.

        `report_freshness=False` leaves `freshness_state` out of /btql answers: the contract
        does not promise it, so a client must stay correct without it. Overflow redirects and
        the rate limit are off by default; the contract says clients must handle both.
        """
        if overflow_bytes is not None and overflow_bytes < 0:
            msg = "overflow_bytes must be at least 0 (or None for no redirects)"
            raise ValueError(msg)
        if overflow_cursor not in {"body", "header", *_META_CURSOR_HEADERS}:
            msg = f"unknown overflow_cursor {overflow_cursor!r}"
            raise ValueError(msg)
        if deleted_sources not in get_args(DeletedSources):
            msg = f"unknown deleted_sources {deleted_sources!r}"
            raise ValueError(msg)
        self.api_key = api_key
        self.report_freshness = report_freshness
        self.page_byte_budget = page_byte_budget
        self.limit_over_cap = limit_over_cap
        self.overflow_bytes = overflow_bytes
        self.overflow_cursor: OverflowCursor = overflow_cursor
        self.object_store = ObjectStore(overflow_url_ttl) if overflow_bytes is not None else None
        self.rate_limit_retry_after = rate_limit_retry_after
        self.strict = strict
        self.sorted_cursor = sorted_cursor
        self.full_summary_previews = full_summary_previews
        self.deleted_sources: DeletedSources = deleted_sources
        self.pinned_counts = pinned_counts
        self._btql_limiter = None if btql_rate_limit is None else RateLimiter(*btql_rate_limit)
        self.store = Store(clock)
        self.default_org = self.store.add_org(org_name)
        self.faults = FaultInjector(fault_seed)
        self.request_log: list[LoggedRequest] = []
        self.demo: Demo | None = None
        self._keys: dict[str, tuple[str, ...]] = {api_key: (org_name,)}
        self._port = port
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None
        self._store_server: _Server | None = None
        self._store_thread: threading.Thread | None = None
        self._log_lock = threading.Lock()
        self._trace_cache: _TraceCache | None = None

    @property
    def url(self) -> str:
        """Base URL of the running server (both app_url and api_url)."""
        if self._server is None:
            msg = "the emulator is not running; call start() first"
            raise RuntimeError(msg)
        return f"http://127.0.0.1:{self._server.server_address[1]}"

    @property
    def object_store_url(self) -> str:
        """Base URL of the running object store (only with `overflow_bytes`)."""
        if self._store_server is None:
            msg = "no object store is running; it needs overflow_bytes and start()"
            raise RuntimeError(msg)
        return f"http://127.0.0.1:{self._store_server.server_address[1]}"

    def expire_overflow_urls(self) -> None:
        """Make every pre-signed URL issued so far answer 403 "Request has expired"."""
        if self.object_store is not None:
            self.object_store.expire_all()

    def add_api_key(self, key: str, org_names: Iterable[str]) -> None:
        """Another key, member of these orgs (created if missing)."""
        names = tuple(org_names)
        for name in names:
            if self.store.org_by_name(name) is None:
                self.store.add_org(name)
        self._keys[key] = names

    def load_demo(self, *, seed: int = 7) -> Demo:
        """Fill the store with the deterministic demo data set (kept as `self.demo`)."""
        self.demo = generate_demo(self.store, seed=seed)
        return self.demo

    def start(self) -> Self:
        """Listen and serve in a background thread."""
        if self._server is not None:
            msg = "the emulator is already running"
            raise RuntimeError(msg)
        self._server = _Server(self, self._port, "api", self)
        self._thread = _serve_in_thread(self._server, "bt-emulator")
        if self.object_store is not None:
            self._store_server = _Server(self, 0, "object_store", self.object_store)
            self._store_thread = _serve_in_thread(self._store_server, "bt-object-store")
        return self

    def stop(self) -> None:
        """Stop serving (both servers) and close every socket, idle keep-alives included."""
        servers = ((self._server, self._thread), (self._store_server, self._store_thread))
        for server, thread in servers:
            if server is not None and thread is not None:
                server.shutdown()
                server.close_connections()
                server.server_close()
                thread.join()
                server.wait_for_handlers()
        self._server = self._thread = self._store_server = self._store_thread = None

    def __enter__(self) -> Self:
        """Start on entry."""
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        """Stop on exit."""
        self.stop()

    def log_request(self, entry: LoggedRequest) -> None:
        """Record a request (called by the handler threads)."""
        with self._log_lock:
            self.request_log.append(entry)

    # Routing ----------------------------------------------------------------------------------

    def handle(self, request: Request) -> Response:
        """Answer one request (faults aside)."""
        try:
            if request.path == "/btql" and self._btql_limiter is not None:
                self._admit(self._btql_limiter)
            return self._route(request)(request)
        except ApiError as exc:
            return error_response(exc.status, exc.message, exc.headers)
        except Exception as exc:  # noqa: BLE001 - a bug here must surface as a loud 500
            traceback.print_exc(file=sys.stderr)
            return error_response(500, f"emulator bug: {exc!r}")

    @staticmethod
    def injected_error(status: int, headers: tuple[tuple[str, str], ...]) -> Response:
        """The answer of a `status` fault, in the service's error shape."""
        return error_response(status, f"Injected fault: HTTP {status}", headers)

    def _admit(self, limiter: RateLimiter) -> None:
        """Let a /btql request through the rolling window, or refuse it with a 429."""
        wait = limiter.admit()
        if wait is None:
            return
        headers = (("Retry-After", str(max(1, math.ceil(wait)))),)
        raise ApiError(
            429,
            f"Too many requests: the BTQL rate limit is {limiter.requests} requests per"
            f" {limiter.window:g} seconds. Please wait and retry.",
            headers if self.rate_limit_retry_after else (),
        )

    def _route(self, request: Request) -> Callable[[Request], Response]:
        """The endpoint for a request: 404 for an unknown path, 405 for a wrong method."""
        path = request.path
        parts = path.strip("/").split("/")
        route: Callable[[Request], Response]
        methods: tuple[str, ...]
        if path == "/api/apikey/login":
            route, methods = self._login, ("POST",)
        elif path == "/btql":
            route, methods = self._btql, ("POST",)
        elif parts[0] == "v1" and len(parts) == 2 and parts[1] in _OBJECT_KINDS:
            kind: ObjectKind = parts[1]
            route, methods = (lambda r: self._list(kind, r)), ("GET",)
        elif parts[0] == "v1" and len(parts) == 3 and parts[1] in _OBJECT_KINDS:
            kind, object_id = parts[1], parts[2]
            route, methods = (lambda r: self._get(kind, object_id, r)), ("GET",)
        elif (
            parts[0] == "v1" and len(parts) == 4 and parts[1] in ROW_SOURCES and parts[3] == "fetch"
        ):
            source: RowSource = parts[1]
            object_id = parts[2]
            route, methods = (lambda r: self._fetch(source, object_id, r)), ("GET", "POST")
        else:
            raise ApiError(404, f"no route for {path}")
        if request.method not in methods:
            raise ApiError(405, f"{request.method} is not allowed on {path}")
        return route

    # Auth -------------------------------------------------------------------------------------

    def _key_orgs(self, request: Request) -> tuple[str, ...]:
        """The org names of the caller's API key; 401 without ever echoing the key."""
        scheme, _, token = request.headers.get("authorization", "").partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            raise ApiError(
                401, "Missing or malformed Authorization header; expected 'Bearer <api key>'"
            )
        orgs = self._keys.get(token.strip())
        if orgs is None:
            raise ApiError(401, "Invalid API key")
        return orgs

    def _caller_org_ids(self, request: Request) -> frozenset[str]:
        """Org ids the request may read: the org it names (header or `org_name`), else all."""
        orgs = self._key_orgs(request)
        named = request.query.get("org_name", [None])[0] or request.headers.get("x-bt-org-name")
        if named is not None:
            if named not in orgs:
                raise ApiError(403, f"This API key is not a member of organization {named!r}")
            orgs = (named,)
        return frozenset(str(org["id"]) for name in orgs if (org := self.store.org_by_name(name)))

    def _readable(
        self, kind: ObjectKind, object_id: str, org_ids: frozenset[str]
    ) -> dict[str, Any]:
        """An object the caller may read: 404 if unknown, 403 if another org's or deleted."""
        obj = self.store.get_object(kind, object_id)
        if obj is None:
            raise ApiError(404, f"{kind} {object_id!r} not found")
        if self.store.org_id_of(kind, object_id) not in org_ids or self.store.is_deleted(
            kind, object_id
        ):
            what = f"{kind} {object_id!r}"
            raise forbidden(what)
        return obj

    def _login(self, request: Request) -> Response:
        orgs = [org for name in self._key_orgs(request) if (org := self.store.org_by_name(name))]
        url = self.url
        return json_response(
            {
                "org_info": [
                    {
                        "id": org["id"],
                        "name": org["name"],
                        "api_url": url,
                        "proxy_url": url,
                        "realtime_url": None,
                        "git_metadata": None,
                        "is_universal_api": True,
                    }
                    for org in orgs
                ]
            }
        )

    # /v1 objects ------------------------------------------------------------------------------

    @staticmethod
    def _params(request: Request, allowed: frozenset[str]) -> dict[str, list[str]]:
        """Query parameters, strictly: an undocumented or repeated one is a 400."""
        unknown = sorted(set(request.query) - allowed)
        if unknown:
            raise ApiError(400, f"Unknown query parameter(s): {', '.join(unknown)}")
        repeated = sorted(
            name for name, values in request.query.items() if len(values) > 1 and name != "ids"
        )
        if repeated:
            raise ApiError(400, f"Query parameter(s) given more than once: {', '.join(repeated)}")
        return request.query

    @staticmethod
    def _positive_int(value: Any, name: str) -> int:
        text = str(value)
        if isinstance(value, bool) or not text.isdigit() or int(text) < 1:
            raise ApiError(400, f"{name} must be a positive integer, got {value!r}")
        return int(text)

    def _list(self, kind: ObjectKind, request: Request) -> Response:
        org_ids = self._caller_org_ids(request)
        params = {
            name: values[0] for name, values in self._params(request, _LIST_PARAMS[kind]).items()
        }
        if "starting_after" in params and "ending_before" in params:
            raise ApiError(400, "Only one of starting_after and ending_before may be given")
        limit = self._positive_int(params["limit"], "limit") if "limit" in params else None
        if limit is None and kind == "experiment":
            limit = MAX_LIMIT
        found = [
            o for o in self.store.objects(kind) if self.store.org_id_of(kind, o["id"]) in org_ids
        ]
        found = self._filter_objects(kind, found, request.query, org_ids)
        position = {obj["id"]: index for index, obj in enumerate(found)}
        start, end = 0, len(found)
        for name in ("starting_after", "ending_before"):
            if name in params and params[name] not in position:
                raise ApiError(400, f"{name}: no {kind} {params[name]!r} in this listing")
        if "starting_after" in params:
            start = position[params["starting_after"]] + 1
        if "ending_before" in params:
            end = position[params["ending_before"]]
            start = max(0, end - limit) if limit is not None else 0
        if limit is not None:
            end = min(end, start + limit)
        return json_response({"objects": found[start:end]})

    def _filter_objects(
        self,
        kind: ObjectKind,
        found: list[dict[str, Any]],
        query: dict[str, list[str]],
        org_ids: frozenset[str],
    ) -> list[dict[str, Any]]:
        if "ids" in query:
            wanted = set(query["ids"])
            found = [o for o in found if o["id"] in wanted]
        name = query.get(f"{kind}_name", [None])[0]
        if name is not None:
            found = [o for o in found if o["name"] == name]
        if kind == "project":
            return found
        if "project_id" in query:
            self._readable("project", query["project_id"][0], org_ids)
            found = [o for o in found if o["project_id"] == query["project_id"][0]]
        if "project_name" in query:
            project_ids = {
                p["id"]
                for p in self.store.objects("project")
                if p["name"] == query["project_name"][0] and p["org_id"] in org_ids
            }
            found = [o for o in found if o["project_id"] in project_ids]
        return found

    def _get(self, kind: ObjectKind, object_id: str, request: Request) -> Response:
        org_ids = self._caller_org_ids(request)
        self._params(request, frozenset())
        return json_response(self._readable(kind, object_id, org_ids))

    # /btql ------------------------------------------------------------------------------------

    def _btql(self, request: Request) -> Response:
        org_ids = self._caller_org_ids(request)
        body = request.json_object()
        fmt = body.get("fmt", "json")
        if fmt == "parquet":
            raise ApiError(400, "fmt 'parquet' is not supported by the emulator")
        if fmt not in {"json", "jsonl"}:
            raise ApiError(400, f"fmt must be json, jsonl or parquet, got {fmt!r}")
        query = self._live_sources(self._dialect_query(request, body), org_ids)
        as_of = None
        if body.get("version") is not None:
            if query.source == "project_logs":
                raise ApiError(400, "version is not supported for project_logs")
            if query.aggregate and not self.pinned_counts:
                raise ApiError(400, "version is not supported for aggregate queries")
            as_of = _xact_param(body["version"], "version")
        tz_offset = _tz_offset(body)
        limit = self._page_limit(query.limit)
        page = (
            self._page(query, limit, as_of, tz_offset)
            if query.source in ROW_SOURCES
            else _Page([], None)
        )
        realtime = bool(body.get("brainstore_realtime"))
        response = self._btql_response(query, page, fmt=fmt, realtime=realtime)
        store = self.object_store
        threshold = self.overflow_bytes
        if store is None or threshold is None or len(response.body) <= threshold:
            return response
        if page.cursor is not None and self.overflow_cursor != "body":
            response = self._btql_response(
                query, page, fmt=fmt, realtime=realtime, cursor_in_body=False
            )
        return self._redirect(store, response, page.cursor)

    def _dialect_query(self, request: Request, body: dict[str, Any]) -> Query:
        """The parsed query, or a 400 for what this emulator's dialect does not take."""
        if self.strict:
            try:
                dialect.check(body)
            except dialect.NotEvidenced as exc:
                raise ApiError(400, str(exc)) from exc
        query = request.btql_query()
        if self.strict and body.get("version") is not None:
            try:  # SQL text names its objects only once parsed
                dialect.check_version(len(query.object_ids))
            except dialect.NotEvidenced as exc:
                raise ApiError(400, str(exc)) from exc
        if (
            query.shape == "summary"
            and query.preview_length == -1
            and not self.full_summary_previews
        ):
            raise ApiError(400, "preview_length must be a positive integer for summary")
        if query.sort and query.cursor is not None and not self.sorted_cursor:
            raise ApiError(
                400, "Cursors can only be used for pagination when no sort clause is specified"
            )
        return query

    def _redirect(self, store: ObjectStore, response: Response, cursor: str | None) -> Response:
        """Store a big answer in the object store; a 303 to its pre-signed URL instead.

        The cursor goes where `overflow_cursor` says; the 303 itself has no body.
        """
        mode = self.overflow_cursor
        on_303 = (("x-bt-cursor", cursor),) if cursor and mode in {"body", "header"} else ()
        meta = _META_CURSOR_HEADERS.get(mode)
        on_object = ((meta, cursor),) if cursor and meta else ()
        url = store.put(self.object_store_url, response.body, response.content_type, on_object)
        return Response(303, b"", None, (("Location", url), *on_303))

    def _btql_response(
        self,
        query: Query,
        page: _Page,
        *,
        fmt: str,
        realtime: bool,
        cursor_in_body: bool = True,
    ) -> Response:
        """The page as `fmt`: JSON with schema, cursor, states and warnings, or bare JSON lines.

        `cursor_in_body=False` leaves the cursor out of both the JSON and `x-bt-cursor` (a
        redirected answer whose cursor travels elsewhere).
        """
        warnings = []
        if query.source == "project_logs" and not constrained_fields(query.filter) & _RANGE_FIELDS:
            warnings.append(_MISSING_RANGE_WARNING)
        processed, considered = self.store.freshness()
        cursor = page.cursor if cursor_in_body else None
        headers = (("x-bt-cursor", cursor),) if cursor else ()
        if fmt == "jsonl":
            return Response(
                200, b"".join(row + b"\n" for row in page.rows), "application/x-ndjson", headers
            )
        tail: dict[str, Any] = {"schema": self._schema(query)}
        if cursor:
            tail["cursor"] = cursor
        tail["realtime_state"] = {
            "type": "on" if realtime else "off",
            "actual_xact_id": considered,
            "minimum_xact_id": processed,
            "read_bytes": sum(len(row) for row in page.rows),
        }
        if self.report_freshness:
            tail["freshness_state"] = {
                "last_processed_xact_id": processed,
                "last_considered_xact_id": considered,
            }
        tail["warnings"] = warnings
        return Response(
            200,
            b'{"data":[' + b",".join(page.rows) + b"]," + _json_bytes(tail)[1:],
            headers=headers,
        )

    def _live_sources(self, query: Query, org_ids: frozenset[str]) -> Query:
        """The query, once every object it reads exists in one of the caller's orgs (or 403).

        A deleted object is answered as `deleted_sources` says: 403 as for lost access, a 400
        naming it, or left out of the query (so the answer has none of its rows).
        """
        owner = OWNER_KIND.get(query.source, "project")  # prompts and functions live in projects
        deleted = []
        for object_id in query.object_ids:
            lost = self.store.org_id_of(owner, object_id) not in org_ids
            gone = not lost and self.store.is_deleted(owner, object_id)
            if lost or (gone and self.deleted_sources == "forbidden"):
                what = f"{query.source}({object_id!r}): unknown, deleted or in another organization"
                raise forbidden(what)
            if gone and self.deleted_sources == "refused":
                raise ApiError(400, f"{query.source}({object_id!r}) has been deleted")
            if gone:
                deleted.append(object_id)
        if not deleted:
            return query
        live = tuple(object_id for object_id in query.object_ids if object_id not in deleted)
        return dataclasses.replace(query, object_ids=live)

    def _page_limit(self, limit: int | None) -> int:
        if limit is None:
            return MAX_LIMIT
        if limit > MAX_LIMIT:
            if self.limit_over_cap == "error":
                raise ApiError(400, f"limit must be at most {MAX_LIMIT}, got {limit}")
            return MAX_LIMIT
        return limit

    def _page(self, query: Query, limit: int, as_of: int | None, tz_offset: int) -> _Page:
        """Rows of one page: cursor paging for `_pagination_key`/`_xact_id` sorts, else one shot.

        With the traces shape `limit` counts traces (a page holds spans of at most `limit`
        of them); the cursor stays a span position, so a trace may continue on the next page.
        """
        source: RowSource = query.source  # type: ignore[assignment]
        now = datetime.fromtimestamp(self.store.clock(), tz=timezone.utc)
        if query.shape == "summary":
            return self._summary_page(query, limit, as_of, now, tz_offset)
        keep = self._row_filter(query, source, as_of, now, tz_offset)
        if query.aggregate:
            view = self.store.ordered(source, query.object_ids, DEFAULT_ORDER, as_of=as_of)
            rows = [row.row for row in view.rows if keep(row)]
            return self._aggregate_page(query, rows, limit, now, tz_offset)
        encode = self._row_encoder(query, now, tz_offset)
        traces = query.shape == "traces"
        if not all(key.path in _CURSOR_FIELDS for key in query.sort):
            if query.cursor is not None:
                raise ApiError(400, "a cursor needs a sort on _pagination_key or _xact_id only")
            matched = [
                row
                for row in self.store.ordered(
                    source, query.object_ids, DEFAULT_ORDER, as_of=as_of
                ).rows
                if keep(row)
            ]
            for key in reversed(query.sort):
                matched.sort(key=_sort_key(key.path), reverse=key.descending)
            page = _first_traces(matched, limit) if traces else matched[:limit]
            return _Page([encode(row) for row in page], None)
        order: Order = tuple((key.path[0], key.descending) for key in query.sort) or DEFAULT_ORDER
        view = self.store.ordered(source, query.object_ids, order, as_of=as_of)
        start = bisect_right(view.keys, _decode_cursor(query.cursor, order)) if query.cursor else 0
        answer = self._cursor_page(
            view, start, order=order, keep=keep, encode=encode, limit=limit, traces=traces
        )
        return answer if self.sorted_cursor or not query.sort else _Page(answer.rows, None)

    def _cursor_page(  # noqa: PLR0913 - one page's whole state
        self,
        view: OrderedRows,
        start: int,
        *,
        order: Order,
        keep: Callable[[StoredRow], bool],
        encode: Callable[[StoredRow], bytes],
        limit: int,
        traces: bool,
    ) -> _Page:
        """Rows from `start` on, up to `limit` rows (traces) and the byte budget, and a cursor."""
        rows: list[bytes] = []
        roots: set[str] = set()
        size = 0
        last = -1
        for index in range(start, len(view.rows)):
            if not traces and len(rows) >= limit:
                break
            row = view.rows[index]
            if not keep(row):
                continue
            root = row.row["root_span_id"]
            if traces and root not in roots and len(roots) >= limit:
                break
            encoded = encode(row)
            if rows and size + len(encoded) > self.page_byte_budget:
                break
            rows.append(encoded)
            roots.add(root)
            size += len(encoded)
            last = index
        return _Page(rows, _encode_cursor(order, view.keys[last]) if rows else None)

    @staticmethod
    def _aggregate_page(
        query: Query, rows: list[dict[str, Any]], limit: int, now: datetime, tz_offset: int
    ) -> _Page:
        """An aggregate answer: at most `limit` rows and never a cursor (nor a byte cut)."""
        answer = aggregate_rows(query, rows, now=now, tz_offset=tz_offset)
        return _Page([_json_bytes(row) for row in answer[:limit]], None)

    def _summary_page(
        self, query: Query, limit: int, as_of: int | None, now: datetime, tz_offset: int
    ) -> _Page:
        """One summary row per trace with a span passing the filter, paged by trace.

        Only a `_pagination_key` sort (or none: descending) pages with a cursor, keyed on each
        trace's representative span; other sorts answer up to `limit` rows with no cursor.
        """
        source: RowSource = query.source  # type: ignore[assignment]
        descending = query.sort[0].descending if query.sort else True
        order: Order = (("_pagination_key", descending),)
        keyed = sorted(
            (
                (order_key(representative(trace), order), trace)
                for trace in self._matching_traces(query, as_of, now, tz_offset)
            ),
            key=lambda pair: pair[0],
        )

        def build(trace: list[StoredRow]) -> dict[str, Any]:
            return summary_row(source, trace, query.preview_length)

        if query.aggregate:
            rows = [build(trace) for _, trace in keyed]
            return self._aggregate_page(query, rows, limit, now, tz_offset)
        project = self._projection(query, now, tz_offset)
        if query.sort and (len(query.sort) > 1 or query.sort[0].path != ("_pagination_key",)):
            if query.cursor is not None:
                raise ApiError(400, "a cursor on summary rows needs a sort on _pagination_key only")
            summaries = [build(trace) for _, trace in keyed]
            sort_rows(summaries, query.sort)
            return _Page([_json_bytes(project(row)) for row in summaries[:limit]], None)
        keys = [key for key, _ in keyed]
        start = 0
        if query.cursor:
            start = bisect_right(keys, _decode_cursor(query.cursor, order, _SUMMARY_CURSOR))
        page: list[bytes] = []
        size = 0
        for index in range(start, min(len(keyed), start + limit)):
            encoded = _json_bytes(project(build(keyed[index][1])))
            if page and size + len(encoded) > self.page_byte_budget:
                break
            page.append(encoded)
            size += len(encoded)
        last = start + len(page) - 1
        if not page or (query.sort and not self.sorted_cursor):
            return _Page(page, None)
        return _Page(page, _encode_cursor(order, keys[last], _SUMMARY_CURSOR))

    def _matching_traces(
        self, query: Query, as_of: int | None, now: datetime, tz_offset: int
    ) -> list[list[StoredRow]]:
        """The visible spans of each trace with at least one span passing the filter."""
        source: RowSource = query.source  # type: ignore[assignment]
        spans = self.store.ordered(source, query.object_ids, DEFAULT_ORDER, as_of=as_of).rows
        grouped: dict[str, list[StoredRow]] = {}
        hits: set[str] = set()
        for span in spans:
            root = span.row["root_span_id"]
            grouped.setdefault(root, []).append(span)
            if root not in hits and matches(query.filter, span.row, now=now, tz_offset=tz_offset):
                hits.add(root)
        return [trace for root, trace in grouped.items() if root in hits]

    @staticmethod
    def _projection(
        query: Query, now: datetime, tz_offset: int
    ) -> Callable[[dict[str, Any]], dict[str, Any]]:
        """The select list applied to an already built row (a summary row)."""
        if query.select is None:
            return lambda row: row
        items = query.select
        return lambda row: {
            item.alias: evaluate(item.expr, row, now=now, tz_offset=tz_offset) for item in items
        }

    def _row_filter(
        self, query: Query, source: RowSource, as_of: int | None, now: datetime, tz_offset: int
    ) -> Callable[[StoredRow], bool]:
        if query.shape == "traces":
            spans = self.store.ordered(source, query.object_ids, DEFAULT_ORDER, as_of=as_of).rows
            roots = {
                row.row["root_span_id"]
                for row in spans
                if matches(query.filter, row.row, now=now, tz_offset=tz_offset)
            }
            return lambda row: row.row["root_span_id"] in roots
        if query.filter is None:
            return lambda _row: True
        expr = query.filter
        return lambda row: matches(expr, row.row, now=now, tz_offset=tz_offset)

    @staticmethod
    def _row_encoder(query: Query, now: datetime, tz_offset: int) -> Callable[[StoredRow], bytes]:
        if query.select is None:
            return StoredRow.json_bytes
        items = query.select
        return lambda row: _json_bytes(
            {
                item.alias: evaluate(item.expr, row.row, now=now, tz_offset=tz_offset)
                for item in items
            }
        )

    def _schema(self, query: Query) -> dict[str, Any]:
        """JSON Schema of the answer's rows: the source's columns, or summary or select items.

        A field added with `Store.add_row_field` is any JSON.
        """
        source: RowSource = query.source  # type: ignore[assignment]
        summary = query.shape == "summary" and query.source in ROW_SOURCES
        columns = summary_schema(source, query.preview_length) if summary else FIELD_SCHEMAS
        if query.select is None:
            names = self.store.row_fields(source) if source in ROW_SOURCES else ()
            properties = (
                columns if summary else {name: FIELD_SCHEMAS.get(name, {}) for name in names}
            )
        else:
            properties = {item.alias: _item_schema(item.expr, columns) for item in query.select}
        return {"type": "array", "items": {"type": "object", "properties": properties}}

    # Legacy fetch (what SDK 0.47.0 reads experiments and datasets with) --------------------

    def _fetch(self, source: RowSource, object_id: str, request: Request) -> Response:
        """`/v1/<source>/<id>/fetch`: pages of whole traces, latest `_xact_id` first."""
        org_ids = self._caller_org_ids(request)
        self._readable(OWNER_KIND[source], object_id, org_ids)
        if request.method == "GET":
            args: dict[str, Any] = {
                k: v[0] for k, v in self._params(request, _FETCH_PARAMS).items()
            }
        else:
            self._params(request, frozenset({"org_name"}))
            args = request.json_object() if request.body else {}
            unknown = sorted(set(args) - _FETCH_PARAMS)
            if unknown:
                raise ApiError(400, f"fetch does not support {', '.join(unknown)} in the emulator")
        limit = None if args.get("limit") is None else self._positive_int(args["limit"], "limit")
        as_of = None if args.get("version") is None else _xact_param(args["version"], "version")
        order: Order = (("_xact_id", True),)
        view = self.store.ordered(source, (object_id,), order, as_of=as_of)
        ranked, keys = self._traces(view, order)
        start = (
            bisect_right(keys, _decode_cursor(args["cursor"], order)) if args.get("cursor") else 0
        )
        page = ranked[start:] if limit is None else ranked[start : start + limit]
        events = [row.json_bytes() for trace in page for row in trace]
        tail: dict[str, Any] = {}
        if limit is not None and len(page) == limit:
            tail["cursor"] = _encode_cursor(order, order_key(page[-1][0], order))
        return Response(
            200,
            b'{"events":['
            + b",".join(events)
            + b"]"
            + (b"," + _json_bytes(tail)[1:] if tail else b"}"),
        )

    def _traces(
        self, view: OrderedRows, order: Order
    ) -> tuple[list[list[StoredRow]], list[tuple[int, ...]]]:
        """The view's rows grouped by trace, latest first, with each trace's cursor key.

        Kept while the view is current (the store caches views until a write), so paging a
        big dataset costs a bisect per page, as /btql does, not a regrouping.
        """
        cached = self._trace_cache
        if cached is None or cached[0] is not view:
            traces: dict[str, list[StoredRow]] = {}
            for row in view.rows:
                traces.setdefault(row.row["root_span_id"], []).append(row)
            ranked = list(traces.values())
            keys = [order_key(trace[0], order) for trace in ranked]
            cached = self._trace_cache = (view, ranked, keys)
        return cached[1], cached[2]


@dataclass(frozen=True)
class _Page:
    rows: list[bytes]
    cursor: str | None


class RateLimiter:
    """A rolling window: at most `requests` admitted in any `window` seconds (by `clock`).

    Refused requests do not count, so a client that waits as told gets through.
    """

    def __init__(
        self, requests: int, window: float, clock: Callable[[], float] = time.monotonic
    ) -> None:
        """Check the limit makes sense; start with an empty window (`clock` for unit tests)."""
        if requests < 1 or window <= 0:
            msg = "a rate limit needs at least 1 request per a positive window"
            raise ValueError(msg)
        self.requests = requests
        self.window = window
        self._clock = clock
        self._admitted: deque[float] = deque()
        self._lock = threading.Lock()

    def admit(self) -> float | None:
        """None if the request may go now (it is counted), else seconds until a slot frees."""
        with self._lock:
            now = self._clock()
            while self._admitted and self._admitted[0] <= now - self.window:
                self._admitted.popleft()
            if len(self._admitted) >= self.requests:
                return self._admitted[0] + self.window - now
            self._admitted.append(now)
            return None


@dataclass
class _StoredObject:
    body: bytes | None  # None once expired and evicted
    content_type: str | None
    signature: str
    issued: float  # time.monotonic()
    headers: tuple[tuple[str, str], ...]


def s3_error(
    status: int, code: str, message: str, details: tuple[tuple[str, str], ...] = ()
) -> Response:
    """An error in S3's XML shape: `<Error><Code>...</Code><Message>...</Message>...</Error>`."""
    fields = (("Code", code), ("Message", message), *details)
    xml = "".join(f"<{name}>{escape(value)}</{name}>" for name, value in fields)
    body = f'<?xml version="1.0" encoding="UTF-8"?>\n<Error>{xml}</Error>'.encode()
    return Response(status, body, "application/xml")


class ObjectStore:
    """Stands in for S3 serving big /btql answers at pre-signed URLs (another host by port).

    What a client must get right is enforced: an `Authorization` header is refused (400, S3
    allows one auth mechanism, and the API key must not leave the API host), a URL older than
    `ttl` seconds (time.monotonic, from when it was issued) is 403, an unknown key or a wrong
    `X-Amz-Signature` is 404. Bodies of expired URLs are dropped when the next one is stored.
    """

    def __init__(self, ttl: float) -> None:
        """Empty; URLs live `ttl` seconds."""
        self.ttl = ttl
        self._objects: dict[str, _StoredObject] = {}
        self._lock = threading.Lock()

    def put(
        self,
        base_url: str,
        body: bytes,
        content_type: str | None,
        headers: tuple[tuple[str, str], ...] = (),
    ) -> str:
        """Store an answer (sent back with these extra headers); its pre-signed URL."""
        key = f"btql/{secrets.token_hex(16)}.json"
        signature = secrets.token_hex(32)
        now = time.monotonic()
        with self._lock:
            for stored in self._objects.values():
                if now - stored.issued > self.ttl:
                    stored.body = None
            self._objects[key] = _StoredObject(body, content_type, signature, now, headers)
        stamp = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%SZ")
        return (
            f"{base_url}/{OBJECT_STORE_BUCKET}/{key}?X-Amz-Algorithm=AWS4-HMAC-SHA256"
            f"&X-Amz-Credential=AKIAEMULATOR%2F{stamp[:8]}%2Fus-east-1%2Fs3%2Faws4_request"
            f"&X-Amz-Date={stamp}&X-Amz-Expires={max(1, math.ceil(self.ttl))}"
            f"&X-Amz-SignedHeaders=host&X-Amz-Signature={signature}"
        )

    def expire_all(self) -> None:
        """Age every URL issued so far past its lifetime."""
        with self._lock:
            for stored in self._objects.values():
                stored.issued = -math.inf
                stored.body = None

    def handle(self, request: Request) -> Response:
        """GET of a pre-signed URL: the stored answer, or S3's error."""
        if "authorization" in request.headers:
            return s3_error(
                400,
                "InvalidArgument",
                _TWO_AUTH_MESSAGE,
                (("ArgumentName", "Authorization"), ("ArgumentValue", "(redacted)")),
            )
        if request.method != "GET":
            return s3_error(
                405,
                "MethodNotAllowed",
                "The specified method is not allowed against this resource.",
            )
        bucket, _, key = request.path.lstrip("/").partition("/")
        signature = request.query.get("X-Amz-Signature", [""])[0]
        with self._lock:
            stored = self._objects.get(key) if bucket == OBJECT_STORE_BUCKET else None
            known = stored is not None and hmac.compare_digest(signature, stored.signature)
            if stored is None or not known:
                return s3_error(
                    404, "NoSuchKey", "The specified key does not exist.", (("Key", key),)
                )
            if time.monotonic() - stored.issued > self.ttl or stored.body is None:
                return s3_error(403, "AccessDenied", "Request has expired")
            return Response(200, stored.body, stored.content_type, stored.headers)

    @staticmethod
    def injected_error(status: int, headers: tuple[tuple[str, str], ...]) -> Response:
        """The answer of a `status` fault, in S3's error shape."""
        code = {503: "SlowDown", 500: "InternalError"}.get(status, "ServiceUnavailable")
        response = s3_error(status, code, f"Injected fault: HTTP {status}")
        return Response(response.status, response.body, response.content_type, headers)


class _Backend(Protocol):
    """What a server answers requests with: the API (`Emulator`) or the `ObjectStore`."""

    def handle(self, request: Request) -> Response: ...

    def injected_error(self, status: int, headers: tuple[tuple[str, str], ...]) -> Response: ...


def _serve_in_thread(server: _Server, name: str) -> threading.Thread:
    thread = threading.Thread(
        target=server.serve_forever,
        kwargs={"poll_interval": 0.02},  # how soon stop() is noticed
        name=name,
        daemon=True,
    )
    thread.start()
    return thread


class _Server(ThreadingHTTPServer):
    """Threaded server that remembers its connections so `stop()` can close idle keep-alives."""

    daemon_threads = True

    def __init__(self, emulator: Emulator, port: int, host: Host, backend: _Backend) -> None:
        self.emulator = emulator
        self.host = host
        self.backend = backend
        self._connections: set[socket.socket] = set()
        self._connections_lock = threading.Condition()
        super().__init__(("127.0.0.1", port), _Handler)

    def track(self, connection: socket.socket) -> None:
        with self._connections_lock:
            self._connections.add(connection)

    def untrack(self, connection: socket.socket) -> None:
        with self._connections_lock:
            self._connections.discard(connection)
            self._connections_lock.notify_all()

    def close_connections(self) -> None:
        with self._connections_lock:
            for connection in self._connections:
                with contextlib.suppress(OSError):
                    connection.shutdown(socket.SHUT_RDWR)

    def wait_for_handlers(self, timeout: float = 5.0) -> None:
        with self._connections_lock:
            self._connections_lock.wait_for(lambda: not self._connections, timeout)

    def handle_error(self, request: Any, client_address: Any) -> None:
        """Clients hanging up (or `drop` faults) are normal here; anything else is printed."""
        if not isinstance(sys.exc_info()[1], OSError):
            super().handle_error(request, client_address)


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    timeout = 60
    server: _Server

    def setup(self) -> None:
        """Track the connection; disable Nagle so headers and body are not held back."""
        super().setup()
        self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.server.track(self.connection)

    def finish(self) -> None:
        try:
            super().finish()
        finally:
            self.server.untrack(self.connection)

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002
        """Silence per-request logging; `Emulator.request_log` has it."""

    def do_GET(self) -> None:
        self._serve()

    do_POST = do_PUT = do_PATCH = do_DELETE = do_GET  # noqa: N815 - the stdlib's naming

    def _serve(self) -> None:
        arrived = time.time()
        split = urlsplit(self.path)
        length = int(self.headers.get("Content-Length") or 0)
        request = Request(
            method=self.command,
            path=split.path,
            query=parse_qs(split.query, keep_blank_values=True),
            headers={name.lower(): value for name, value in self.headers.items()},
            body=self.rfile.read(length) if length else b"",
        )
        emulator = self.server.emulator
        fault = emulator.faults.pick(
            request.path, request.btql_limit(), request.btql_ids(), sql=request.btql_sql()
        )
        if fault is not None and fault.delete is not None:
            emulator.store.delete_object(*fault.delete)  # before the answer: it sees it deleted
        response = self._answer(request, fault)
        # Logged before sending, so a client that sees the answer also sees the log entry.
        emulator.log_request(
            LoggedRequest(
                time=arrived,
                method=request.method,
                path=request.path,
                query=request.query,
                headers=request.headers,
                json_body=request.json_body,
                status=response.status if response else None,
                fault=fault.kind if fault else None,
                response_headers=dict(response.headers) if response else {},
                host=self.server.host,
            )
        )
        if response is not None:
            self._send(response, request, truncate=fault is not None and fault.kind == "truncate")
        if fault is not None and fault.kind in {"drop", "truncate"}:
            self._hang_up()

    def _answer(self, request: Request, fault: FaultRule | None) -> Response | None:
        """The answer to send given the fault, if any; None sends nothing."""
        if fault is None or fault.kind in {"slow", "truncate", "delete"}:
            if fault is not None:
                time.sleep(fault.delay)
            return self.server.backend.handle(request)
        if fault.kind == "status":
            status = fault.status or 500
            retry_after = fault.retry_after
            if fault.retry_after_as_date and isinstance(retry_after, int):
                retry_after = formatdate(time.time() + retry_after, usegmt=True)
            headers = (("Retry-After", str(retry_after)),) if retry_after is not None else ()
            return self.server.backend.injected_error(status, headers)
        if fault.kind == "garbage":
            return Response(200, _GARBAGE, "text/html")
        return None

    def _hang_up(self) -> None:
        self.close_connection = True
        with contextlib.suppress(OSError):
            self.wfile.flush()
            self.connection.shutdown(socket.SHUT_RDWR)

    def _send(self, response: Response, request: Request, *, truncate: bool) -> None:
        body = response.body
        accepted = {
            token.split(";")[0].strip()
            for token in request.headers.get("accept-encoding", "").split(",")
        }
        compressed = "gzip" in accepted and bool(body)
        if compressed:
            body = gzip.compress(body, compresslevel=1, mtime=0)
        self.send_response(response.status)
        if response.content_type is not None:
            self.send_header("Content-Type", response.content_type)
        self.send_header("Content-Length", str(len(body)))
        if compressed:
            self.send_header("Content-Encoding", "gzip")
        for name, value in response.headers:
            self.send_header(name, value)
        self.end_headers()
        self.wfile.write(body[: len(body) // 2] if truncate else body)


@contextlib.contextmanager
def running_emulator(*, demo_seed: int | None = None, **kwargs: Any) -> Iterator[Emulator]:
    """A started emulator (with the demo data when `demo_seed` is given), always stopped after."""
    with Emulator(**kwargs) as emulator:
        if demo_seed is not None:
            emulator.load_demo(seed=demo_seed)
        yield emulator
