"""singer-sdk's standard tap suite, plus the key and type checks it gets wrong in 0.54.9."""

from __future__ import annotations

import re
from typing import TYPE_CHECKING, Any

import pytest
from jsonschema import Draft7Validator, FormatChecker
from singer_sdk.testing import SuiteConfig, get_tap_test_class

from tap_braintrust.tap import TapBraintrust
from tests.conftest import API_KEY, OBJECT_STREAMS, run_tap_in, tap_config
from tests.emulator import Emulator
from tests.warehouse import ROW_STREAM_NAMES, Target, truth

if TYPE_CHECKING:
    from collections.abc import Iterator

    from tests.conftest import TapRun

# The standard suite reads its config when pytest collects this module, so this emulator
# starts at import and stops when the module's tests are done.
SUITE_EMULATOR = Emulator(api_key=API_KEY).start()
SUITE_EMULATOR.load_demo(seed=7)

TestTapBraintrust = get_tap_test_class(
    TapBraintrust,
    config=tap_config(SUITE_EMULATOR, page_size=2),
    suite_config=SuiteConfig(max_records_limit=None),
)


@pytest.fixture(scope="module", autouse=True)
def _stop_suite_emulator() -> Iterator[None]:
    yield
    SUITE_EMULATOR.stop()


STREAMS = (*OBJECT_STREAMS, *ROW_STREAM_NAMES)
FIXED_WIDTH_UTC = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}Z")


@pytest.fixture(scope="module")
def full_sync(tmp_path_factory: pytest.TempPathFactory) -> TapRun:
    # One object or row per page, so every check below crosses page boundaries; one run
    # serves them all, as nothing here writes to the emulator.
    run = run_tap_in(tmp_path_factory.mktemp("full-sync"), tap_config(SUITE_EMULATOR, page_size=1))
    assert run.returncode == 0, run.stderr
    return run


@pytest.mark.parametrize("stream", STREAMS)
def test_primary_keys_are_unique(full_sync: TapRun, stream: str) -> None:
    key_properties = full_sync.schemas()[stream]["key_properties"]
    keys = [tuple(record[k] for k in key_properties) for record in full_sync.records(stream)]
    assert keys, f"{stream} emitted no records"
    assert len(keys) == len(set(keys))


@pytest.mark.parametrize("stream", STREAMS)
def test_records_match_their_schema(full_sync: TapRun, stream: str) -> None:
    schema = full_sync.schemas()[stream]["schema"]
    validator = Draft7Validator(schema, format_checker=FormatChecker())
    for record in full_sync.records(stream):
        errors = [error.message for error in validator.iter_errors(record)]
        assert not errors, f"{stream} record {record['id']}: {errors}"
        # Every key the record carries is declared, so no target drops a field silently.
        assert set(record) <= set(schema["properties"]), set(record) - set(schema["properties"])


@pytest.mark.parametrize("stream", STREAMS)
def test_timestamps_are_fixed_width_utc(full_sync: TapRun, stream: str) -> None:
    created = [record["created"] for record in full_sync.records(stream)]
    assert created
    assert all(FIXED_WIDTH_UTC.fullmatch(value) for value in created), created


def test_records_equal_the_emulators_truth(full_sync: TapRun) -> None:
    target = Target()
    target.load(full_sync.messages)
    assert target.differences(truth(SUITE_EMULATOR)) == []
    objects = _objects(SUITE_EMULATOR)
    for stream in OBJECT_STREAMS:
        emitted = {record["id"]: record for record in full_sync.records(stream)}
        assert emitted.keys() == objects[stream].keys(), stream
        for object_id, expected in objects[stream].items():
            got = emitted[object_id]
            for key, value in expected.items():
                if key in {"created", "deleted_at"} and value is not None:
                    assert got[key].startswith(value[:-1]), (stream, key)
                else:
                    assert got.get(key) == value, (stream, object_id, key)


def _objects(emulator: Emulator) -> dict[str, dict[str, dict[str, Any]]]:
    return {
        stream: {obj["id"]: obj for obj in emulator.store.objects(kind)}
        for stream, kind in OBJECT_STREAMS.items()
    }
