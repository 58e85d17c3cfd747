"""What each stream is: its endpoint, schema, listing scope and how its rows are read."""

from __future__ import annotations

import sys
from dataclasses import dataclass
from datetime import datetime, timezone
from functools import cached_property
from typing import TYPE_CHECKING, Any, ClassVar

from tap_braintrust import schemas
from tap_braintrust.client import BtqlStream, ObjectListingStream
from tap_braintrust.errors import BraintrustError
from tap_braintrust.incremental import (
    WATERMARK_KEY,
    OutOfOrderError,
    ReadProgress,
    lookback,
    parse_xact_id,
)
from tap_braintrust.queries import OBJECT_ID_FIELD, ObjectBound, RowSource, RowsQuery
from tap_braintrust.timestamps import format_timestamp, normalize_timestamp

if sys.version_info >= (3, 12):
    from typing import override
else:
    from typing_extensions import override

if TYPE_CHECKING:
    from collections.abc import Iterable, Mapping

    from singer_sdk import Tap
    from singer_sdk.helpers.types import Context, Record

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
    schema = schemas.PROJECT

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
    def check(self, objects: list[dict[str, Any]]) -> None:
        # Projects are listed before anything else is read, so a misnamed project fails the
        # run before any experiment or dataset of the others is emitted.
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

    @cached_property
    def _project_ids(self) -> frozenset[str]:
        return frozenset(project["id"] for project in self.projects.objects)


class ExperimentsStream(ProjectObjectStream):
    """Experiments (eval runs) of the selected projects."""

    name = "experiments"
    path = "/v1/experiment"
    schema = schemas.EXPERIMENT


class DatasetsStream(ProjectObjectStream):
    """Datasets of the selected projects."""

    name = "datasets"
    path = "/v1/dataset"
    schema = schemas.DATASET


@dataclass(frozen=True)
class _ObjectRead:
    """One object's part in a read: where its rows start, and its state partition."""

    bound: ObjectBound
    watermark: int
    """Its watermark from the previous run (0: none)."""
    state: dict[str, Any]


class EventStream(BtqlStream):
    """The rows of every listed object of one kind, incremental on `created`.

    `created` is the replication key and bookmark, but it is the logging client's clock and
    a merge (a human score, a corrected `expected`, a tag, a comment) keeps it. So rows are
    read by `_xact_id`, which every write moves, after the watermark each object's state
    partition keeps beside its bookmark (see incremental.py).

    Requests are the scarce resource (about 20 `/btql` a minute per org), so one query reads
    up to `objects_per_query` objects at once, each from its own watermark, and an object
    with nothing new costs nothing of its own. The state stays one partition per object,
    keyed by its id, as when each object was read alone.
    """

    source: ClassVar[RowSource]
    replication_key = "created"
    is_sorted = False

    def __init__(self, tap: Tap, transport: Transport, objects: ObjectListingStream) -> None:
        """The rows of the objects `objects` lists."""
        self.listing = objects
        self._reads: dict[str, _ObjectRead] = {}
        self._signpost = ""
        super().__init__(tap, transport)

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
        partitions = {
            partition["context"].get(self.parent_key): partition
            for partition in self.stream_state.get("partitions", [])
            if isinstance(partition.get("context"), dict)
        }
        reads = [
            self._object_read(obj["id"], partitions.get(obj["id"])) for obj in self.listing.objects
        ]
        reads.sort(key=lambda read: (read.bound.start, read.bound.object_id))
        self._reads = {read.bound.object_id: read for read in reads}
        size = int(self.config["objects_per_query"])
        for first in range(0, len(reads), size):
            yield from self._read(reads[first : first + size])

    def _read(self, group: list[_ObjectRead]) -> Iterable[dict[str, Any]]:
        """Every row of the group's query, each object's watermark moving with the read."""
        query = RowsQuery(self.source, tuple(read.bound for read in group))
        self.logger.info(
            "%s: reading %s, %d rows per page", self.name, query.describe(), self.page_size.current
        )
        in_query = {read.bound.object_id: read for read in group}
        progress = ReadProgress()
        ended_empty = False
        for page in self.query_pages(query):
            ended_empty = not page.rows
            progress.visible_through(page.last_processed_xact_id)
            for row in page.rows:
                read = in_query.get(row.get(self.parent_key))  # type: ignore[arg-type]
                xact_id = parse_xact_id(row.get("_xact_id"))
                if read is None or xact_id is None:
                    what = (
                        f"without a valid _xact_id ({row.get('_xact_id')!r}), which change "
                        "tracking needs"
                        if read is not None
                        else f"of {self.parent_key} {row.get(self.parent_key)!r}, which the "
                        "query did not ask for"
                    )
                    msg = f"{self.name}: Braintrust sent row {row.get('id')!r} {what}"
                    raise BraintrustError(msg)
                try:
                    progress.before_row(xact_id)
                except OutOfOrderError as exc:
                    msg = (
                        f"{self.name}: Braintrust returned rows out of _xact_id order ({exc}) "
                        f"for {query.describe()}; stopping, as changes could be missed"
                    )
                    raise BraintrustError(msg) from exc
                read.state[WATERMARK_KEY] = str(progress.watermark(read.watermark))
                yield row
        progress.finish(ended_empty=ended_empty)
        for read in group:
            read.state[WATERMARK_KEY] = str(progress.watermark(read.watermark))
        # A place to resume from after each query, as there was after each object when
        # objects were read one by one (written only if records went out since the last).
        self._write_state_message()

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
    schema = schemas.PROJECT_LOG


class ExperimentEventsStream(EventStream):
    """Rows of every experiment: one per span of each eval case."""

    name = "experiment_events"
    source = "experiment"
    primary_keys = ("experiment_id", "id")
    schema = schemas.EXPERIMENT_EVENT


class DatasetEventsStream(EventStream):
    """Records of every dataset."""

    name = "dataset_events"
    source = "dataset"
    primary_keys = ("dataset_id", "id")
    schema = schemas.DATASET_EVENT
