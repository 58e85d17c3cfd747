"""What each stream is: its endpoint, schema, listing scope and how its rows are read."""

from __future__ import annotations

import itertools
import sys
import time
from dataclasses import dataclass, replace
from datetime import datetime, timezone
from functools import cached_property
from typing import TYPE_CHECKING, Any

from tap_braintrust import schemas
from tap_braintrust.client import BtqlStream, ObjectListingStream
from tap_braintrust.custom import ReportStreamSpec, RowStreamSpec
from tap_braintrust.deleted_objects import DELIVERED_KEY, check_org
from tap_braintrust.deletes import DeleteFinder
from tap_braintrust.errors import BraintrustError
from tap_braintrust.incremental import (
    WATERMARK_KEY,
    OutOfOrderError,
    ReadProgress,
    lookback,
    parse_xact_id,
    shared_starts,
)
from tap_braintrust.queries import (
    FALLBACK_PREVIEW_LENGTH,
    FULL_PREVIEWS,
    MAX_IDS_PER_LIST,
    MAX_PAGE_SIZE,
    OBJECT_ID_FIELD,
    ChangePosition,
    CountQuery,
    FieldPath,
    ObjectBound,
    ReportQuery,
    RowSource,
    RowsQuery,
    SummaryQuery,
    TraceSpansQuery,
    pagination_key_of,
    root_of,
    row_keys,
)
from tap_braintrust.timestamps import format_timestamp, normalize_timestamp
from tap_braintrust.transport import AccessDeniedError, GroupTooBigError, QueryRefusedError

if sys.version_info >= (3, 12):
    from typing import override
else:
    from typing_extensions import override

if TYPE_CHECKING:
    from collections.abc import Callable, Iterable, Iterator, Mapping

    from singer_sdk import Tap
    from singer_sdk.helpers.types import Context, Record

    from tap_braintrust.custom import CustomStreamSpec
    from tap_braintrust.queries import PagedQuery
    from tap_braintrust.transport import Transport


@dataclass(frozen=True)
class ProjectSelection:
    """The projects named by `project_ids` and `project_names`; both empty means all."""

    ids: frozenset[str]
    names: frozenset[str]

    @classmethod
    def from_config(cls, config: Mapping[str, Any]) -> ProjectSelection:
        """Read the selection settings."""
        return cls(
            ids=frozenset(config.get("project_ids") or ()),
            names=frozenset(config.get("project_names") or ()),
        )

    @property
    def everything(self) -> bool:
        """Whether no project was named, so every project is selected."""
        return not self.ids and not self.names

    def includes(self, project: Mapping[str, Any]) -> bool:
        """Whether a project is selected (by id or by name)."""
        return self.everything or project["id"] in self.ids or project.get("name") in self.names

    def missing(self, projects: Iterable[Mapping[str, Any]]) -> list[str]:
        """The configured ids and names that none of `projects` matched."""
        found_ids = {project["id"] for project in projects}
        found_names = {project.get("name") for project in projects}
        return [f"id {value!r}" for value in sorted(self.ids - found_ids)] + [
            f"name {value!r}" for value in sorted(self.names - found_names)
        ]


class ProjectsStream(ObjectListingStream):
    """Projects, narrowed to `project_ids` / `project_names` when either is set."""

    name = "projects"
    path = "/v1/project"
    declared_schema = schemas.with_deleted_at(schemas.PROJECT)

    @cached_property
    def selection(self) -> ProjectSelection:
        """The configured project selection."""
        return ProjectSelection.from_config(self.config)

    @override
    def listing_scopes(self) -> list[dict[str, Any]]:
        selection = self.selection
        # Ids narrow the listing server-side; names are matched here (the project
        # listing has no name filter), so any name means listing everything.
        return [{"ids": sorted(selection.ids)} if selection.ids and not selection.names else {}]

    @override
    def keeps(self, obj: Mapping[str, Any]) -> bool:
        return self.selection.includes(obj)

    @override
    def still_selected(self, obj: Mapping[str, Any]) -> bool:
        return self.selection.includes(obj)

    @override
    def check(self, objects: list[dict[str, Any]]) -> None:
        # Projects are listed before anything else is read, so a misnamed project fails the
        # run before any experiment or dataset of the others is emitted.
        delivered = self.stream_state.get(DELIVERED_KEY)
        if self.config.get("detect_deletes", True) and isinstance(delivered, dict) and delivered:
            # The org from any project the key sees (the selection may list none of them).
            seen = objects or list(itertools.islice(self._listing({}), 1))
            if not seen:
                msg = (
                    "The API key sees no project at all, where earlier runs delivered "
                    f"{len(delivered)}: it lost its access, or belongs to another org. Check "
                    "`api_key` and `org_name`; nothing was marked deleted"
                )
                raise BraintrustError(msg)
            check_org(self.stream_state, seen)
            # A configured project an earlier run delivered, and that no listing by id shows
            # any more, is gone (marked), not misconfigured.
            if missing := self.selection.missing(objects):
                named = [
                    {**fields, "id": project_id}
                    for project_id, fields in delivered.items()
                    if isinstance(fields, dict)
                    and (
                        project_id in self.selection.ids
                        or fields.get("name") in self.selection.names
                    )
                ]
                listed = self.still_listed(project["id"] for project in named) if named else set()
                objects = [*objects, *(p for p in named if p["id"] not in listed)]
        elif self.config.get("detect_deletes", True):
            check_org(self.stream_state, objects)
        if missing := self.selection.missing(objects):
            msg = (
                f"Configured projects not found in Braintrust: {', '.join(missing)}. "
                "Check `project_ids` / `project_names`, and that `api_key` and `org_name` "
                "point at the org that owns them."
            )
            raise BraintrustError(msg)


