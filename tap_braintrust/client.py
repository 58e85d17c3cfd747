"""What the tap reads from Braintrust: the base stream, object listings and `/btql` paging.

Every request goes out through the run's `Transport` (transport.py), which decides retries,
pacing, redirects and error messages; this module decides what to ask for next and what an
answer means.
"""

from __future__ import annotations

import json
import re
import sys
import threading
from dataclasses import dataclass
from datetime import datetime, timezone
from functools import cached_property, partial
from typing import TYPE_CHECKING, Any, ClassVar

import msgspec
from singer_sdk import RESTStream
from singer_sdk.authenticators import BearerTokenAuthenticator
from singer_sdk.helpers._catalog import get_selected_schema
from singer_sdk.helpers.conform import TypeConformanceLevel
from singer_sdk.singerlib import Metadata

from tap_braintrust import schemas
from tap_braintrust.deleted_objects import Delivered
from tap_braintrust.errors import BraintrustError
from tap_braintrust.incremental import parse_xact_id
from tap_braintrust.timestamps import format_timestamp, normalize_timestamp
from tap_braintrust.transport import USER_AGENT
from tap_braintrust.writer import BufferedMessageWriter

if sys.version_info >= (3, 12):
    from typing import override
else:
    from typing_extensions import override

if TYPE_CHECKING:
    from collections.abc import Callable, Generator, Iterable, Mapping

    import requests
    from singer_sdk import Tap
    from singer_sdk.helpers.types import Context
    from singer_sdk.singerlib import MetadataMapping

    from tap_braintrust.queries import PagedQuery
    from tap_braintrust.transport import Answer, Transport

_DECODER = msgspec.json.Decoder()
_ENCODER = msgspec.json.Encoder()
_SURROGATE_ESCAPE = re.compile(rb"\\u[dD][89a-fA-F]")
_LONE_SURROGATE = re.compile("[\ud800-\udfff]")  # a pair is one code point in a str


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


def json_text(value: Any) -> str | None:
    """A value as JSON text (the text Braintrust sent, when kept); null stays None.

    A lone surrogate (text cut mid-character upstream) becomes U+FFFD: its escape is JSON to
    Python but not to DuckDB or PostgreSQL, where one such value fails every JSON query.
    """
    if isinstance(value, msgspec.Raw):
        text = bytes(value)
        if not _SURROGATE_ESCAPE.search(text):
            return None if text == b"null" else text.decode()
        value = decode_json(text)
    if value is None:
        return None
    try:
        return _ENCODER.encode(value).decode()
    except UnicodeEncodeError:
        return _ENCODER.encode(without_lone_surrogates(value)).decode()


def without_lone_surrogates(value: Any) -> Any:
    """`value` with each lone surrogate in its text replaced by U+FFFD."""
    if isinstance(value, str):
        return _LONE_SURROGATE.sub("\ufffd", value)
    if isinstance(value, dict):
        return {without_lone_surrogates(k): without_lone_surrogates(v) for k, v in value.items()}
    if isinstance(value, list):
        return [without_lone_surrogates(item) for item in value]
    return value


def not_braintrust(what: str) -> str:
    """The message for an answer of the wrong shape: the URL is probably not a data plane."""
    return f"{what}; is `api_url` a Braintrust data plane?"


def refuse_repeat(position: str, seen: set[str], what: str) -> None:
    """Remember where the next page starts; a place seen before means the server is looping."""
    if position in seen:
        msg = f"{what} led to the same next page twice ({position!r}); stopping instead of looping"
        raise BraintrustError(msg)
    seen.add(position)


