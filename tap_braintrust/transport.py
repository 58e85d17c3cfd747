"""How a request travels to Braintrust: pooled connections, TLS trust, pacing, retries, errors.

Nothing here knows what a page or a stream is: callers hand over a request builder and a
decoder, and get back the decoded answer or an actionable `BraintrustError` that holds no
secret. Every request of a run goes through one `Transport`, so the org's request budget is
paced in one place.
"""

from __future__ import annotations

import math
import ssl
import threading
import time
from collections import deque
from dataclasses import dataclass
from datetime import timezone
from email.utils import parsedate_to_datetime
from http import HTTPStatus
from importlib.metadata import version
from typing import TYPE_CHECKING, Any, Protocol, TypeVar
from urllib.parse import urlsplit

import backoff
import requests

from tap_braintrust.errors import BraintrustError, RequestAbandonedError, redact

if TYPE_CHECKING:
    import logging
    from collections.abc import Callable, Mapping

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
    {HTTPStatus.INTERNAL_SERVER_ERROR, HTTPStatus.BAD_GATEWAY, HTTPStatus.GATEWAY_TIMEOUT}
)
GROUP_TRIES = 3
"""Tries in a row that fail with a 5xx or no answer before a query naming several objects
or traces is split in two: a query too wide for the server's time budget fails the same way
at every page size."""
OVERFLOW_PATH = "/btql"
"""The one endpoint whose `303 See Other` is followed: Braintrust's large-result redirect."""
# Where the object store may keep a redirected page's cursor (the Ruby SDK reads the dash form).
_STORED_CURSOR_HEADERS = ("x-amz-meta-bt_cursor", "x-amz-meta-bt-cursor")

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

T = TypeVar("T")


class RetriableError(Exception):
    """One try failed for a reason another try may not meet; the message names it."""

    def __init__(self, message: str, response: requests.Response | None = None) -> None:
        """Keep the answer, if any: its status and `Retry-After` decide the next try."""
        super().__init__(message)
        self.response = response


@dataclass(frozen=True)
class Answer:
    """A successful answer's body, with the cursor its headers carried (if any).

    After a 303, the body comes from the object store and the cursor from either hop.
    """

    body: bytes
    header_cursor: str | None


class GroupTooBigError(Exception):
    """A query named more objects or traces than Braintrust would take: ask for halves.

    Raised on a 413 (the request body is what is too large), and after `GROUP_TRIES` tries
    in a row of a query naming several fail with a 5xx or no answer.
    """


class QueryRefusedError(BraintrustError):
    """Braintrust answered 400: it does not take the query as written."""


class AccessDeniedError(BraintrustError):
    """Braintrust answered 403: the key may not read it, or it was deleted (the same answer)."""


class PageShrinker(Protocol):
    """Something that halves the rows asked for per page; None when it cannot shrink."""

    def __call__(self) -> int | None:
        """The new page size, or None at one row."""
        ...


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


def describe(request: requests.PreparedRequest, subject: str | None = None) -> str:
    """Name a request by method, URL without its query string, and what it asked for.

    Query strings are left out: they are not worth the risk (a pre-signed URL's holds its
    signature).
    """
    url = urlsplit(request.url or "")
    described = f"{request.method} {url.scheme}://{url.netloc}{url.path}"
    return f"{described} for {subject}" if subject else described


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


class Pacer:
    """Spaces the requests to Braintrust so the org's request budget is not leaned on.

    Two budgets apply, the stricter one winning: `max_requests_per_minute` when set, and,
    once Braintrust has answered 429, the rate it allows: the requests that got through in
    the minute before the 429, spread over the time they took plus the wait the 429 asked
    for (the rest of that minute when it did not say), less a margin, and never more than
    the rate learned from an earlier 429. The budget is shared with the team's own
    queries, so the run stays under it instead of hitting it again.
    """

    WINDOW_SECONDS = 60.0
    """Braintrust counts requests over a rolling minute."""
    MARGIN = 0.9
    MIN_LEARNED_PER_MINUTE = 4.0
    """However little got through, the pace learned never falls below this."""

    def __init__(self, per_minute: int | None) -> None:
        """Pace at most `per_minute` requests a minute (None: only once throttled)."""
        self._configured = 60.0 / per_minute if per_minute else 0.0
        self.learned_per_minute: float | None = None
        self._sent: deque[float] = deque()
        self._next_slot = 0.0
        self._lock = threading.Lock()

    @property
    def interval(self) -> float:
        """Seconds between two requests' starts under the stricter budget."""
        learned = 60.0 / self.learned_per_minute if self.learned_per_minute else 0.0
        return max(self._configured, learned)

    def wait_turn(self) -> None:
        """Block until the next request may go, and count it as sent."""
        with self._lock:  # an abandoned prefetch may still be sending
            if (early := self._next_slot - time.monotonic()) > 0:
                time.sleep(early)
            now = time.monotonic()
            # From when this request really goes out, so an oversleep never shortens a gap.
            self._next_slot = now + self.interval
            self._sent.append(now)
            self._forget_before(now - self.WINDOW_SECONDS)

    def _forget_before(self, moment: float) -> None:
        """Drop the send times at or before `moment` (the caller holds the lock)."""
        while self._sent and self._sent[0] <= moment:
            self._sent.popleft()

    def throttled(self, retry_after: float | None) -> float | None:
        """Learn from a 429 to the last request sent; the requests a minute allowed from now.

        A 429 to the first request of a minute says the budget is spent, not how big it is:
        only the wait it asks for applies, and nothing is learned (None).
        """
        with self._lock:
            now = time.monotonic()
            if self._sent:
                self._sent.pop()  # the last one sent was refused: it did not use the budget
            self._forget_before(now - self.WINDOW_SECONDS)
            got_through = self._sent
            if got_through:
                spent = now - got_through[0]
                wait = retry_after if retry_after is not None else self.WINDOW_SECONDS - spent
                allowed = self.MARGIN * len(got_through) * 60.0 / max(spent + wait, 1e-3)
                if self.learned_per_minute is not None:
                    allowed = min(allowed, self.learned_per_minute)
                self.learned_per_minute = max(self.MIN_LEARNED_PER_MINUTE, allowed)
                self._next_slot = max(self._next_slot, now + self.interval)
            return self.learned_per_minute


