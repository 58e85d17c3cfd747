"""The one place that talks HTTP to Braintrust: auth, requests, paging, retries and errors.

Every request goes through `BraintrustStream.fetch_json`, so retries, error messages and
secret redaction are decided once, here.
"""

from __future__ import annotations

import json
import math
import ssl
import sys
import threading
import time
from dataclasses import dataclass, replace
from datetime import timezone
from email.utils import parsedate_to_datetime
from functools import cached_property, partial
from http import HTTPStatus
from importlib.metadata import version
from typing import TYPE_CHECKING, Any, ClassVar
from urllib.parse import urlsplit

import backoff
import msgspec
import requests
from singer_sdk import RESTStream
from singer_sdk.authenticators import BearerTokenAuthenticator
from singer_sdk.exceptions import FatalAPIError, RetriableAPIError
from singer_sdk.helpers.conform import TypeConformanceLevel

from tap_braintrust.incremental import parse_xact_id
from tap_braintrust.timestamps import normalize_timestamp

if sys.version_info >= (3, 12):
    from typing import override
else:
    from typing_extensions import override

if TYPE_CHECKING:
    from collections.abc import Callable, Generator, Iterable, Mapping

    from singer_sdk import Tap
    from singer_sdk.helpers.types import Context

    from tap_braintrust.queries import RowsQuery

USER_AGENT = f"tap-braintrust/{version('tap-braintrust')}"

# Longest part of a server's error text kept in our messages: enough to read the reason.
_SERVER_TEXT_LIMIT = 500

_CHECK_CONNECTION = "check `api_key`, `api_url` and `org_name`"
_STATUS_ADVICE: dict[int, str] = {
    HTTPStatus.UNAUTHORIZED: (
        "Braintrust rejected the API key; "
        f"{_CHECK_CONNECTION} (a key works only on its own org's data plane)"
    ),
    HTTPStatus.FORBIDDEN: (
        "the API key may not read this; check that `api_key` belongs to the org in "
        "`org_name` and has read access to the configured projects"
    ),
    HTTPStatus.NOT_FOUND: (
        "not found; check `api_url` (the data plane, e.g. https://api.braintrust.dev "
        "or https://api-eu.braintrust.dev) and the configured project ids"
    ),
}

# Answers worth another try: throttling, server trouble, and (from /btql) a page too big.
_RETRIABLE_STATUSES = frozenset(
    {
        HTTPStatus.REQUEST_TIMEOUT,
        HTTPStatus.TOO_MANY_REQUESTS,
        HTTPStatus.REQUEST_ENTITY_TOO_LARGE,
    }
) | (
    frozenset(range(500, 600)) - {HTTPStatus.NOT_IMPLEMENTED, HTTPStatus.HTTP_VERSION_NOT_SUPPORTED}
)
# Answers Braintrust gives to a /btql page too big to build in time or to send.
PAGE_TOO_BIG_STATUSES = frozenset(
    {
        HTTPStatus.INTERNAL_SERVER_ERROR,
        HTTPStatus.BAD_GATEWAY,
        HTTPStatus.GATEWAY_TIMEOUT,
        HTTPStatus.REQUEST_ENTITY_TOO_LARGE,
    }
)


class BraintrustError(FatalAPIError):
    """A failure the user must act on: the message says what to do and holds no secret."""


class RequestAbandonedError(Exception):
    """A request given up between tries because its answer is no longer wanted."""


# Failures of the connection itself, retried like a 5xx.
_TRANSPORT_ERRORS = (
    requests.ConnectionError,
    requests.Timeout,
    requests.exceptions.ChunkedEncodingError,
    requests.exceptions.ContentDecodingError,
)
# TLS failures that are config problems no retry fixes (beside a certificate that fails
# verification): https to a port that does not speak TLS, no protocol or cipher in common.
# Any other TLS failure (a connection cut mid-handshake or mid-body) is retried.
_TLS_CONFIG_PROBLEMS = frozenset(
    {
        "WRONG_VERSION_NUMBER",
        "HTTP_REQUEST",
        "UNSUPPORTED_PROTOCOL",
        "NO_PROTOCOLS_AVAILABLE",
        "TLSV1_ALERT_PROTOCOL_VERSION",
        "SSLV3_ALERT_HANDSHAKE_FAILURE",
        "TLSV1_UNRECOGNIZED_NAME",
    }
)