class BraintrustStream(RESTStream[None]):
    """Base of every stream: Bearer auth, org header and the run's shared transport."""

    # Records are decoded JSON, so already of JSON's types: the SDK's pass over every value
    # cost more than reading them. It also turned 0/1 into booleans where the schema says
    # boolean; Braintrust sends true/false. Fields outside the schema go in post_process.
    TYPE_CONFORMANCE_LEVEL = TypeConformanceLevel.NONE
    declared_schema: ClassVar[dict[str, Any]]
    """The schema of a built-in stream; `json_fields_as_text` may turn fields into text."""

    def __init__(
        self,
        tap: Tap,
        transport: Transport,
        *,
        name: str | None = None,
        schema: dict[str, Any] | None = None,
    ) -> None:
        """A stream of `tap` that sends through the run's shared `transport`.

        `name` and `schema` are for streams defined by settings; the others set `name` and
        `declared_schema` on their class.
        """
        self.transport = transport
        schema, self.json_text_fields = as_sent(
            self.declared_schema if schema is None else schema, tap.config
        )
        super().__init__(tap, name=name, schema=schema)

    @property
    @override
    def metadata(self) -> MetadataMapping:
        return schemas.deleted_at_automatic(super().metadata)

    @property
    @override
    def url_base(self) -> str:
        return str(self.config["api_url"]).rstrip("/")

    @property
    @override
    def requests_session(self) -> requests.Session:
        return self.transport.session

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
        return self.transport.timeout

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

    @override
    def post_process(
        self, row: dict[str, Any], context: Context | None = None
    ) -> dict[str, Any] | None:
        if unknown := row.keys() - self._schema_fields:
            if new := unknown - self._left_out_fields:
                self._add_fields(sorted(new))
            for name in unknown & self._left_out_fields:
                del row[name]
        if schemas.DELETED_AT in self.schema["properties"]:
            row.setdefault(schemas.DELETED_AT, None)  # live: clears an earlier mark
        for name in self.json_text_fields & row.keys():
            row[name] = json_text(row[name])
        return row

    @cached_property
    def _schema_fields(self) -> frozenset[str]:
        """The fields records carry as they come: the schema's, and the deletion marker.

        Targets know the marker themselves, so it is never taken for a new field.
        """
        return frozenset(self.schema["properties"]) | {schemas.DELETED_AT}

    @cached_property
    def _left_out_fields(self) -> set[str]:
        """New fields the catalog leaves out (see `_add_fields`), dropped from every row."""
        return set()

    @cached_property
    def _selects_listed_fields(self) -> bool:
        """Whether the catalog deselects a top-level field, so selects a list of fields.

        A field Braintrust added since the list was written is then not on it. A catalog
        that selects every field (Meltano's `stream.*`) takes new ones too.
        """
        return any(
            not selected for crumb, selected in self.mask.items() if len(crumb) == _FIELD_DEPTH
        )

    def _add_fields(self, names: list[str]) -> None:
        """Take fields Braintrust added since the schema as columns of free-form JSON.

        The stream's schema, catalog metadata and stream maps gain them, and a SCHEMA
        message goes out before the record that first has them (so before the BATCH message
        of its file), for targets to add the columns. Unless the catalog lists fields.
        """
        if self._selects_listed_fields:
            self._left_out_fields.update(names)
            self.logger.warning(
                "%s: Braintrust sent new fields, left out as the catalog selects only some of "
                "this stream's fields: %s. Select them (Meltano: `select: [%s.%s]`, or "
                "`%s.*` for every field) to load them.",
                self.name,
                ", ".join(names),
                self.name,
                names[0],
                self.name,
            )
            return
        added, as_text = as_sent(
            {"type": "object", "properties": dict.fromkeys(names, schemas.ANY_JSON)}, self.config
        )
        self.json_text_fields |= as_text
        self._schema = with_properties(self.schema, added["properties"])
        if self._input_schema is not None:
            self._input_schema = with_properties(self._input_schema, added["properties"])
        for name in names:
            crumb = ("properties", name)
            self.metadata[crumb] = Metadata(
                inclusion=Metadata.InclusionType.AVAILABLE, selected=True
            )
            self.mask[crumb] = True
        del self._schema_fields
        # Stream maps and flattening were built from the schema at the start: registered
        # again, the mapper builds them anew (with the key properties first registered).
        self._tap.mapper.register_raw_stream_schema(
            self.name,
            get_selected_schema(self.name, self.effective_schema, self.mask),
            self.stream_maps[0].raw_key_properties,
        )
        self._stream_maps = None
        # `passes_json_through` stays: it rests on settings and nested selections only, and
        # this tap's writer sends a new field's JSON text as it sends the others'.
        self.logger.info(
            "%s: Braintrust sent new fields, added to the schema as JSON%s: %s",
            self.name,
            " text" if as_text else "",
            ", ".join(names),
        )
        if self.selected:
            self._write_schema_message()