class ProjectObjectStream(ObjectListingStream):
    """Objects that live in projects: listed org-wide when every project is selected.

    One org-wide listing costs a request per `page_size` objects; listing per project would
    cost at least one request per project. When projects are named, only theirs are listed.
    Objects of projects the project listing does not show are left out either way.
    """

    def __init__(self, tap: Tap, transport: Transport, projects: ProjectsStream) -> None:
        """A listing narrowed by `projects`' selection."""
        self.projects = projects
        super().__init__(tap, transport)

    @override
    def listing_scopes(self) -> list[dict[str, Any]]:
        # The SDK syncs streams by name, so whichever stream comes first lists the projects
        # first: a wrong key, URL or project name fails on that one request.
        projects = self.projects.objects
        if not projects:
            return []
        if self.projects.selection.everything:
            return [{}]
        return [{"project_id": project["id"]} for project in projects]

    @override
    def keeps(self, obj: Mapping[str, Any]) -> bool:
        return obj.get("project_id") in self._project_ids

    @override
    def still_selected(self, obj: Mapping[str, Any]) -> bool:
        # A deleted project's experiments and datasets are gone with it.
        project_id = obj.get("project_id")
        return project_id in self._project_ids or project_id in self.projects.marked_ids

    @cached_property
    def _project_ids(self) -> frozenset[str]:
        return frozenset(project["id"] for project in self.projects.objects)


class ExperimentsStream(ProjectObjectStream):
    """Experiments (eval runs) of the selected projects."""

    name = "experiments"
    path = "/v1/experiment"
    declared_schema = schemas.with_deleted_at(schemas.EXPERIMENT)


class DatasetsStream(ProjectObjectStream):
    """Datasets of the selected projects."""

    name = "datasets"
    path = "/v1/dataset"
    declared_schema = schemas.with_deleted_at(schemas.DATASET)


@dataclass(frozen=True)
class _ObjectRead:
    """One object's part in a read: where its rows start, and its state partition."""

    bound: ObjectBound
    watermark: int
    """Its watermark from the previous run (0: none)."""
    state: dict[str, Any]


PAGING_KEY: FieldPath = ("_pagination_key",)
"""The row field keyset paging goes on from, read even when not selected."""
_Finished = tuple[list[_ObjectRead], ReadProgress]
"""A part of a read that ended: its objects, and how far it got."""