def _tls_cause(exc: BaseException) -> ssl.SSLError | None:
    """The `ssl` module's error under requests' and urllib3's wrappers, if there is one."""
    seen: set[int] = set()
    pending: list[object] = [exc]
    while pending:
        current = pending.pop()
        if not isinstance(current, BaseException) or id(current) in seen:
            continue
        seen.add(id(current))
        if isinstance(current, ssl.SSLError):
            return current
        pending += [current.__cause__, current.__context__, getattr(current, "reason", None)]
        pending += current.args
    return None


def _describe(request: requests.PreparedRequest, subject: str | None = None) -> str:
    """Name a request by method, URL without its query string, and what it asked for.

    Query strings are left out: they are not worth the risk.
    """
    url = urlsplit(request.url or "")
    described = f"{request.method} {url.scheme}://{url.netloc}{url.path}"
    return f"{described} for {subject}" if subject else described


def redact(text: str, api_key: object) -> str:
    """`text` without the API key (a server may echo it back)."""
    return text.replace(api_key, "<api_key>") if isinstance(api_key, str) and api_key else text


_DECODER = msgspec.json.Decoder()


def decode_json(body: bytes) -> Any:
    """A JSON body, decoded several times faster than by the standard library.

    msgspec refuses a few things JSON text may hold: a lone surrogate escape (text cut
    mid-character upstream) and numbers beyond a float's range. The standard library reads
    those, so no answer it would accept is refused; ValueError if the body is not JSON.
    """
    try:
        return _DECODER.decode(body)
    except msgspec.DecodeError:
        return json.loads(body)


def retry_after_seconds(header: str | None, now: float) -> float | None:
    """The wait a `Retry-After` header asks for (seconds or an HTTP date); None if unreadable."""
    if header is None:
        return None
    text = header.strip()
    try:
        seconds = float(text)
    except ValueError:
        pass
    else:
        return seconds if 0 <= seconds < math.inf else None
    try:
        when = parsedate_to_datetime(text)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:  # an HTTP date is always GMT
        when = when.replace(tzinfo=timezone.utc)
    return max(0.0, when.timestamp() - now)


@dataclass(frozen=True)
class RetryPolicy:
    """How often and how long to retry a request that failed for a transient reason."""

    max_tries: int
    max_backoff_seconds: float
    max_retry_after_seconds: float

    @classmethod
    def from_config(cls, config: Mapping[str, Any]) -> RetryPolicy:
        """The policy the settings ask for."""
        return cls(
            max_tries=int(config["max_tries"]),
            max_backoff_seconds=float(config["max_backoff_seconds"]),
            max_retry_after_seconds=float(config["max_retry_after_seconds"]),
        )

    def wait(self, tries: int, response: requests.Response | None) -> float:
        """Seconds to wait after the `tries`-th failure.

        What the server's `Retry-After` says (capped) if that is longer, else full-jitter
        exponential backoff: a random wait up to 1, 2, 4, ... seconds, capped, so the
        retries of many clients spread out.
        """
        header = response.headers.get("Retry-After") if response is not None else None
        asked = min(retry_after_seconds(header, time.time()) or 0.0, self.max_retry_after_seconds)
        # Never less than the backoff: a zero, a date our clock already passed or a tiny cap
        # would otherwise spend every try in a burst.
        return max(asked, backoff.full_jitter(min(self.max_backoff_seconds, 2.0 ** (tries - 1))))