class Transport:
    """What every stream of a run shares: pooled HTTP connections, TLS trust and pacing.

    Redirects are refused, except Braintrust's 303 from `/btql` to a pre-signed object-store
    URL, fetched without the Authorization header: a data plane that moved is a config
    error, and the API key must never go to another host.
    """

    def __init__(
        self,
        config: Mapping[str, Any],
        logger: logging.Logger,
    ) -> None:
        """Set up from the settings; nothing is sent yet."""
        self.session = requests.Session()
        if ca_bundle := config.get("ca_bundle"):
            self.session.verify = str(ca_bundle)
        self.timeout = int(config["request_timeout"])
        self.retry_policy = RetryPolicy.from_config(config)
        self.pacer = Pacer(config.get("max_requests_per_minute"))
        self.logger = logger
        self._api_key = config.get("api_key")
        self._https_only_redirects = urlsplit(str(config.get("api_url", ""))).scheme == "https"
        self._said: set[str] = set()

    def say_once(self, key: str, message: str) -> None:
        """Log `message` at INFO the first time `key` comes up in the run."""
        if key not in self._said:
            self._said.add(key)
            self.logger.info("%s", message)

    def redact(self, text: str) -> str:
        """Remove the API key from text that leaves the tap (a server may echo it)."""
        return redact(text, self._api_key)

    def fetch(  # noqa: PLR0913 - each says what the request may do on failure
        self,
        prepare: Callable[[], requests.PreparedRequest],
        decode: Callable[[Answer], T],
        *,
        subject: str | None = None,
        shrink_page: PageShrinker | None = None,
        group_of: int = 1,
        abandoned: threading.Event | None = None,
    ) -> T:
        """Send a request, retrying transient failures, and return its decoded answer.

        Args:
            prepare: builds the request, again for each try (the page size may change).
            decode: reads the answer; a ValueError means it is not JSON (retried).
            subject: what is asked for (the query), named in logs and errors.
            shrink_page: halves the page size after a page-too-big failure and returns the
                new size; None when it cannot shrink further.
            group_of: how many objects or traces the request names that could be asked
                for in halves (GroupTooBigError); 1: it cannot be split.
            abandoned: set when nobody waits for the answer any more, which ends the
                retrying (raising RequestAbandonedError).
        """
        max_tries = self.retry_policy.max_tries
        reason, status, server_failures = "", None, 0
        for tries in range(1, max_tries + 1):
            request = prepare()
            try:
                return self._try(request, subject, decode)
            except RetriableError as exc:
                reason, response = str(exc).rstrip("."), exc.response
            except _TRANSPORT_ERRORS as exc:
                # requests' own text repeats the URL and urllib3 internals; this says what to do.
                # The request that failed may be the object-store hop of a redirect.
                failed = (
                    exc.request if isinstance(exc.request, requests.PreparedRequest) else request
                )
                tls_error = _tls_cause(exc)
                if isinstance(tls_error, ssl.SSLCertVerificationError) or (
                    tls_error is not None and tls_error.reason in _TLS_CONFIG_PROBLEMS
                ):
                    raise BraintrustError(self._tls_message(failed, tls_error)) from exc
                reason = f"{describe(failed, subject)} got no usable answer ({type(exc).__name__})"
                response = None
            status = response.status_code if response is not None else None
            if status == HTTPStatus.REQUEST_ENTITY_TOO_LARGE:
                if group_of > 1:
                    raise GroupTooBigError(reason)
                msg = (
                    f"{reason}. Braintrust refuses the request itself; narrow the sync "
                    "(`project_ids`, `project_names`, a shorter `filter`) and report it to "
                    "Braintrust"
                )
                raise BraintrustError(msg)
            smaller = shrink_page() if shrink_page and status in PAGE_TOO_BIG_STATUSES else None
            # Only the server failing counts here: a 429 says the org is busy, not the query.
            server_failures = server_failures + 1 if status is None or status >= 500 else 0  # noqa: PLR2004
            if group_of > 1 and server_failures >= GROUP_TRIES:
                raise GroupTooBigError(reason)
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

    def _try(
        self,
        request: requests.PreparedRequest,
        subject: str | None,
        decode: Callable[[Answer], T],
    ) -> T:
        """One try: the request, and the object-store hop if Braintrust redirects to one."""
        self.pacer.wait_turn()
        response = self.session.send(request, timeout=self.timeout, allow_redirects=False)
        if response.status_code == HTTPStatus.TOO_MANY_REQUESTS:
            asked = retry_after_seconds(response.headers.get("Retry-After"), time.time())
            if asked is not None:
                asked = min(asked, self.retry_policy.max_retry_after_seconds)
            if (allowed := self.pacer.throttled(asked)) is not None:
                self.logger.info(
                    "Braintrust throttled a request: at most %.1f requests a minute from now on",
                    allowed,
                )
        header_cursor = response.headers.get("x-bt-cursor")
        if response.status_code == HTTPStatus.SEE_OTHER and _is_overflow(request):
            response = self._overflow(request, response, subject)
            header_cursor = header_cursor or next(
                (response.headers[h] for h in _STORED_CURSOR_HEADERS if h in response.headers),
                None,
            )
        else:
            self._check(response, subject)
        try:
            return decode(Answer(response.content, header_cursor or None))
        except ValueError as exc:
            msg = (
                f"{describe(response.request, subject)} answered {response.status_code} with a "
                "body that is not JSON: check that `api_url` is a Braintrust data plane, not the "
                "web app's URL"
            )
            raise RetriableError(msg, response) from exc

    def _overflow(
        self, request: requests.PreparedRequest, redirect: requests.Response, subject: str | None
    ) -> requests.Response:
        """The stored answer a 303 points at, fetched with none of the request's headers.

        Any failure there (timeout, 5xx, an expired URL's 403) is retried by asking
        Braintrust for the page again, which mints a fresh URL.
        """
        location = redirect.headers.get("Location", "")
        target = urlsplit(location)
        if (
            not target.netloc
            or target.scheme not in {"http", "https"}
            or (self._https_only_redirects and target.scheme != "https")
        ):
            msg = (
                f"{describe(request, subject)} redirected its large answer to "
                f"{target.scheme or '?'}://{target.netloc or '?'}, which is not an "
                f"{'https' if self._https_only_redirects else 'http(s)'} URL; not followed"
            )
            raise BraintrustError(self.redact(msg))
        stored = requests.Request(
            "GET", location, headers={"User-Agent": USER_AGENT, "Accept": "application/json"}
        ).prepare()
        response = self.session.send(stored, timeout=self.timeout, allow_redirects=False)
        if response.status_code >= HTTPStatus.MULTIPLE_CHOICES:
            msg = (
                f"{describe(request, subject)} was redirected to object storage, which "
                f"answered {response.status_code} {response.reason}"
            )
            if server_text := self._server_text(response):
                msg = f"{msg} ({server_text})"
            raise RetriableError(msg, response)
        return response

    def _check(self, response: requests.Response, subject: str | None) -> None:
        """Raise for an answer that is not a success: retriable or fatal, reason in the text."""
        status = response.status_code
        if status < HTTPStatus.MULTIPLE_CHOICES:
            return
        message = self._error_message(response, subject)
        if status in _RETRIABLE_STATUSES:
            raise RetriableError(message, response)
        if status == HTTPStatus.BAD_REQUEST:
            raise QueryRefusedError(message)
        if status == HTTPStatus.FORBIDDEN:
            raise AccessDeniedError(message)
        raise BraintrustError(message)

    def _error_message(self, response: requests.Response, subject: str | None) -> str:
        status = response.status_code
        message = f"{describe(response.request, subject)} failed with {status} {response.reason}"
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
        where = describe(request)
        if isinstance(error, ssl.SSLCertVerificationError):
            return (
                f"{where}: the server's TLS certificate failed verification "
                f"({error.verify_message}). Check that `api_url` names the data plane's own "
                "host; for a data plane with a private CA, set `ca_bundle` to its PEM file "
                "(verification is never turned off)"
            )
        return (
            f"{where}: TLS failed ({error.reason or type(error).__name__}). "
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


def _is_overflow(request: requests.PreparedRequest) -> bool:
    return request.method == "POST" and urlsplit(request.url or "").path.endswith(OVERFLOW_PATH)