def as_sent(
    declared: dict[str, Any], config: Mapping[str, Any]
) -> tuple[dict[str, Any], frozenset[str]]:
    """A schema as records go out, and its fields sent as JSON text (`json_fields_as_text`)."""
    as_text = (
        schemas.json_text_fields(declared) if config.get("json_fields_as_text") else frozenset()
    )
    return schemas.with_json_as_text(declared, as_text), as_text


def with_properties(schema: dict[str, Any], properties: dict[str, Any]) -> dict[str, Any]:
    """A copy of `schema` with more properties (schemas may be shared: never edited)."""
    return {**schema, "properties": {**schema["properties"], **properties}}


_IDS_PER_LISTING = 100
"""Most ids one listing request names (`ids` repeated in the URL)."""


class ObjectListingStream(BraintrustStream):
    """A `/v1/<object>` listing: full table, paged with `starting_after` until an empty page.

    The objects are listed once a run and kept (they are few and small next to rows): the
    row streams read their ids from here, so a row stream never lists them again.
    """

    primary_keys = ("id",)
    timestamp_fields: tuple[str, ...] = ("created", "deleted_at")
    _marked: list[dict[str, Any]]
    """The objects this run marked deleted, set with `objects`."""
    _delivered: Delivered | None = None
    """What state keeps of the delivered objects, when this run marks deletes."""

    def listing_scopes(self) -> list[dict[str, Any]]:
        """The filters of each listing to page through; one listing, unfiltered, by default."""
        return [{}]

    def keeps(self, obj: Mapping[str, Any]) -> bool:  # noqa: ARG002
        """Whether a listed object belongs to the sync (the listing may be wider)."""
        return True

    def check(self, objects: list[dict[str, Any]]) -> None:
        """Refuse a listing that cannot be what the settings ask for."""

    @cached_property
    def objects(self) -> list[dict[str, Any]]:
        """Every object of the sync, listed on first use, each once.

        A listing paged while objects are created can show one twice; its rows are read once.
        """
        listed: dict[str, dict[str, Any]] = {}
        for scope in self.listing_scopes():
            for obj in self._listing(scope):
                if self.keeps(obj):
                    listed.setdefault(obj["id"], obj)
        objects = list(listed.values())
        self.check(objects)
        self._marked = self._gone(objects)
        return objects

    @property
    def marked_ids(self) -> frozenset[str]:
        """The objects this run marked deleted (listed first, if not yet)."""
        _ = self.objects
        return frozenset(obj["id"] for obj in self._marked)

    def still_selected(self, obj: Mapping[str, Any]) -> bool:  # noqa: ARG002
        """Whether an object an earlier run delivered (its kept fields) is still selected."""
        return True

    def _gone(self, objects: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """The delivered objects deleted since, marked; state then keeps the listed ones.

        Only when this stream is synced: its records carry the marks.
        """
        if not (self.selected and self.config.get("detect_deletes", True)):
            return []
        delivered = Delivered(self.name, self.stream_state, self.logger)
        gone = delivered.gone(objects, self.still_selected, self.config["max_deleted_share"])
        if gone:
            # Not listed is not yet gone: a listing cut short, or an object renamed out of a
            # selection by name, is still there when asked for by id.
            still = self.still_listed(obj["id"] for obj in gone)
            gone = [obj for obj in gone if obj["id"] not in still]
        self._delivered = delivered
        if not gone:
            return []
        self.logger.warning(
            "%s: marking %d deleted (no longer listed; lost access looks the same): %s",
            self.name,
            len(gone),
            ", ".join(f"{obj['id']} ({obj.get('name')!r})" for obj in gone),
        )
        marked_at = format_timestamp(datetime.now(timezone.utc))
        return [{**obj, schemas.DELETED_AT: marked_at} for obj in gone]

    @override
    def get_records(self, context: Context | None) -> Iterable[dict[str, Any]]:
        # Copies: post_process edits the records, and the row streams read these later.
        objects = self.objects
        try:
            yield from (dict(obj) for obj in (*objects, *self._marked))
            # Only once the marks are out: a run that fails before marks them next time.
            if self._delivered is not None:
                self._delivered.remember(objects, self._marked)
        finally:
            # The tap's writer holds messages until a STATE message, and none follows when
            # the state is as last written: the records go out now, not at exit.
            if isinstance(writer := self._tap.message_writer, BufferedMessageWriter):
                writer.flush()

    def still_listed(self, object_ids: Iterable[str]) -> set[str]:
        """Which of the objects a fresh listing shows.

        Those deleted since the run's listing (or whose access was lost) are gone.
        """
        wanted = sorted(set(object_ids))
        found: set[str] = set()
        for start in range(0, len(wanted), _IDS_PER_LISTING):
            chunk = wanted[start : start + _IDS_PER_LISTING]
            found.update(obj["id"] for obj in self._listing({"ids": chunk}))
        return found & set(wanted)

    def _listing(self, scope: Mapping[str, Any]) -> Generator[dict[str, Any], None, None]:
        params: dict[str, Any] = {"limit": self.config["page_size"], **scope}
        if org_name := self.config.get("org_name"):
            params["org_name"] = org_name
        seen_cursors: set[str] = set()
        what = f"GET {self.url_base}{self.path}"
        with self.get_http_request_counter() as request_counter:
            while True:
                objects = self.transport.fetch(
                    lambda: self.prepare("GET", self.path, params=params),
                    partial(self._objects_of, what),
                )
                request_counter.increment()
                if not objects:
                    return
                yield from objects
                params["starting_after"] = str(objects[-1]["id"])
                refuse_repeat(params["starting_after"], seen_cursors, what)

    @staticmethod
    def _objects_of(what: str, answer: Answer) -> list[dict[str, Any]]:
        body = decode_json(answer.body)
        objects = body.get("objects") if isinstance(body, dict) else None
        if not isinstance(objects, list) or not all(
            isinstance(obj, dict) and isinstance(obj.get("id"), str) for obj in objects
        ):
            raise BraintrustError(
                not_braintrust(
                    f"{what} answered without a list of objects with ids under `objects`"
                )
            )
        return objects

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


READ_FIELDS = frozenset(
    {
        "id",
        "_xact_id",
        "_pagination_key",
        "created",
        "project_id",
        "experiment_id",
        "dataset_id",
        "root_span_id",
        "object_id",
        "row_count",
        "first_key",
        "last_key",
    }
)
"""The row fields the tap itself reads (the object ids route rows to their state; counts
answer with the last four), decoded even when the others pass through as text."""
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

    Braintrust fails pages of big rows with 500/502/504, so a failed page is asked for
    again at half the size (down to one row), and the size doubles back after `GROW_AFTER`
    pages in a row succeed, never above the configured `page_size`. The rows are the same either
    way: a page starts from a position (the last row's keys, or the cursor), not a number.
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
        """The stream's adaptive page size, kept from one query to the next."""
        return PageSize(int(self.config["page_size"]))

    def _log_query(self, query: PagedQuery[Any], *, sized: bool = True) -> None:
        """Say what is read next; `sized`: with the rows asked for per page (not for SQL)."""
        size = f", {self.page_size.current} rows per page" if sized else ""
        self.logger.info("%s: reading %s%s", self.name, query.describe(), size)

    def query_pages(
        self, query: PagedQuery[Any], after: Any = None
    ) -> Generator[BtqlPage, None, None]:
        """Every page of `query` from `after` (None: the start), until one is the last.

        Each page's successor is asked for as soon as the page arrives, so Braintrust builds
        and sends it while this page's rows are written: one request out at a time (only a
        page abandoned mid-request, when the reader stops early, may still be finishing).
        A short page is not the end (pages are cut by size); a next page asked for twice is
        a loop.
        """
        self._say_paging(query)
        seen: set[str] = set()
        upcoming = Prefetch(partial(self._fetch_page, query, after))
        try:
            with self.get_http_request_counter() as request_counter:
                while True:
                    page = upcoming.result()
                    request_counter.increment()
                    after = query.next_after(after, page)
                    if after is None:
                        yield page
                        return
                    refuse_repeat(
                        str(after), seen, f"POST {self.url_base}/btql for {query.describe()}"
                    )
                    upcoming = Prefetch(partial(self._fetch_page, query, after))
                    yield page
        finally:
            upcoming.abandon()  # the reader stopped early: the next page is not wanted

    def _say_paging(self, query: PagedQuery[Any]) -> None:
        """Log, once per run and kind of query, how it pages."""
        self.transport.say_once(
            f"{query.kind}: {query.paging}", f"{self.name}: {query.kind} page by {query.paging}"
        )

    def _fetch_page(
        self, query: PagedQuery[Any], after: Any, abandoned: threading.Event
    ) -> BtqlPage:
        page = self.transport.fetch(
            lambda: self.prepare("POST", "/btql", body=query.body(after, self.page_size.current)),
            partial(self._decode_page, query),
            subject=f"{query.describe()} (stream {self.name})",
            shrink_page=self.page_size.shrink,
            group_of=self.group_of(query),
            abandoned=abandoned,
        )
        self.page_size.succeeded()
        return page

    def group_of(self, query: PagedQuery[Any]) -> int:  # noqa: ARG002
        """How many objects or traces the query names that could be asked for in halves."""
        return 1

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

    def _decode_page(self, query: PagedQuery[Any], answer: Answer) -> BtqlPage:
        """A page from the answer's body; the cursor from the body, else from the headers."""
        if self.passes_json_through:
            try:
                raw = _RAW_ANSWER.decode(answer.body)
            except msgspec.ValidationError as exc:
                raise BraintrustError(self._not_a_page(query)) from exc
            except msgspec.DecodeError:
                # JSON only the standard library reads (see decode_json), or not JSON at all
                # (ValueError, retried): decoded in full, without asking msgspec again.
                decoded = json.loads(answer.body)
            else:
                for row in raw.data:
                    for name in READ_FIELDS & row.keys():
                        row[name] = decode_json(row[name])
                return self._page(raw.data, raw.cursor or answer.header_cursor, raw.freshness_state)
        else:
            decoded = decode_json(answer.body)
        data = decoded.get("data") if isinstance(decoded, dict) else None
        cursor = decoded.get("cursor") if isinstance(decoded, dict) else None
        if (
            not isinstance(data, list)
            or not all(isinstance(row, dict) for row in data)
            or not isinstance(cursor, (str, type(None)))
        ):
            raise BraintrustError(self._not_a_page(query))
        return self._page(data, cursor or answer.header_cursor, decoded.get("freshness_state"))

    def _not_a_page(self, query: PagedQuery[Any]) -> str:
        return not_braintrust(
            f"POST {self.url_base}/btql answered {query.describe()} without a `data` list "
            "of rows (and an optional string `cursor`)"
        )

    @staticmethod
    def _page(rows: list[dict[str, Any]], cursor: str | None, freshness: Any) -> BtqlPage:
        processed = (
            parse_xact_id(freshness.get("last_processed_xact_id"))
            if isinstance(freshness, dict)
            else None
        )
        return BtqlPage(rows, cursor or None, processed)