class Connection:
    """What every stream of a run shares: pooled HTTP connections, TLS trust and pacing.

    Pacing spaces requests (retries included) at least 60/`max_requests_per_minute` seconds
    apart, so no minute holds more than the budget and the plan's limit is not leaned on.
    """

    def __init__(self, config: Mapping[str, Any]) -> None:
        """Set up from the settings; nothing is sent yet."""
        self.session = requests.Session()
        if ca_bundle := config.get("ca_bundle"):
            self.session.verify = str(ca_bundle)
        per_minute = config.get("max_requests_per_minute")
        self._interval = 60.0 / per_minute if per_minute else 0.0
        self._next_slot = 0.0
        self._pacing = threading.Lock()

    def send(self, request: requests.PreparedRequest, timeout: float) -> requests.Response:
        """Send one request when its turn comes; redirects are not followed.

        A data plane that moved is a config error, and following a redirect could hand the
        Authorization header to another host.
        """
        if self._interval:
            with self._pacing:  # an abandoned prefetch may still be sending
                if (early := self._next_slot - time.monotonic()) > 0:
                    time.sleep(early)
                # From when this request really goes out, so an oversleep never shortens a gap.
                self._next_slot = time.monotonic() + self._interval
        return self.session.send(request, timeout=timeout, allow_redirects=False)


