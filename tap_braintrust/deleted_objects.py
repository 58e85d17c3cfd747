"""Projects, experiments and datasets deleted in Braintrust since an earlier run delivered them.

A deleted object leaves the listings and its GET answers 403, as one the key lost access to
does, and its rows can no longer be read. So each object stream keeps in its state a few
small fields of every object it delivered (`KEPT_FIELDS`, about 150 bytes an object; never
`repo_info` or metadata), and marks the ones a completed listing no longer shows, from that
content, with `_sdc_deleted_at`. Only objects whose project is still selected are marked:
one that merely left the selection is not gone. A wrong org or a key that sees nothing must
not look like everything deleted: the org is checked against the state, and a run marks at
most `max_deleted_share` of a kind's objects.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from tap_braintrust.errors import BraintrustError

if TYPE_CHECKING:
    import logging
    from collections.abc import Callable, Mapping

DELIVERED_KEY = "delivered"
"""The state key, in an object stream's state, of the objects it delivered."""
ORG_KEY = "org_id"
"""The state key, in the projects stream's state, of the org its projects belong to."""
KEPT_FIELDS: dict[str, tuple[str, ...]] = {
    "projects": ("name", "created", "org_id"),
    "experiments": ("name", "created", "project_id", "public"),
    "datasets": ("name", "created", "project_id"),
}
"""What state keeps of each delivered object: what a marked record carries (the schema's
required fields, its name and when it was made)."""
_LONGEST_NAME = 1000
"""Characters of a name kept in state; longer ones are cut, to bound the state."""


@dataclass
class Delivered:
    """An object stream's delivered objects, as its state keeps them."""

    stream: str
    state: dict[str, Any]
    logger: logging.Logger

    def objects(self) -> dict[str, dict[str, Any]]:
        """The kept fields of every object an earlier run delivered, by id."""
        kept = self.state.get(DELIVERED_KEY, {})
        if not isinstance(kept, dict) or not all(_well_formed(v) for v in kept.values()):
            msg = (
                f"The state of {self.stream} has a {DELIVERED_KEY!r} that is not an object of "
                "objects by id, each of strings (`public` a boolean); remove that key from "
                "the state (no object is then marked deleted until a later run has "
                "delivered them again)"
            )
            raise BraintrustError(msg)
        return kept

    def gone(
        self,
        listed: list[dict[str, Any]],
        selected: Callable[[Mapping[str, Any]], bool],
        max_share: float,
    ) -> list[dict[str, Any]]:
        """Delivered objects a complete listing no longer shows, still selected: deleted.

        None when more than `max_share` of the selected ones would be (with a WARNING).
        """
        listed_ids = {obj["id"] for obj in listed}
        earlier = [{**fields, "id": object_id} for object_id, fields in self.objects().items()]
        in_selection = [obj for obj in earlier if selected(obj)]
        gone = [obj for obj in in_selection if obj["id"] not in listed_ids]
        if len(gone) > 1 and len(gone) > max_share * len(in_selection):
            self.logger.warning(
                "%s: %d of the %d selected that earlier runs delivered are no longer listed, "
                "more than max_deleted_share (%s) allows: marking none. A wrong `org_name` "
                "or a key of another org looks like this. If they were deleted, run once "
                "with max_deleted_share 1",
                self.stream,
                len(gone),
                len(in_selection),
                max_share,
            )
            return []
        return gone

    def remember(self, listed: list[dict[str, Any]], marked: list[dict[str, Any]]) -> None:
        """Keep the listed objects' fields; forget the marked ones (and nothing else).

        An object that left the selection stays, so it is marked should it be deleted and
        selected again.
        """
        fields = KEPT_FIELDS[self.stream]
        kept = dict(self.objects())
        for obj in marked:
            kept.pop(obj["id"], None)
        for obj in listed:
            entry = {name: obj.get(name) for name in fields}
            name = entry.get("name")
            if isinstance(name, str):
                entry["name"] = name[:_LONGEST_NAME]
            kept[obj["id"]] = entry
        self.state[DELIVERED_KEY] = kept


def _well_formed(fields: Any) -> bool:
    """Whether kept fields are what `remember` writes: strings (`public` a boolean) or null."""
    return isinstance(fields, dict) and all(
        value is None or isinstance(value, bool if name == "public" else str)
        for name, value in fields.items()
    )


def check_org(state: dict[str, Any], listed: list[dict[str, Any]]) -> None:
    """Refuse projects of another org than earlier runs read: a wrong key or `org_name`."""
    earlier = state.get(ORG_KEY)
    orgs = {project.get("org_id") for project in listed}
    if earlier is not None and orgs and orgs != {earlier}:
        msg = (
            f"The projects listed belong to org {', '.join(sorted(map(str, orgs)))}, but "
            f"earlier runs of this state read org {earlier}. Check `api_key` and `org_name`; "
            "to sync another org, start from an empty state (a separate state id)"
        )
        raise BraintrustError(msg)
    if len(orgs) == 1:
        state[ORG_KEY] = next(iter(orgs))
