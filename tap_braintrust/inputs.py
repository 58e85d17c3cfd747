"""The run's input files (config, state, catalog), checked before the SDK reads them.

The SDK would stop on a malformed file with a traceback from deep inside, or worse, read a
state of the wrong shape as "no state" and sync everything again. These checks turn each
case into one message that names the file and what to fix.
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any

from singer_sdk.singerlib import Catalog

if TYPE_CHECKING:
    from collections.abc import Collection


class InputFileError(ValueError):
    """An input file that cannot be used; the message says what to fix."""


def read_json_object(text: str, what: str) -> dict[str, Any]:
    """Parse `text` as one JSON object."""
    try:
        value = json.loads(text)
    except ValueError as exc:  # the message names a position, never the file's content
        msg = f"{what} is not valid JSON ({exc})"
        raise InputFileError(msg) from exc
    except RecursionError as exc:
        msg = f"{what} is nested too deeply to be a config, state or catalog"
        raise InputFileError(msg) from exc
    if not isinstance(value, dict):
        msg = f"{what} must be a JSON object, not a JSON {type(value).__name__}"
        raise InputFileError(msg)
    return value


def check_state(state: dict[str, Any]) -> None:
    """Refuse a state the SDK would crash on or silently misread."""
    if "singer_state" in state:
        msg = (
            "the state is Meltano's wrapper; pass the value of its `singer_state` "
            "(or let `meltano run` supply the state)"
        )
        raise InputFileError(msg)
    bookmarks = state.get("bookmarks", {})
    _require(isinstance(bookmarks, dict), "`bookmarks` must be an object of streams")
    for stream, entry in bookmarks.items():
        where = f"bookmarks.{stream}"
        _require(isinstance(entry, dict), f"{where} must be an object")
        _require_progress_markers(entry, where)
        partitions = entry.get("partitions", [])
        _require(isinstance(partitions, list), f"{where}.partitions must be a list")
        for index, partition in enumerate(partitions):
            part = f"{where}.partitions[{index}]"
            _require(isinstance(partition, dict), f"{part} must be an object")
            _require(
                isinstance(partition.get("context"), dict), f"{part}.context must be an object"
            )
            _require_progress_markers(partition, part)


def _require_progress_markers(entry: dict[str, Any], where: str) -> None:
    # The SDK clears these at the start of a run and crashes on anything but an object.
    markers = entry.get("progress_markers", {})
    _require(isinstance(markers, dict), f"{where}.progress_markers must be an object")


def _require(condition: bool, problem: str) -> None:  # noqa: FBT001
    if not condition:
        msg = f"the state's {problem}; fix it, or remove it to sync from the start"
        raise InputFileError(msg)


def check_catalog(catalog: dict[str, Any], stream_names: Collection[str]) -> None:
    """Refuse a catalog that would sync nothing, or not what it says, without an error."""
    entries = catalog.get("streams")
    if not isinstance(entries, list) or not all(isinstance(e, dict) for e in entries):
        msg = "the catalog must have a `streams` list of objects (run --discover for one)"
        raise InputFileError(msg)
    for entry in entries:
        name = entry.get("tap_stream_id")
        if not isinstance(name, str) or name not in stream_names:
            msg = (
                f"the catalog names stream {name!r}, which tap-braintrust does not have "
                f"(it has {', '.join(sorted(stream_names))}); regenerate it with --discover"
            )
            raise InputFileError(msg)
        schema = entry.get("schema")
        if not isinstance(schema, dict) or not isinstance(schema.get("properties"), dict):
            msg = f"the catalog's {name!r} entry needs a `schema` with `properties`"
            raise InputFileError(msg)
    try:
        parsed = Catalog.from_dict(catalog)
        selected = [entry.metadata.resolve_selection()[()] for entry in parsed.values()]
    except (AttributeError, KeyError, TypeError, ValueError) as exc:
        msg = (
            f"the catalog is not a Singer catalog ({type(exc).__name__}: {exc}); "
            "regenerate it with --discover"
        )
        raise InputFileError(msg) from exc
    if not any(selected):
        msg = (
            "the catalog selects no stream, so nothing would be synced; select at least one "
            "(with Meltano: meltano select tap-braintrust <stream> '*')"
        )
        raise InputFileError(msg)