class BraintrustStream(RESTStream[None]):
    """Base of every stream: Bearer auth, org header, timeouts, retries and actionable errors."""

    # Records are decoded JSON, so already of JSON's types: the SDK's pass over every value
    # cost more than reading them. It also turned 0/1 into booleans where the schema says
    # boolean; Braintrust sends true/false. Fields outside the schema go in post_process.
    TYPE_CONFORMANCE_LEVEL = TypeConformanceLevel.NONE

    def __init__(self, tap: Tap, connection: Connection) -> None:
        """A stream of `tap` that sends through the run's shared `connection`."""
        self.connection = connection
        super().__init__(tap)

    @property
    @override
    def url_base(self) -> str:
        return str(self.config["api_url"]).rstrip("/")

    @property
    @override
    def requests_session(self) -> requests.Session:
        return self.connection.session

    @cached_property
    @override
    def authenticator(self) -> BearerTokenAuthenticator:
        return BearerTokenAuthenticator(token=self.config["api_key"])

    @cached_property
    @override
    def user_agent(self) -> str:
        return USER_AGENT

    @property
    @override
    def http_headers(self) -> dict[str, str]:
        headers = {"Accept": "application/json"}
        if org_name := self.config.get("org_name"):
            headers["x-bt-org-name"] = org_name
        return headers

    @property
    @override
    def timeout(self) -> int:
        return int(self.config["request_timeout"])

    @cached_property
    def retry_policy(self) -> RetryPolicy:
        """The configured retry policy."""
        return RetryPolicy.from_config(self.config)

    def prepare(
        self,
        method: str,
        path: str,
        *,
        params: Mapping[str, Any] | None = None,
        body: Any = None,
    ) -> requests.PreparedRequest:
        """An authenticated request to `path` under `api_url`."""
        return self.build_prepared_request(
            method=method,
            url=f"{self.url_base}{path}",
            params=params,
            json=body,
            headers=self.http_headers,
        )

    def fetch_json(
        self,
        prepare: Callable[[], requests.PreparedRequest],
        *,
        subject: str | None = None,
        shrink_page: Callable[[], int | None] | None = None,
        abandoned: threading.Event | None = None,
        decode: Callable[[bytes], Any] = decode_json,
    ) -> Any:
        """Send a request, retrying transient failures, and return its decoded JSON body.

        Args:
            prepare: builds the request, again for each try (the page size may change).
            subject: what is asked for (the query), named in logs and errors.
            shrink_page: halves the page size after a page-too-big failure and returns the
                new size; None when it cannot shrink further.
            abandoned: set when nobody waits for the answer any more, which ends the
                retrying (raising RequestAbandonedError).
            decode: reads the body; a ValueError means it is not JSON (retried).
        """
        max_tries = self.retry_policy.max_tries
        reason, status = "", None
        for tries in range(1, max_tries + 1):
            request = prepare()
            try:
                return self._send(request, subject, decode)
            except RetriableAPIError as exc:
                reason, response = str(exc).rstrip("."), exc.response
            except _TRANSPORT_ERRORS as exc:
                # requests' own text repeats the URL and urllib3 internals; this says what to do.
                tls_error = _tls_cause(exc)
                if isinstance(tls_error, ssl.SSLCertVerificationError) or (
                    tls_error is not None and tls_error.reason in _TLS_CONFIG_PROBLEMS
                ):
                    raise BraintrustError(self._tls_message(request, tls_error)) from exc
                reason, response = (
                    f"{_describe(request, subject)} got no usable answer ({type(exc).__name__})",
                    None,
                )
            status = response.status_code if response is not None else None
            smaller = shrink_page() if shrink_page and status in PAGE_TOO_BIG_STATUSES else None
            if status == HTTPStatus.REQUEST_ENTITY_TOO_LARGE and smaller is None:
                msg = reason
                if shrink_page is not None:
                    msg += (
                        ". Braintrust refuses to send even one row at a time; narrow the sync "
                        "(`project_ids`, `project_names`, `start_date`, or deselect the stream) "
                        "and report the row to Braintrust"
                    )
                raise BraintrustError(msg)
            if tries == max_tries:
                break
            wait = self.retry_policy.wait(tries, response)
            self.logger.warning(
                "%s;%s retrying in %.1f s (try %d of %d)",
                reason,
                f" asking for {smaller} rows per page;" if smaller else "",
                wait,
                tries + 1,
                max_tries,
            )
            if (abandoned or threading.Event()).wait(wait):  # a sleep that `abandoned` ends
                raise RequestAbandonedError(reason)
        msg = f"{reason}. Gave up after {max_tries} tries; {self._give_up_advice(status)}"
        raise BraintrustError(msg)

    def _give_up_advice(self, status: int | None) -> str:
        """What to do about a request that failed every try, by its last answer's status."""
        if status is None:
            return (
                "check `api_url` and the network, or raise `request_timeout` "
                f"({self.timeout} s) if answers are slow"
            )
        if status == HTTPStatus.TOO_MANY_REQUESTS:
            return (
                "Braintrust throttled every try: set `max_requests_per_minute` below the plan's "
                "limit, or raise `max_tries` / `max_retry_after_seconds`"
            )
        return (
            "try again later, or raise `max_tries` / `max_backoff_seconds` to ride out longer "
            "trouble"
        )

    def _send(
        self,
        request: requests.PreparedRequest,
        subject: str | None,
        decode: Callable[[bytes], Any],
    ) -> Any:
        response = self.connection.send(request, self.timeout)
        self.validate_response(response, subject)
        try:
            return decode(response.content)
        except ValueError as exc:
            msg = (
                f"{_describe(request, subject)} answered {response.status_code} with a body "
                "that is not JSON: check that `api_url` is a Braintrust data plane, not the "
                "web app's URL"
            )
            raise RetriableAPIError(msg, response) from exc

    @override
    def validate_response(self, response: requests.Response, subject: str | None = None) -> None:
        status = response.status_code
        if status < HTTPStatus.MULTIPLE_CHOICES:
            return
        message = self.response_error_message(response, subject)
        if status in _RETRIABLE_STATUSES:
            raise RetriableAPIError(message, response)
        raise BraintrustError(message)

    @override
    def response_error_message(
        self, response: requests.Response, subject: str | None = None
    ) -> str:
        status = response.status_code
        message = f"{_describe(response.request, subject)} failed with {status} {response.reason}"
        if HTTPStatus.MULTIPLE_CHOICES <= status < HTTPStatus.BAD_REQUEST:
            location = response.headers.get("Location", "?")
            message = (
                f"{message}: it redirects to {location}; set `api_url` to the data plane URL "
                "itself (redirects are not followed, so the API key stays with one host)"
            )
        else:
            if advice := _STATUS_ADVICE.get(status):
                message = f"{message}: {advice}"
            if server_text := self._server_text(response):
                message = f"{message}. Braintrust said: {server_text}"
        return self.redact(message)  # the reason and Location come from the server too

    def _tls_message(self, request: requests.PreparedRequest, error: ssl.SSLError) -> str:
        if isinstance(error, ssl.SSLCertVerificationError):
            return (
                f"{_describe(request)}: the server's TLS certificate failed verification "
                f"({error.verify_message}). Check that `api_url` names the data plane's own "
                "host; for a data plane with a private CA, set `ca_bundle` to its PEM file "
                "(verification is never turned off)"
            )
        return (
            f"{_describe(request)}: TLS failed ({error.reason or type(error).__name__}). "
            "Check that `api_url` uses https only where the data plane serves TLS, and "
            "`ca_bundle`"
        )

    def _server_text(self, response: requests.Response) -> str:
        """The server's reason (its JSON `Message` when present), shortened and redacted."""
        try:
            body = response.json()
        except ValueError:
            text = response.text
        else:
            text = str(body.get("Message", body)) if isinstance(body, dict) else str(body)
        return self.redact(text).strip()[:_SERVER_TEXT_LIMIT]

    def redact(self, text: str) -> str:
        """Remove the API key from text that leaves the tap (a server may echo it)."""
        return redact(text, self.config.get("api_key"))

    @override
    def post_process(
        self, row: dict[str, Any], context: Context | None = None
    ) -> dict[str, Any] | None:
        if unknown := row.keys() - self._schema_fields:
            # A field Braintrust added since this schema: targets would drop it anyway.
            if not unknown <= self._reported_unknown_fields:
                self._reported_unknown_fields.update(unknown)
                self.logger.warning(
                    "%s: Braintrust sent fields the schema does not have, left out: %s",
                    self.name,
                    ", ".join(sorted(unknown)),
                )
            for name in unknown:
                del row[name]
        return row

    @cached_property
    def _schema_fields(self) -> frozenset[str]:
        return frozenset(self.schema["properties"])

    @cached_property
    def _reported_unknown_fields(self) -> set[str]:
        return set()