class EventStream(BtqlStream):
    """The rows of every listed object of one kind, incremental on `created`.

    `created` is the replication key and bookmark, but it is the logging client's clock and
    a merge (a human score, a corrected `expected`, a tag, a comment) keeps it. So rows are
    read by `_xact_id`, which every write moves, after the watermark each object's state
    partition keeps beside its bookmark (see incremental.py).

    Requests are the scarce resource (about 20 `/btql` a minute per org), so one query reads
    up to `objects_per_query` objects that start from about the same watermark, and an
    object with nothing new costs nothing of its own. The state stays one partition per
    object, keyed by its id, as when each object was read alone.
    """

    source: RowSource
    replication_key = "created"
    is_sorted = False
    row_filter: str | None = None
    """A BTQL expression every row read must also match (custom streams)."""
    columns: tuple[FieldPath, ...] | None = None
    """The fields read (None: every field)."""
    object_ids: frozenset[str] | None = None
    """Only these of the listed objects (None: all of them)."""
    finds_deletes = False
    """Whether `detect_deletes` looks for this stream's deleted rows (deletes.py)."""

    def __init__(
        self,
        tap: Tap,
        transport: Transport,
        objects: ObjectListingStream,
        *,
        name: str | None = None,
        schema: dict[str, Any] | None = None,
    ) -> None:
        """The rows of the objects `objects` lists."""
        self.listing = objects
        self._reads: dict[str, _ObjectRead] = {}
        self._signpost = ""
        self._deletes: DeleteFinder | None = None
        super().__init__(tap, transport, name=name, schema=schema)

    @property
    def parent_key(self) -> str:
        """The object's id field: the state partition's key and a record field."""
        return OBJECT_ID_FIELD[self.source]

    @property
    @override
    def partitions(self) -> list[dict[str, Any]] | None:
        # One sync reads every object; the SDK would otherwise sync once per state partition.
        return None

    @override
    def get_replication_key_signpost(self, context: Context | None = None) -> None:
        # The SDK would write it once for the whole stream; each object's bookmark is
        # capped at the sync's start in post_process instead.
        return None

    @override
    def _increment_stream_state(
        self, latest_record: Record, *, context: Context | None = None
    ) -> None:
        # Bookmarks are kept per object (post_process); the SDK's would be one for the
        # stream, the latest `created` of any object, which means nothing.
        return

    @override
    def get_records(self, context: Context | None) -> Iterable[dict[str, Any]]:
        # Fixed-width, so every bookmark compares correctly as a string.
        self._signpost = format_timestamp(datetime.now(timezone.utc))
        self._forget_marked()
        partitions = {
            partition["context"].get(self.parent_key): partition
            for partition in self.stream_state.get("partitions", [])
            if isinstance(partition.get("context"), dict)
        }
        reads = [
            self._object_read(object_id, partitions.get(object_id))
            for object_id in self._object_ids()
        ]
        reads = self._sharing_starts(reads)
        self._reads = {read.bound.object_id: read for read in reads}
        self._group_size = int(self.config["objects_per_query"])
        self._deletes = self._delete_finder(reads)
        # Objects from different starts go in different queries: a filter on the object id
        # column, which one query would need, is not a form Braintrust is known to take.
        for _, alike in itertools.groupby(reads, key=lambda read: read.bound.start):
            same_start = list(alike)
            while same_start:
                group, same_start = same_start[: self._group_size], same_start[self._group_size :]
                yield from self._read(group)
        if self._deletes is not None:
            yield from self._deleted_rows(self._deletes)

    def _forget_marked(self) -> None:
        """Drop the state partitions of objects this run marked deleted: never read again."""
        marked = self.listing.marked_ids
        if marked and "partitions" in self.stream_state:
            self.stream_state["partitions"] = [
                partition
                for partition in self.stream_state["partitions"]
                if not (
                    isinstance(partition.get("context"), dict)
                    and partition["context"].get(self.parent_key) in marked
                )
            ]

    def _delete_finder(self, reads: list[_ObjectRead]) -> DeleteFinder | None:
        """What finds this run's deleted rows, when this stream looks for them."""
        if not (self.finds_deletes and self.config.get("detect_deletes", True)):
            return None
        start_date = self.config.get("start_date")
        finder = DeleteFinder(
            self, self.source, normalize_timestamp(start_date) if start_date else None
        )
        created = {obj["id"]: obj.get("created") for obj in self.listing.objects}
        for read in reads:
            object_id = read.bound.object_id
            finder.track(object_id, read.state, created.get(object_id))
        return finder

    def _deleted_rows(self, finder: DeleteFinder) -> Iterator[dict[str, Any]]:
        """The rows deleted since the last run, marked, each as last read."""
        marked_at = format_timestamp(datetime.now(timezone.utc))
        watermarks = {
            object_id: parse_xact_id(read.state.get(WATERMARK_KEY)) or 0
            for object_id, read in self._reads.items()
        }
        moved = {o for o, read in self._reads.items() if watermarks[o] != read.watermark}
        for row in finder.deleted(watermarks, moved):
            row[schemas.DELETED_AT] = marked_at
            yield row
        self._write_state_message()

    def still_listed(self, object_ids: Iterable[str]) -> set[str]:
        """Which of the objects a fresh listing still shows."""
        return self.listing.still_listed(object_ids)

    @staticmethod
    def _sharing_starts(reads: list[_ObjectRead]) -> list[_ObjectRead]:
        """The reads in order of start, those close together moved to the lowest of theirs.

        See `shared_starts`: rows read again rather than a query more. Each read keeps its
        own watermark, which the read never lowers.
        """
        lowest = shared_starts([read.bound.after_xact_id for read in reads])
        moved = [
            replace(read, bound=replace(read.bound, after_xact_id=lowest[read.bound.after_xact_id]))
            for read in reads
        ]
        return sorted(moved, key=lambda read: (read.bound.start, read.bound.object_id))

    def _query(self, group: list[_ObjectRead]) -> RowsQuery:
        return RowsQuery(
            self.source, tuple(read.bound for read in group), self.row_filter, self._read_columns
        )

    @cached_property
    def _read_columns(self) -> tuple[FieldPath, ...] | None:
        """The columns, and `_pagination_key`, which paging needs (left out of records)."""
        if self.columns is None or PAGING_KEY in self.columns:
            return self.columns
        return (*self.columns, PAGING_KEY)

    @override
    def group_of(self, query: PagedQuery[Any]) -> int:
        if isinstance(query, RowsQuery):
            return len(query.objects)
        if isinstance(query, CountQuery):
            return len(query.object_ids)
        if isinstance(query, (TraceSpansQuery, SummaryQuery)) and query.root_span_ids:
            return len(query.root_span_ids)
        return 1

    def _read(self, group: list[_ObjectRead]) -> Iterable[dict[str, Any]]:
        """Every row of the group's query, each object's watermark moving with the read."""
        finished: list[_Finished] = []
        for read, row, progress in self._changes(self._query, group, finished):
            read.state[WATERMARK_KEY] = str(progress.watermark(read.watermark))
            if self._deletes is not None:
                self._deletes.saw(read.bound.object_id, row, row_keys(row)[0])
            yield row
        for part, progress in finished:
            self._settle(part, progress)

    def _changes(
        self,
        query_for: Callable[[list[_ObjectRead]], RowsQuery],
        group: list[_ObjectRead],
        finished: list[_Finished],
        progress: ReadProgress | None = None,
    ) -> Iterator[tuple[_ObjectRead, dict[str, Any], ReadProgress]]:
        """Each row of the group's changes in `_xact_id` order, with its object's read.

        Each row comes with the progress of the query it came from. A query Braintrust finds
        too wide goes on as two queries of half the objects each, from the row it got to
        (`progress`); every part whose read ended goes into `finished` with its progress.
        """
        progress = progress or ReadProgress()
        query = query_for(group)
        self._log_query(query)
        in_query = {read.bound.object_id: read for read in group}
        position = progress.position
        after = (
            None
            if position is None
            else ChangePosition(*position, query.end(progress.visible_xact_id))
        )
        try:
            for page in self.query_pages(query, after):
                progress.visible_through(page.last_processed_xact_id)
                for row in page.rows:
                    read = self._routed(row, in_query)
                    self._advance(progress, row, query)
                    yield read, row, progress
        except GroupTooBigError as exc:
            yield from self._in_halves(query_for, group, finished, progress, str(exc))
            return
        except (AccessDeniedError, QueryRefusedError):
            # Braintrust answers so for a query naming an object deleted since the listing.
            gone = set(in_query) - self.still_listed(in_query)
            if not gone:
                raise
            self.say_gone(gone, "reading the rest without it")
            rest = [read for read in group if read.bound.object_id not in gone]
            if rest:
                yield from self._changes(query_for, rest, finished, progress.resumed())
            return
        progress.finish()
        finished.append((group, progress))

    def say_gone(self, gone: set[str], meanwhile: str) -> None:
        """Warn of objects deleted (or out of reach) since the run's listing."""
        self.logger.warning(
            "%s: %s %s no longer listed (deleted, or access lost) during the run; %s, and "
            "the next run marks it deleted",
            self.name,
            self.parent_key.removesuffix("_id"),
            ", ".join(sorted(gone)),
            meanwhile,
        )

    def _in_halves(
        self,
        query_for: Callable[[list[_ObjectRead]], RowsQuery],
        group: list[_ObjectRead],
        finished: list[_Finished],
        progress: ReadProgress,
        reason: str,
    ) -> Iterator[tuple[_ObjectRead, dict[str, Any], ReadProgress]]:
        """The rest of a read too wide for Braintrust, as two reads of half the objects."""
        half = (len(group) + 1) // 2
        self._group_size = min(self._group_size, half)
        self._say_halved(reason, len(group), "objects")
        for part in (group[:half], group[half:]):
            yield from self._changes(query_for, part, finished, progress.resumed())

    def _say_halved(self, reason: str, count: int, what: str) -> None:
        self.logger.warning(
            "%s: %s; reading the rest of its %d %s in two queries, and at most %d per query "
            "for the rest of this run",
            self.name,
            reason,
            count,
            what,
            (count + 1) // 2,
        )

    def _advance(self, progress: ReadProgress, row: Mapping[str, Any], query: RowsQuery) -> None:
        """Account for a row in its read's progress; refuse one that breaks the order."""
        try:
            progress.before_row(*row_keys(row))
        except OutOfOrderError as exc:
            msg = (
                f"{self.name}: Braintrust returned rows out of (_xact_id, _pagination_key) "
                f"order ({exc}) for {query.describe()}; stopping, as changes could be missed"
            )
            raise BraintrustError(msg) from exc

    def _routed(self, row: Mapping[str, Any], in_query: Mapping[str, _ObjectRead]) -> _ObjectRead:
        """The read of the object a row belongs to, which its query must have asked for."""
        read = in_query.get(row.get(self.parent_key))  # type: ignore[arg-type]
        if read is None:
            msg = (
                f"{self.name}: Braintrust sent row {row.get('id')!r} of {self.parent_key} "
                f"{row.get(self.parent_key)!r}, which the query did not ask for"
            )
            raise BraintrustError(msg)
        return read

    def _settle(self, group: list[_ObjectRead], progress: ReadProgress) -> None:
        """Move the group's watermarks to where the finished read got."""
        for read in group:
            read.state[WATERMARK_KEY] = str(progress.watermark(read.watermark))
        # A place to resume from after each query, as there was after each object when
        # objects were read one by one (written only if records went out since the last).
        self._write_state_message()

    def _object_ids(self) -> list[str]:
        """The ids of the objects whose rows this stream reads."""
        listed = [obj["id"] for obj in self.listing.objects]
        if self.object_ids is None:
            return listed
        if missing := sorted(self.object_ids - set(listed)):
            among = "" if self.source == "project_logs" else f" {self.listing.name} of the"
            msg = (
                f"{self.name}: object_ids {', '.join(map(repr, missing))} are not among the"
                f"{among} selected projects; check the ids, `project_ids` / `project_names`, "
                "and that `api_key` and `org_name` point at the org that owns them"
            )
            raise BraintrustError(msg)
        return [object_id for object_id in listed if object_id in self.object_ids]

    def _object_read(self, object_id: str, partition: dict[str, Any] | None) -> _ObjectRead:
        """Where an object's rows start, from its state partition (made if it has none)."""
        state = (
            partition
            if partition is not None
            else self.get_context_state({self.parent_key: object_id})
        )
        # The SDK writes these per partition and removes them when the partition's sync ends;
        # an earlier release's interrupted run left them, and nothing here reads them.
        state.pop("replication_key_signpost", None)
        state.pop("starting_replication_value", None)
        created_since = self.config.get("start_date")
        stored = state.get(WATERMARK_KEY)
        start = parse_xact_id(stored) if stored is not None else 0
        if start is None:
            msg = (
                f"The state of {self.name} for {self.parent_key} {object_id} has "
                f"{WATERMARK_KEY} {stored!r}, which is not an _xact_id (a decimal integer); "
                "fix it, or remove that partition from the state to read the object again"
            )
            raise BraintrustError(msg)
        if stored is None and (bookmark := state.get("replication_key_value")) is not None:
            created_since = self._bookmark_without_watermark(object_id, bookmark, created_since)
        after = lookback(start, self.config["lookback_seconds"])
        return _ObjectRead(ObjectBound(object_id, after, created_since), start, state)

    def _bookmark(self, state: dict[str, Any], created: str) -> None:
        """Move an object's `created` bookmark forward, never past the sync's start.

        A client clock ahead of the server's would otherwise leave a bookmark in the future.
        """
        created = min(created, self._signpost)
        if created > str(state.get("replication_key_value") or ""):
            state["replication_key"] = self.replication_key
            state["replication_key_value"] = created

    def _bookmark_without_watermark(
        self, object_id: str, bookmark: Any, start_date: str | None
    ) -> str | None:
        """The later of a `created` bookmark (state written by hand or another tool) and start_date.

        Honoured, with a warning: older rows annotated before this run stay unread.
        """
        try:
            since = normalize_timestamp(str(bookmark))
        except ValueError as exc:
            msg = (
                f"The state of {self.name} for {self.parent_key} {object_id} has a "
                f"replication_key_value that is not a time ({exc}); fix or remove it"
            )
            raise BraintrustError(msg) from exc
        self.logger.warning(
            "%s %s: the state has a `created` bookmark but no %s; reading rows created since "
            "%s, so older rows changed before now are not read (drop the bookmark to read all)",
            self.name,
            object_id,
            WATERMARK_KEY,
            since,
        )
        return since if start_date is None else max(since, normalize_timestamp(start_date))

    @override
    def post_process(self, row: Record, context: Context | None = None) -> Record | None:
        if self._read_columns != self.columns:
            del row[PAGING_KEY[0]]
        created = row["created"] = row.get("created")
        problem = None if created is None else f"{created!r} is not an ISO-8601 string"
        if isinstance(created, str):
            try:
                row["created"] = created = normalize_timestamp(created)
                problem = None
            except ValueError as exc:
                problem = str(exc)
        if problem:
            msg = f"{self.name}: row {row.get('id')!r} has an unreadable `created`: {problem}"
            raise BraintrustError(msg)
        if created is not None:
            self._bookmark(self._reads[row[self.parent_key]].state, created)
        return super().post_process(row, context)


