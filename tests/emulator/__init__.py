"""An emulator of the Braintrust data API for the tap's tests (stdlib only; never shipped)."""

from tests.emulator.btql import BTQLError, parse_query
from tests.emulator.faults import FaultInjector, FaultRule
from tests.emulator.generator import Demo, generate_demo, generate_logs
from tests.emulator.server import (
    OBJECT_STORE_BUCKET,
    Emulator,
    LoggedRequest,
    ObjectStore,
    running_emulator,
)
from tests.emulator.store import Store

__all__ = [
    "OBJECT_STORE_BUCKET",
    "BTQLError",
    "Demo",
    "Emulator",
    "FaultInjector",
    "FaultRule",
    "LoggedRequest",
    "ObjectStore",
    "Store",
    "generate_demo",
    "generate_logs",
    "parse_query",
    "running_emulator",
]