class ObjectListingStream(BraintrustStream):
    """A `/v1/<object>` listing: full table, paged with `starting_after` until an empty page."""

    primary_keys = ("id",)
    timestamp_fields: tuple[str, ...] = ("created", "deleted_at")
    child_context_key: ClassVar[str]
    """The key the object's id takes in its row stream's context (e.g. `project_id`)."""

    def listing_filters(self, context: Context | None) -> dict[str, Any]:  # noqa: ARG002
        """Filters sent with every page of the listing (e.g. the parent project)."""
        return {}

    @override
    def get_records(self, context: Context | None) -> Iterable[dict[str, Any]]:
        params: dict[str, Any] = {
            "limit": self.config["page_size"],
            **self.listing_filters(context),
        }
        if org_name := self.config.get("org_name"):
            params["org_name"] = org_name
        seen_cursors: set[str] = set()
        with self.get_http_request_counter() as request_counter:
            request_counter.with_context(context)
            while True:
                answer = self.fetch_json(lambda: self.prepare("GET", self.path, params=params))
                objects = self._objects(answer)
                request_counter.increment()
                if not objects:
                    return
                yield from objects
                params["starting_after"] = self._next_cursor(objects, seen_cursors)

    @override
    def get_child_context(self, record: dict[str, Any], context: Context | None) -> dict[str, Any]:
        return {self.child_context_key: record["id"]}

    @override
    def post_process(
        self,
        row: dict[str, Any],
        context: Context | None = None,
    ) -> dict[str, Any] | None:
        for field in self.timestamp_fields:
            if field in row:
                row[field] = normalize_timestamp(row[field])
        return super().post_process(row, context)

    def _objects(self, body: Any) -> list[dict[str, Any]]:
        objects = body.get("objects") if isinstance(body, dict) else None
        if not isinstance(objects, list) or not all(
            isinstance(obj, dict) and isinstance(obj.get("id"), str) for obj in objects
        ):
            msg = (
                f"GET {self.url_base}{self.path} answered without a list of objects with ids "
                "under `objects`; is `api_url` a Braintrust data plane?"
            )
            raise BraintrustError(msg)
        return objects

    def _next_cursor(self, objects: list[dict[str, Any]], seen: set[str]) -> str:
        cursor = str(objects[-1]["id"])
        if cursor in seen:
            msg = (
                f"GET {self.url_base}{self.path} returned page after page ending with id "
                f"{cursor}; stopping instead of looping"
            )
            raise BraintrustError(msg)
        seen.add(cursor)
        return cursor


