"""What each stream is: its endpoint, schema, parent and selection rules."""

from __future__ import annotations

import sys
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from tap_braintrust import schemas
from tap_braintrust.client import BraintrustError, ObjectListingStream

if sys.version_info >= (3, 12):
    from typing import override
else:
    from typing_extensions import override

if TYPE_CHECKING:
    from collections.abc import Iterable, Mapping

    from singer_sdk.helpers.types import Context


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

    @override
    def get_child_context(self, record: dict[str, Any], context: Context | None) -> dict[str, Any]:
        return {"project_id": record["id"]}


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


class DatasetsStream(ProjectChildStream):
    """Datasets of the selected projects."""

    name = "datasets"
    path = "/v1/dataset"
    schema = schemas.DATASET