class ProjectLogsStream(EventStream):
    """Project logs: one row per span of the selected projects' traces."""

    name = "project_logs"
    source = "project_logs"
    primary_keys = ("project_id", "id")
    declared_schema = schemas.PROJECT_LOG


class ExperimentEventsStream(EventStream):
    """Rows of every experiment: one per span of each eval case."""

    name = "experiment_events"
    source = "experiment"
    finds_deletes = True
    primary_keys = ("experiment_id", "id")
    declared_schema = schemas.with_deleted_at(schemas.EXPERIMENT_EVENT)


class DatasetEventsStream(EventStream):
    """Records of every dataset."""

    name = "dataset_events"
    source = "dataset"
    finds_deletes = True
    primary_keys = ("dataset_id", "id")
    declared_schema = schemas.with_deleted_at(schemas.DATASET_EVENT)


class CustomRowStream(EventStream):
    """A `custom_streams` row stream: a built-in row stream narrowed by filter and columns."""

    def __init__(
        self, tap: Tap, transport: Transport, objects: ObjectListingStream, spec: RowStreamSpec
    ) -> None:
        """The rows of `spec`, of the objects `objects` lists."""
        self.source = spec.source
        self.row_filter = spec.row_filter
        self.columns = spec.columns
        self.object_ids = spec.object_ids
        super().__init__(tap, transport, objects, name=spec.name, schema=spec.schema)
        self.primary_keys = spec.primary_keys