READ_FIELDS = frozenset({"id", "_xact_id", "created"})
"""The row fields the tap itself reads, decoded even when the others pass through as text."""
_FIELD_DEPTH = 2
"""Length of a top-level field's breadcrumb, ("properties", name); longer is a nested one."""
# Settings whose SDK features work on decoded record values.
_SETTINGS_NEEDING_VALUES = ("batch_config", "stream_maps", "flattening_enabled")


class _RawAnswer(msgspec.Struct):
    """A `/btql` answer whose rows keep every field as the JSON text Braintrust sent."""

    data: list[dict[str, msgspec.Raw]]
    cursor: str | None = None
    freshness_state: Any = None


_RAW_ANSWER = msgspec.json.Decoder(_RawAnswer)


class Prefetch:
    """One page fetched in a background thread while the caller works on the previous one.

    The thread is a daemon and `abandon()` ends its retrying, so a run that stops early
    (an error, a record limit) neither waits for nor keeps retrying a page nobody reads.
    """

    def __init__(self, fetch: Callable[[threading.Event], BtqlPage]) -> None:
        """Start fetching at once."""
        self._abandoned = threading.Event()
        self._page: BtqlPage | None = None
        self._error: BaseException | None = None
        self._thread = threading.Thread(
            target=self._run, args=(fetch,), name="tap-braintrust-prefetch", daemon=True
        )
        self._thread.start()

    def _run(self, fetch: Callable[[threading.Event], BtqlPage]) -> None:
        try:
            self._page = fetch(self._abandoned)
        except BaseException as exc:  # noqa: BLE001 - handed to the caller by result()
            self._error = exc

    def result(self) -> BtqlPage:
        """The page, once it has arrived; raises what fetching it raised."""
        self._thread.join()
        if self._error is not None:
            raise self._error
        assert self._page is not None  # noqa: S101 - the thread set one or the other
        return self._page

    def abandon(self) -> None:
        """Nobody will read the page: no further try (one already sent may still finish)."""
        self._abandoned.set()


@dataclass(frozen=True)
class BtqlPage:
    """One answer of `POST /btql`.

    Attributes:
        rows: the page's rows, possibly fewer than asked for while more remain.
        cursor: where the next page starts; None at the end.
        last_processed_xact_id: the server's `freshness_state`: every write up to this
            `_xact_id` is visible to queries (None when not reported).
    """

    rows: list[dict[str, Any]]
    cursor: str | None
    last_processed_xact_id: int | None


class PageSize:
    """Rows asked for per `/btql` page, adapting to what the server can answer.

    Braintrust fails pages of big rows with 500/502/504/413, so a failed page is asked for
    again at half the size (down to one row), and the size doubles back after `GROW_AFTER`
    pages in a row succeed, never above the configured `page_size`. The rows are the same either
    way: the cursor marks a position, not a page number.
    """

    GROW_AFTER = 10
    """Successful pages in a row before the size doubles again: while big pages keep
    failing, at most one request in 11 is spent finding out."""

    def __init__(self, configured: int) -> None:
        """Start at the configured size."""
        self.configured = self.current = configured
        self._successes = 0

    def shrink(self) -> int | None:
        """Halve the size; the new size, or None when already at one row."""
        if self.current == 1:
            return None
        self.current //= 2
        self._successes = 0
        return self.current

    def succeeded(self) -> None:
        """Count a page answered in full; grow back towards the configured size."""
        self._successes += 1
        if self.current < self.configured and self._successes >= self.GROW_AFTER:
            self.current = min(self.configured, self.current * 2)
            self._successes = 0


