"""Deterministic fault injection: tests prove the tap survives what the service does under load."""

from __future__ import annotations

import random
import threading
from dataclasses import dataclass
from typing import Literal, get_args

FaultKind = Literal["status", "drop", "slow", "truncate", "garbage", "delete"]
"""status: an HTTP error (optionally with Retry-After); drop: close the connection unanswered;
slow: sleep `delay`, then answer normally; truncate: a 200 whose body stops half-way;
garbage: a 200 whose body is not JSON; delete: answer normally, once the rule's `delete`
object is deleted (an object deleted in the middle of a read)."""
DeletableKind = Literal["project", "experiment", "dataset"]


@dataclass(frozen=True)
class FaultRule:
    """Which requests to fault and how.

    Args:
        kind: the fault to inject.
        path: only requests to this path (or below it); None matches every path, the overflow
            object store's included. `"/bt-overflow"` (its bucket) targets only the object store.
        status: the HTTP status of a `status` fault.
        retry_after: the Retry-After header of a `status` fault (seconds or an HTTP date).
        retry_after_as_date: send an integer `retry_after` as the HTTP date that many
            seconds after the fault (whole seconds, as HTTP dates have).
        delay: seconds a `slow` fault waits before answering.
        times: fault only the first n matching requests; None faults all of them.
        probability: chance that a matching request is faulted (drawn from the seeded RNG).
        min_limit: only /btql requests whose page limit is above this (big pages failing).
        min_ids: only /btql requests whose source names at least this many object ids (a
            query too wide for the service).
        skip: let this many matching requests through before faulting any (a failure in
            the middle of a read).
        sql_only: only /btql requests whose query is SQL text (a data plane without SQL).
        delete: (kind, object id) of an object to delete (`Store.delete_object`) when the
            rule fires, before the request is answered, so that request already sees it
            deleted. With kind "delete" the request is then answered normally and the rule
            fires once unless `times` says otherwise; with another kind the fault follows.
    """

    kind: FaultKind
    path: str | None = None
    status: int | None = None
    retry_after: int | str | None = None
    retry_after_as_date: bool = False
    delay: float = 0.0
    times: int | None = None
    probability: float = 1.0
    min_limit: int | None = None
    min_ids: int | None = None
    skip: int = 0
    sql_only: bool = False
    delete: tuple[DeletableKind, str] | None = None

    def __post_init__(self) -> None:
        """Reject rules that could never do what they say."""
        if self.kind == "delete" and self.delete is None:
            msg = "a delete rule needs delete=(kind, object_id)"
            raise ValueError(msg)
        if self.delete is not None and (
            len(self.delete) != 2 or self.delete[0] not in get_args(DeletableKind)
        ):
            msg = f"delete must be (kind, object_id) with kind in {get_args(DeletableKind)}"
            raise ValueError(msg)
        if self.kind not in get_args(FaultKind):
            msg = f"unknown fault kind {self.kind!r}; expected one of {get_args(FaultKind)}"
            raise ValueError(msg)
        if self.kind == "status" and (self.status is None or not 100 <= self.status <= 599):
            msg = "a status fault needs an HTTP status between 100 and 599"
            raise ValueError(msg)
        if self.kind == "slow" and self.delay <= 0:
            msg = "a slow fault needs a positive delay"
            raise ValueError(msg)
        if self.retry_after_as_date and not isinstance(self.retry_after, int):
            msg = "retry_after_as_date needs retry_after in whole seconds"
            raise ValueError(msg)
        if not 0.0 <= self.probability <= 1.0:
            msg = "probability must be between 0 and 1"
            raise ValueError(msg)
        if self.times is not None and self.times < 1:
            msg = "times must be at least 1 (or None for every request)"
            raise ValueError(msg)

    def matches(
        self, path: str, limit: int | None, ids: int | None = None, *, sql: bool = False
    ) -> bool:
        """Whether a request to `path` (a /btql page of `limit` rows, naming `ids` objects,
        `sql` if its query is SQL text) is a candidate."""
        if (
            self.path is not None
            and path != self.path
            and not path.startswith(self.path.rstrip("/") + "/")
        ):
            return False
        if self.min_ids is not None and (ids is None or ids < self.min_ids):
            return False
        if self.sql_only and not sql:
            return False
        return self.min_limit is None or (limit is not None and limit > self.min_limit)


class FaultInjector:
    """The emulator's active fault rules; the first rule that fires decides a request's fate."""

    def __init__(self, seed: int = 0) -> None:
        """Start with no rules; `seed` makes probabilistic rules reproducible."""
        self._lock = threading.Lock()
        self._random = random.Random(seed)
        self._rules: list[FaultRule] = []
        self._fired: dict[int, int] = {}
        self._skipped: dict[int, int] = {}

    def add(self, rule: FaultRule) -> FaultRule:
        """Activate a rule (after the ones already active)."""
        with self._lock:
            self._rules.append(rule)
            self._fired[id(rule)] = 0
        return rule

    def clear(self) -> None:
        """Remove every rule."""
        with self._lock:
            self._rules.clear()
            self._fired.clear()
            self._skipped.clear()

    def fired(self, rule: FaultRule) -> int:
        """How many requests this rule has faulted so far."""
        with self._lock:
            return self._fired.get(id(rule), 0)

    def pick(
        self, path: str, limit: int | None, ids: int | None = None, *, sql: bool = False
    ) -> FaultRule | None:
        """The rule that faults this request, if any, counting it against its `times`."""
        with self._lock:
            for rule in self._rules:
                if not rule.matches(path, limit, ids, sql=sql):
                    continue
                if self._skipped.get(id(rule), 0) < rule.skip:
                    self._skipped[id(rule)] = self._skipped.get(id(rule), 0) + 1
                    continue
                times = 1 if rule.times is None and rule.kind == "delete" else rule.times
                if times is not None and self._fired[id(rule)] >= times:
                    continue
                if rule.probability < 1.0 and self._random.random() >= rule.probability:
                    continue
                self._fired[id(rule)] += 1
                return rule
            return None