RootPair = tuple[str, str]
"""(object id, root span id): one trace."""
_SUMMARY_PREVIEWS = ("input", "output", "expected", "error", "metadata")
"""The summary fields Braintrust sends as previews cut to `preview_length`."""


class TraceStream(CustomRowStream):
    """A custom stream of whole traces: every span of each, or one summary row each.

    A trace with any span written since the last run is read again whole. Which traces
    those are comes from a narrow read of the changed spans (root ids only) in `_xact_id`
    order, which moves the watermarks as for spans. Whole traces are then read as the `bt`
    CLI reads them: spans by root id, at most `MAX_IDS_PER_LIST` traces a query; with a
    filter, first the traces that have a span matching it (what the `traces` shape means),
    then those traces whole. Summaries come from the `summary` shape, filtered by root id
    and the user's filter.
    """

    def __init__(
        self, tap: Tap, transport: Transport, objects: ObjectListingStream, spec: RowStreamSpec
    ) -> None:
        """The traces of `spec`, of the objects `objects` lists."""
        self.summaries = spec.shape == "summary"
        super().__init__(tap, transport, objects, spec)
        self._roots_per_query = MAX_IDS_PER_LIST
        self._until: int | None = None
        """The `_xact_id` whole-trace reads go up to (None: no end)."""
        self._preview_length = FULL_PREVIEWS
        self._maybe_cut = 0

    @override
    def _read(self, group: list[_ObjectRead]) -> Iterable[dict[str, Any]]:
        # Watermarks move only once the traces are read; until then each partition keeps
        # its last one, so a state written meanwhile (with a `created` bookmark) resumes
        # from it rather than from the bookmark.
        for read in group:
            read.state.setdefault(WATERMARK_KEY, str(read.watermark))
        finished: list[_Finished] = []
        changed: dict[RootPair, None] = {}  # an ordered set
        for read, row, _ in self._changes(self._discovery, group, finished):
            changed[read.bound.object_id, root_of(row)] = None
        in_query = {read.bound.object_id: read for read in group}
        every_trace = all(read.bound.start == (0, "") for read in group)
        # Spans written after the highest new watermark come again next run.
        self._until = (
            max(
                (
                    progress.watermark(read.watermark)
                    for part, progress in finished
                    for read in part
                ),
                default=0,
            )
            or None
        )
        for row in self._traces(tuple(in_query), list(changed), every_trace=every_trace):
            self._routed(row, in_query)
            yield row
        for part, progress in finished:
            self._settle(part, progress)
        if self._maybe_cut:
            self.logger.warning(
                "%s: %d summary values are %d characters long, so may have been cut there",
                self.name,
                self._maybe_cut,
                FALLBACK_PREVIEW_LENGTH,
            )
            self._maybe_cut = 0

    def _discovery(self, group: list[_ObjectRead]) -> RowsQuery:
        columns = (self.parent_key, "id", "_xact_id", "_pagination_key", "root_span_id")
        return RowsQuery(
            self.source,
            tuple(read.bound for read in group),
            columns=tuple((column,) for column in columns),
        )

    def _traces(
        self, object_ids: tuple[str, ...], changed: list[RootPair], *, every_trace: bool
    ) -> Iterator[dict[str, Any]]:
        """The rows of the changed traces: all of the objects' when everything is new."""
        if not changed:
            return
        if self.summaries:
            if every_trace and not self.config.get("keyset_paging"):
                yield from self._summaries(object_ids, None)
            else:
                yield from self._by_roots(changed, self._summaries)
            return
        if self.row_filter is not None:
            changed = list(self._matching(object_ids, changed, every_trace=every_trace))
        elif every_trace:
            yield from self._spans(
                TraceSpansQuery(
                    self.source, object_ids, columns=self._read_columns, through=self._until
                )
            )
            return
        yield from self._by_roots(changed, self._whole_traces)

    def _matching(
        self, object_ids: tuple[str, ...], changed: list[RootPair], *, every_trace: bool
    ) -> Iterator[RootPair]:
        """The changed traces with a span matching the user's filter, each once."""
        columns = ((self.parent_key,), ("root_span_id",), ("id",), ("_pagination_key",))

        def matching(objects: tuple[str, ...], roots: tuple[str, ...] | None, after: Any) -> Any:
            query = TraceSpansQuery(
                self.source, objects, roots, self.row_filter, columns, self._until
            )
            return self._spans(query, after)

        rows = (
            matching(object_ids, None, None) if every_trace else self._by_roots(changed, matching)
        )
        yield from dict.fromkeys((str(row.get(self.parent_key)), root_of(row)) for row in rows)

    def _whole_traces(
        self, objects: tuple[str, ...], roots: tuple[str, ...] | None, after: Any
    ) -> Iterator[dict[str, Any]]:
        return self._spans(
            TraceSpansQuery(self.source, objects, roots, None, self._read_columns, self._until),
            after,
        )

    def _spans(self, query: TraceSpansQuery, after: Any = None) -> Iterator[dict[str, Any]]:
        self._log_query(query)
        for page in self.query_pages(query, after):
            yield from page.rows

    def _summaries(
        self, objects: tuple[str, ...], roots: tuple[str, ...] | None, after: Any = None
    ) -> Iterator[dict[str, Any]]:
        """Summary rows, asking for cut previews if Braintrust refuses whole ones."""
        while True:
            query = SummaryQuery(
                self.source,
                objects,
                roots,
                self.row_filter,
                self._preview_length,
                by_remaining_roots=bool(self.config.get("keyset_paging")) and roots is not None,
            )
            self._log_query(query)
            first = True
            try:
                for page in self.query_pages(query, after):
                    first = False
                    yield from page.rows
            except QueryRefusedError as exc:
                if not first or self._preview_length != FULL_PREVIEWS:
                    raise
                self._preview_length = FALLBACK_PREVIEW_LENGTH
                self.logger.warning(
                    "%s: Braintrust refused whole summary values (preview_length %d: %s); "
                    "asking for values cut at %d characters, and counting those that may be",
                    self.name,
                    FULL_PREVIEWS,
                    exc,
                    FALLBACK_PREVIEW_LENGTH,
                )
                continue
            return

    def _by_roots(
        self,
        changed: list[RootPair],
        read: Callable[[tuple[str, ...], tuple[str, ...], Any], Iterator[dict[str, Any]]],
    ) -> Iterator[dict[str, Any]]:
        """`read` of the traces, a query per `_roots_per_query` of them.

        A query Braintrust finds too big goes on as two of half the traces each, from where
        it got: spans after the last one read, summaries of the traces not yet answered.
        """
        pending = list(changed)
        while pending:
            chunk, pending = pending[: self._roots_per_query], pending[self._roots_per_query :]
            yield from self._chunk(chunk, read, None)

    def _chunk(
        self,
        chunk: list[RootPair],
        read: Callable[[tuple[str, ...], tuple[str, ...], Any], Iterator[dict[str, Any]]],
        after: str | None,
    ) -> Iterator[dict[str, Any]]:
        objects = tuple(dict.fromkeys(object_id for object_id, _ in chunk))
        roots = tuple(dict.fromkeys(root for _, root in chunk))
        answered: set[str] = set()
        try:
            for row in read(objects, roots, after):
                if self.summaries:
                    answered.add(root_of(row))
                else:
                    after = pagination_key_of(row)
                yield row
        except GroupTooBigError as exc:
            half = (len(chunk) + 1) // 2
            self._roots_per_query = min(self._roots_per_query, half)
            self._say_halved(str(exc), len(chunk), "traces")
            for part in (chunk[:half], chunk[half:]):
                rest = [pair for pair in part if pair[1] not in answered]
                if rest:
                    yield from self._chunk(rest, read, after)

    @override
    def post_process(self, row: Record, context: Context | None = None) -> Record | None:
        if self.summaries:
            if not row.get("root_span_id"):
                row["root_span_id"] = row.get("id")  # the contract's fallback
            if self._preview_length != FULL_PREVIEWS:
                self._maybe_cut += sum(
                    isinstance(row.get(name), str) and len(row[name]) >= self._preview_length
                    for name in _SUMMARY_PREVIEWS
                )
        return super().post_process(row, context)


