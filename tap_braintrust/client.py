"""The one place that talks HTTP to Braintrust: auth, requests, paging, retries and errors.

Every request goes through `BraintrustStream.fetch_json`, so retries, error messages and
secret redaction are decided once, here.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from functools import cached_property
from http import HTTPStatus
from importlib.metadata import version
from typing import TYPE_CHECKING, Any, ClassVar, cast
from urllib.parse import urlsplit

import requests
from singer_sdk import RESTStream
from singer_sdk.authenticators import BearerTokenAuthenticator
from singer_sdk.exceptions import FatalAPIError, RetriableAPIError

from tap_braintrust.incremental import parse_xact_id
from tap_braintrust.timestamps import normalize_timestamp

if sys.version_info >= (3, 12):
    from typing import override
else:
    from typing_extensions import override

if TYPE_CHECKING:
    from collections.abc import Callable, Iterable, Iterator, Mapping

    from backoff.types import Details
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


class BraintrustError(FatalAPIError):
    """A failure the user must act on: the message says what to do and holds no secret."""


# Failures of the connection itself, retried by the SDK's decorator like a 5xx.
_TRANSPORT_ERRORS = (
    requests.ConnectionError,
    requests.Timeout,
    requests.exceptions.ChunkedEncodingError,
    requests.exceptions.ContentDecodingError,
)


def _describe(request: requests.PreparedRequest) -> str:
    """Name a request by method and URL without its query: query strings are not worth the risk."""
    url = urlsplit(request.url or "")
    return f"{request.method} {url.scheme}://{url.netloc}{url.path}"


class BraintrustStream(RESTStream[None]):
    """Base of every stream: Bearer auth, org header, timeouts and actionable errors."""

    @property
    @override
    def url_base(self) -> str:
        return str(self.config["api_url"]).rstrip("/")

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

    def fetch_json(
        self,
        method: str,
        path: str,
        *,
        params: Mapping[str, Any] | None = None,
        body: Any = None,
    ) -> Any:
        """Send one request, retrying transient failures, and return its decoded JSON body."""
        prepared = self.build_prepared_request(
            method=method,
            url=f"{self.url_base}{path}",
            params=params,
            json=body,
            headers=self.http_headers,
        )
        try:
            return self._send_with_retries(prepared)
        except _TRANSPORT_ERRORS as exc:
            # requests' own text repeats the full URL and urllib3 internals; this says what to do.
            msg = (
                f"{_describe(prepared)} got no usable answer in {self.backoff_max_tries()} tries"
                f" ({type(exc).__name__}); check `api_url` and "
                f"the network, or raise `request_timeout` ({self.timeout} s) if answers are slow"
            )
            raise BraintrustError(msg) from exc

    @cached_property
    def _send_with_retries(self) -> Callable[[requests.PreparedRequest], Any]:
        # The SDK's retry decorator (and its overridable backoff hooks) wraps any callable;
        # ours returns decoded JSON so that a truncated body is retried like a 5xx.
        decorator = cast(
            "Callable[[Callable[..., Any]], Callable[..., Any]]", self.request_decorator
        )
        return decorator(self._send)

    def _send(self, prepared: requests.PreparedRequest) -> Any:
        # Redirects are not followed: a data plane that moved is a config error, and
        # following one could hand the Authorization header to another host.
        response = self.requests_session.send(prepared, timeout=self.timeout, allow_redirects=False)
        self.validate_response(response)
        try:
            return response.json()
        except ValueError as exc:
            msg = (
                f"{_describe(prepared)} answered {response.status_code} with a body that is not "
                "JSON; is `api_url` a Braintrust data plane (not the web app's URL)?"
            )
            raise RetriableAPIError(msg, response) from exc

    @override
    def backoff_handler(self, details: Details) -> None:
        # One readable line per retry; the SDK's default prints bound methods and arguments.
        (prepared,) = details["args"]
        exc = details.get("exception")
        reason = str(exc) if isinstance(exc, RetriableAPIError) else type(exc).__name__
        self.logger.warning(
            "%s: %s; retrying in %.1f s (try %d of %d)",
            _describe(prepared),
            reason,
            details.get("wait", 0.0),
            details["tries"],
            self.backoff_max_tries(),
        )

    @override
    def validate_response(self, response: requests.Response) -> None:
        status = response.status_code
        if status < HTTPStatus.MULTIPLE_CHOICES:
            return
        if status == HTTPStatus.TOO_MANY_REQUESTS or status >= HTTPStatus.INTERNAL_SERVER_ERROR:
            raise RetriableAPIError(self.response_error_message(response), response)
        raise BraintrustError(self.response_error_message(response))

    @override
    def response_error_message(self, response: requests.Response) -> str:
        status = response.status_code
        message = f"{_describe(response.request)} failed with {status} {response.reason}"
        if HTTPStatus.MULTIPLE_CHOICES <= status < HTTPStatus.BAD_REQUEST:
            location = response.headers.get("Location", "?")
            return (
                f"{message}: it redirects to {location}; set `api_url` to the data plane URL "
                "itself (redirects are not followed, so the API key stays with one host)"
            )
        if advice := _STATUS_ADVICE.get(status):
            message = f"{message}: {advice}"
        if server_text := self._server_text(response):
            message = f"{message}. Braintrust said: {server_text}"
        return message

    def _server_text(self, response: requests.Response) -> str:
        """The server's reason (its JSON `Message` when present), shortened and redacted."""
        try:
            body = response.json()
        except ValueError:
            text = response.text
        else:
            text = str(body.get("Message", body)) if isinstance(body, dict) else str(body)
        return self.redact(text.strip()[:_SERVER_TEXT_LIMIT])

    def redact(self, text: str) -> str:
        """Remove the API key from text that leaves the tap (a server may echo it)."""
        api_key = str(self.config.get("api_key") or "")
        return text.replace(api_key, "<api_key>") if api_key else text


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
                objects = self._objects(self.fetch_json("GET", self.path, params=params))
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
        return row

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