class BtqlStream(BraintrustStream):
    """A stream read with `POST /btql` queries, following the server cursor to the end."""

    path = "/btql"

    @cached_property
    def page_size(self) -> PageSize:
        """The stream's adaptive page size, kept from one object's rows to the next."""
        return PageSize(int(self.config["page_size"]))

    def query_pages(
        self, query: RowsQuery, context: Context | None
    ) -> Generator[BtqlPage, None, None]:
        """Every page of `query`, until a page comes without a cursor.

        Each page's successor is asked for as soon as the page arrives, so Braintrust builds
        and sends it while this page's rows are written: one request out at a time (only a
        page abandoned mid-request, when the reader stops early, may still be finishing).
        A short page is not the end (pages are cut by size); a cursor seen twice is a loop.
        """
        seen_cursors: set[str] = set()
        upcoming = Prefetch(partial(self._fetch_page, query, None))
        try:
            with self.get_http_request_counter() as request_counter:
                request_counter.with_context(context)
                while True:
                    page = upcoming.result()
                    request_counter.increment()
                    looping = page.cursor in seen_cursors
                    if page.cursor is not None and not looping:
                        seen_cursors.add(page.cursor)
                        upcoming = Prefetch(partial(self._fetch_page, query, page.cursor))
                    yield page
                    if page.cursor is None:
                        return
                    if looping:
                        msg = (
                            f"POST {self.url_base}/btql answered the same cursor twice for "
                            f"{query.describe()}; stopping instead of looping"
                        )
                        raise BraintrustError(msg)
        finally:
            upcoming.abandon()  # the reader stopped early: the next page is not wanted

    def _fetch_page(
        self, query: RowsQuery, cursor: str | None, abandoned: threading.Event
    ) -> BtqlPage:
        page: BtqlPage = self.fetch_json(
            partial(self._page_request, query, cursor),
            subject=query.describe(),
            shrink_page=self.page_size.shrink,
            abandoned=abandoned,
            decode=partial(self._decode_page, query),
        )
        self.page_size.succeeded()
        return page

    def _page_request(self, query: RowsQuery, cursor: str | None) -> requests.PreparedRequest:
        body = replace(query, limit=self.page_size.current).body(cursor)
        return self.prepare("POST", "/btql", body=body)

    @cached_property
    def passes_json_through(self) -> bool:
        """Whether row fields may go out as the JSON text Braintrust sent, never decoded.

        That skips building (and the SDK walking) every nested value, and keeps each value
        byte for byte. Only this tap's writer emits such text as it is: BATCH files, stream
        maps and flattening need decoded values, and so does deselecting a nested field.
        """
        if any(self.config.get(name) for name in _SETTINGS_NEEDING_VALUES):
            return False
        return all(selected for crumb, selected in self.mask.items() if len(crumb) > _FIELD_DEPTH)

    def _decode_page(self, query: RowsQuery, body: bytes) -> BtqlPage:
        if self.passes_json_through:
            try:
                answer = _RAW_ANSWER.decode(body)
            except msgspec.ValidationError as exc:
                raise BraintrustError(self._not_a_page(query)) from exc
            except msgspec.DecodeError:
                # JSON only the standard library reads (see decode_json), or not JSON at all
                # (ValueError, retried): decoded in full, without asking msgspec again.
                answer = json.loads(body)
            else:
                for row in answer.data:
                    for name in READ_FIELDS & row.keys():
                        row[name] = decode_json(row[name])
                return self._page(answer.data, answer.cursor, answer.freshness_state)
        else:
            answer = decode_json(body)
        data = answer.get("data") if isinstance(answer, dict) else None
        cursor = answer.get("cursor") if isinstance(answer, dict) else None
        if (
            not isinstance(data, list)
            or not all(isinstance(row, dict) for row in data)
            or not isinstance(cursor, (str, type(None)))
        ):
            raise BraintrustError(self._not_a_page(query))
        return self._page(data, cursor, answer.get("freshness_state"))

    def _not_a_page(self, query: RowsQuery) -> str:
        return (
            f"POST {self.url_base}/btql answered {query.describe()} without a `data` list "
            "of rows (and an optional string `cursor`); is `api_url` a Braintrust data plane?"
        )

    @staticmethod
    def _page(rows: list[dict[str, Any]], cursor: str | None, freshness: Any) -> BtqlPage:
        processed = (
            parse_xact_id(freshness.get("last_processed_xact_id"))
            if isinstance(freshness, dict)
            else None
        )
        return BtqlPage(rows, cursor or None, processed)
