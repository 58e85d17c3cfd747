"""What each stream is: its endpoint, schema, parent and selection rules."""

from __future__ import annotations

import sys
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Any, ClassVar

from tap_braintrust import schemas
from tap_braintrust.client import BraintrustError, BtqlStream, ObjectListingStream
from tap_braintrust.incremental import (
    WATERMARK_KEY,
    OutOfOrderError,
    Watermark,
    lookback,
    parse_xact_id,
)
from tap_braintrust.queries import RowSource, RowsQuery
from tap_braintrust.timestamps import format_timestamp, normalize_timestamp

if sys.version_info >= (3, 12):
    from typing import override
else:
    from typing_extensions import override

if TYPE_CHECKING:
    from collections.abc import Iterable, Mapping

    from singer_sdk.helpers.types import Context, Record


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
    child_context_key = "project_id"

    @property
    def selection(self) -> ProjectSelection:
        """The configured project selection."""
        return ProjectSelection.from_config(self.config)

    @override
    def listing_filters(self, context: Context | None) -> dict[str, Any]:
        selection = self.selection
        # Ids narrow the listing server-side; names are matched here (the project
        # listing has no name filter), so any name means listing everything.
        return {"ids": sorted(selection.ids)} if selection.ids and not selection.names else {}

    @override
    def get_records(self, context: Context | None) -> Iterable[dict[str, Any]]:
        # Projects are few: read them all first, so a misnamed project fails the run
        # before any experiment or dataset of the others is emitted.
        selection = self.selection
        projects = [p for p in super().get_records(context) if selection.includes(p)]
        if missing := selection.missing(projects):
            msg = (
                f"Configured projects not found in Braintrust: {', '.join(missing)}. "
                "Check `project_ids` / `project_names`, and that `api_key` and `org_name` "
                "point at the org that owns them."
            )
            raise BraintrustError(msg)
        return projects


class ProjectChildStream(ObjectListingStream):
    """An object listed per selected project, so unselected projects are never requested."""

    parent_stream_type = ProjectsStream
    # Full-table children need no per-project state entries.
    state_partitioning_keys: tuple[str, ...] = ()

    @override
    def listing_filters(self, context: Context | None) -> dict[str, Any]:
        if context is None:  # the SDK always passes the parent's context; this names the bug
            msg = f"{self.name} is synced per project and needs a project context"
            raise ValueError(msg)
        return {"project_id": context["project_id"]}


class ExperimentsStream(ProjectChildStream):
    """Experiments (eval runs) of the selected projects."""

    name = "experiments"
    path = "/v1/experiment"
    schema = schemas.EXPERIMENT
    child_context_key = "experiment_id"


class DatasetsStream(ProjectChildStream):
    """Datasets of the selected projects."""

    name = "datasets"
    path = "/v1/dataset"
    schema = schemas.DATASET
    child_context_key = "dataset_id"