class BtqlStream(BraintrustStream):
    """A stream read with `POST /btql` queries, following the server cursor to the end."""

    path = "/btql"

    def query_pages(self, query: RowsQuery, context: Context | None) -> Iterator[BtqlPage]:
        """Every page of `query`, until a page comes without a cursor.

        A short page is not the end (pages are cut by size); a cursor seen twice is a loop.
        """
        seen_cursors: set[str] = set()
        cursor: str | None = None
        with self.get_http_request_counter() as request_counter:
            request_counter.with_context(context)
            while True:
                answer = self.fetch_json("POST", "/btql", body=query.body(cursor))
                request_counter.increment()
                page = self._page(answer, query)
                yield page
                if page.cursor is None:
                    return
                if page.cursor in seen_cursors:
                    msg = (
                        f"POST {self.url_base}/btql answered the same cursor twice for "
                        f"{query.describe()}; stopping instead of looping"
                    )
                    raise BraintrustError(msg)
                seen_cursors.add(page.cursor)
                cursor = page.cursor

    def _page(self, answer: Any, query: RowsQuery) -> BtqlPage:
        data = answer.get("data") if isinstance(answer, dict) else None
        cursor = answer.get("cursor") if isinstance(answer, dict) else None
        if (
            not isinstance(data, list)
            or not all(isinstance(row, dict) for row in data)
            or not isinstance(cursor, (str, type(None)))
        ):
            msg = (
                f"POST {self.url_base}/btql answered {query.describe()} without a `data` list "
                "of rows (and an optional string `cursor`); is `api_url` a Braintrust data plane?"
            )
            raise BraintrustError(msg)
        freshness = answer.get("freshness_state")
        processed = (
            parse_xact_id(freshness.get("last_processed_xact_id"))
            if isinstance(freshness, dict)
            else None
        )
        return BtqlPage(data, cursor or None, processed)