class ReportStream(BtqlStream):
    """A `custom_streams` SQL report: each run's answer replaces the last one's.

    The records carry a table version and an ACTIVATE_VERSION follows the last of them, so
    a target that honours it (target-postgres with `hard_delete`) drops the rows today's
    answer no longer has. A run that fails before the end activates nothing, so nothing is
    deleted: until a run completes, the table holds the old answer plus the rows already
    sent (updated in place where the report has primary keys).
    """

    def __init__(self, tap: Tap, transport: Transport, spec: ReportStreamSpec) -> None:
        """The report `spec` defines."""
        self.spec = spec
        super().__init__(tap, transport, name=spec.name, schema=spec.schema)
        self.primary_keys = spec.primary_keys

    @property
    @override
    def emit_activate_version_messages(self) -> bool:
        # The SDK's would come before the records (a run that fails midway would leave
        # the table emptied) and count in seconds, below this stream's milliseconds.
        return False

    @override
    def get_records(self, context: Context | None) -> Iterable[dict[str, Any]]:
        self._stream_version = time.time_ns() // 1_000_000
        query = ReportQuery(self.spec.sql, self.spec.tz_offset)
        self._log_query(query, sized=False)
        wanted = self.spec.limit
        read = 0
        for page in self.query_pages(query):
            rows = page.rows if wanted is None else page.rows[: wanted - read]
            read += len(rows)
            if page.cursor is None and len(page.rows) >= MAX_PAGE_SIZE and read != wanted:
                msg = (
                    f"{self.name}: Braintrust answered {query.describe()} with a full page "
                    f"({len(page.rows)} rows) and no cursor, so the report may be cut short; "
                    "narrow the query (a tighter WHERE, a coarser GROUP BY) or give it a "
                    f"LIMIT of at most {MAX_PAGE_SIZE}"
                )
                raise BraintrustError(msg)
            yield from rows
            if read == wanted:
                break
        self._write_activate_version_message(self._stream_version)


def custom_streams(
    tap: Tap,
    transport: Transport,
    specs: list[CustomStreamSpec],
    listings: Mapping[RowSource, ObjectListingStream],
) -> list[BtqlStream]:
    """The streams `custom_streams` defines, each reading from the run's listings."""
    made: list[BtqlStream] = []
    for spec in specs:
        if isinstance(spec, ReportStreamSpec):
            made.append(ReportStream(tap, transport, spec))
        else:
            kind = CustomRowStream if spec.shape == "spans" else TraceStream
            made.append(kind(tap, transport, listings[spec.source], spec))
    return made