class EventStream(BtqlStream):
    """The rows of one object per parent record, incremental on `created`.

    `created` is the replication key and bookmark, but it is the logging client's clock and
    a merge (a human score, a corrected `expected`, a tag, a comment) keeps it. So rows are
    read by `_xact_id`, which every write moves, after the watermark each partition's state
    keeps beside its bookmark (see incremental.py).
    """

    source: ClassVar[RowSource]
    parent_key: ClassVar[str]
    """The parent's id: the context key, the state partition and a record field."""

    replication_key = "created"
    is_sorted = False

    @override
    def get_records(self, context: Context | None) -> Iterable[dict[str, Any]]:
        if context is None:  # the SDK always passes the parent's context; this names the bug
            msg = f"{self.name} is synced per parent and needs its context"
            raise ValueError(msg)
        state = self.get_context_state(context)
        self._start_progress_from_bookmark(state)
        query, watermark = self._plan(context, state)
        ended_empty = False
        for page in self.query_pages(query, context):
            ended_empty = not page.rows
            watermark.visible_through(page.last_processed_xact_id)
            for row in page.rows:
                xact_id = parse_xact_id(row.get("_xact_id"))
                if xact_id is None:
                    msg = (
                        f"{self.name}: Braintrust sent row {row.get('id')!r} without a valid "
                        f"_xact_id ({row.get('_xact_id')!r}), which change tracking needs"
                    )
                    raise BraintrustError(msg)
                try:
                    moved = watermark.before_row(xact_id)
                except OutOfOrderError as exc:
                    msg = (
                        f"{self.name}: Braintrust returned rows out of _xact_id order ({exc}) "
                        f"for {query.describe()}; stopping, as changes could be missed"
                    )
                    raise BraintrustError(msg) from exc
                if moved:
                    state[WATERMARK_KEY] = str(watermark.value)
                yield row
        if watermark.finish(ended_empty=ended_empty) or WATERMARK_KEY not in state:
            state[WATERMARK_KEY] = str(watermark.value)

    def _start_progress_from_bookmark(self, state: dict[str, Any]) -> None:
        """Seed the SDK's progress markers with the bookmark so far.

        The SDK tracks an unsorted stream's bookmark from scratch each run, so a run that
        only reads old, annotated rows would move `created` backwards. It also warns, per
        partition, that such streams cannot resume; these can, and the note says so.
        """
        markers: dict[str, Any] = {"Note": f"Resumable from {WATERMARK_KEY}."}
        if bookmark := _timestamp_or_none(state.get("replication_key_value")):
            markers |= {"replication_key": self.replication_key, "replication_key_value": bookmark}
        state.setdefault("progress_markers", markers)

    def _plan(self, context: Context, state: dict[str, Any]) -> tuple[RowsQuery, Watermark]:
        """The query for this partition and the watermark it starts from."""
        object_id = context[self.parent_key]
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
        query = RowsQuery(
            self.source,
            object_id,
            after_xact_id=after,
            created_since=created_since,
            limit=self.page_size.current,
        )
        self.logger.info(
            "%s: reading %s, %d rows per page", self.name, query.describe(), query.limit
        )
        return query, Watermark(start)

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
        created = row["created"] = row.get("created")  # the SDK's bookmark reads the key
        problem = None if created is None else f"{created!r} is not an ISO-8601 string"
        if isinstance(created, str):
            try:
                row["created"] = normalize_timestamp(created)
                problem = None
            except ValueError as exc:
                problem = str(exc)
        if problem:
            msg = f"{self.name}: row {row.get('id')!r} has an unreadable `created`: {problem}"
            raise BraintrustError(msg)
        return super().post_process(row, context)

    @override
    def get_replication_key_signpost(self, context: Context | None = None) -> Any:
        # The SDK caps bookmarks at the sync's start; written in our fixed-width form, so
        # every bookmark compares correctly as a string.
        signpost = super().get_replication_key_signpost(context)
        return format_timestamp(signpost) if isinstance(signpost, datetime) else signpost


def _timestamp_or_none(value: Any) -> str | None:
    """`value` in the fixed-width form if it is a readable timestamp string, else None."""
    if not isinstance(value, str):
        return None
    try:
        return normalize_timestamp(value)
    except ValueError:
        return None


class ProjectLogsStream(EventStream):
    """Project logs: one row per span of the selected projects' traces."""

    name = "project_logs"
    parent_stream_type = ProjectsStream
    source = "project_logs"
    parent_key = "project_id"
    primary_keys = ("project_id", "id")
    schema = schemas.PROJECT_LOG


class ExperimentEventsStream(EventStream):
    """Rows of every experiment: one per span of each eval case."""

    name = "experiment_events"
    parent_stream_type = ExperimentsStream
    source = "experiment"
    parent_key = "experiment_id"
    primary_keys = ("experiment_id", "id")
    schema = schemas.EXPERIMENT_EVENT


class DatasetEventsStream(EventStream):
    """Records of every dataset."""

    name = "dataset_events"
    parent_stream_type = DatasetsStream
    source = "dataset"
    parent_key = "dataset_id"
    primary_keys = ("dataset_id", "id")
    schema = schemas.DATASET_EVENT
