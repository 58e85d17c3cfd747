"""Deterministic, realistic Braintrust data: the same seed (and clock) always makes the same store.

The data is shaped to trip a careless tap: traces of nested spans, `created` out of insertion
order (late rows), a run of rows sharing one `created` millisecond, merges, comments, deletes,
huge payloads, unicode everywhere and nulls in optional fields.
"""

from __future__ import annotations

import itertools
import json
import random
import uuid
from dataclasses import dataclass
from functools import partial
from typing import TYPE_CHECKING, Any

from tests.emulator.store import ROW_SOURCES, iso_ms

if TYPE_CHECKING:
    from collections.abc import Callable

    from tests.emulator.store import RowSource, Store

_BULK_ROW_BASE_BYTES = 1035
"""JSON bytes of a bulk log row before its padding (measured), so rows come out near row_bytes."""

SAME_CREATED_RUN = 64
"""Rows of the first project's logs that share one `created` millisecond."""

HISTORY_QUIET = 3600.0
"""A generated history's last write is this many seconds before `end`: no lookback reaches it."""
_DEMO_CLEANUP_AFTER = 3600.0
"""Seconds from the demo's data writes to its clean-up, its last write (deletes, no rows)."""
_DEMO_WRITE_STEP = 1.0
"""Seconds between two of the demo's data writes (a few hundred writes: minutes in all)."""

PROJECT_NAMES = ("support-bot", "rag-search", 'O\'Brien "evals" ✓')
_LOG_TARGETS = (460, 360, 320)
_MODELS = ("gpt-4o", "gpt-4o-mini", "claude-3-5-sonnet", "llama-3.1-70b", None)
_ENVIRONMENTS = ("production", "staging", "dev")
_TAGS = ("prod", "beta", "regression", "vip", "eu", "mobile")
_TOOLS = ("search_docs", "get_order", "refund", "translate")
_UNICODE = (
    "Café crème ☕ — naïve façade",
    "東京の天気は？明日は雨ですか",  # noqa: RUF001 - full-width punctuation is the point
    "مرحبا، كيف يمكنني مساعدتك اليوم؟",
    "שלום! איך אפשר לעזור?",
    "Zoë wrote: e\u0301 a\u0300\u0301\u0302 (combining marks)",
    "Deploy done 🚀👩\u200d💻🎉 — thanks! 🙏🏽",
    "Ünïcödé ключ 键 مفتاح",
    "Quotes \"double\" and 'single' and back\\slash",
)
_QUESTIONS = (
    "How do I reset my password?",
    "Where is my order #{n}?",
    "Summarise the attached contract in three bullet points.",
    "Can I get a refund for a damaged item?",
    "Translate this to French: the meeting moved to Thursday.",
    "What does error E{n} mean on the dashboard?",
    "Compare plan A and plan B pricing for {n} seats.",
)
_ANSWERS = (
    "You can reset it from Settings → Security → Reset password.",
    "Order #{n} shipped yesterday and should arrive within 2 business days.",
    "• Term: 24 months\n• Termination: 60 days notice\n• Liability capped at fees paid",
    "Yes, damaged items are refundable within 30 days; I have opened ticket {n}.",
    "La réunion a été déplacée à jeudi.",
    "E{n} means the upstream API timed out; retrying usually fixes it.",
    "Plan B is cheaper above {n} seats because of volume pricing.",
)


@dataclass(frozen=True)
class Demo:
    """What `generate_demo` made.

    Attributes:
        projects: the project objects, in creation order.
        experiments: every experiment object.
        datasets: every dataset object.
        row_counts: visible rows per (`project_logs`|`experiment`|`dataset`, object id).
        same_created: the `created` value shared by `SAME_CREATED_RUN` log rows of projects[0].
        large_row_ids: ids of the rows with 200-400 KB payloads.
        merged_row_ids: ids of log rows annotated by merge writes after their insert.
        deleted_row_ids: ids of log rows that were deleted (tombstoned).
        end: the moment the history was written up to (its last write is an hour before).
    """

    projects: tuple[dict[str, Any], ...]
    experiments: tuple[dict[str, Any], ...]
    datasets: tuple[dict[str, Any], ...]
    row_counts: dict[tuple[RowSource, str], int]
    same_created: str
    large_row_ids: tuple[str, ...]
    merged_row_ids: tuple[str, ...]
    deleted_row_ids: tuple[str, ...]
    end: float


class _Maker:
    """Seeded builders of ids, text and spans."""

    def __init__(self, seed: int, end: float) -> None:
        self.rng = random.Random(seed)
        self.end = end

    def uuid(self) -> str:
        return str(uuid.UUID(int=self.rng.getrandbits(128), version=4))

    def text(self, templates: tuple[str, ...]) -> str:
        return self.rng.choice(templates).format(n=self.rng.randint(100, 99999))

    def maybe(self, value: Any, chance: float = 0.5) -> Any:
        return value if self.rng.random() < chance else None

    def big_text(self, size: int) -> str:
        """A long multilingual document of about `size` bytes of JSON."""
        parts: list[str] = []
        length = 0
        while length < size:
            part = f"§{len(parts)} {self.rng.choice(_UNICODE)} {self.text(_ANSWERS)}\n"
            parts.append(part)
            length += len(json.dumps(part))
        return "".join(parts)

    def messages(self, question: str) -> list[dict[str, Any]]:
        return [
            {"role": "system", "content": "You are a helpful support assistant. Answer briefly."},
            {"role": "user", "content": question},
        ]

    def metrics(self, start: float, *, llm: bool) -> dict[str, Any]:
        duration = round(self.rng.uniform(0.05, 4.0), 3)
        metrics: dict[str, Any] = {"start": round(start, 3), "end": round(start + duration, 3)}
        if llm:
            prompt, completion = self.rng.randint(20, 2400), self.rng.randint(5, 800)
            metrics |= {
                "prompt_tokens": prompt,
                "completion_tokens": completion,
                "tokens": prompt + completion,
                "estimated_cost": round((prompt * 2.5 + completion * 10) / 1_000_000, 6),
            }
        return metrics

    def scores(self) -> dict[str, Any]:
        return {
            "accuracy": self.maybe(round(self.rng.random(), 3), 0.8),
            "factuality": self.maybe(round(self.rng.random(), 3), 0.6),
            "user_rating": self.maybe(self.rng.choice((0.0, 0.5, 1.0)), 0.15),
        }

    def trace(self, created: float, *, root_type: str, max_spans: int = 6) -> list[dict[str, Any]]:
        """A root span and up to `max_spans - 1` children, each child under an earlier span."""
        question = self.text(_QUESTIONS)
        if self.rng.random() < 0.3:
            question = f"{question} {self.rng.choice(_UNICODE)}"
        root_id = self.uuid()
        failed = self.rng.random() < 0.05
        root: dict[str, Any] = {
            "id": self.uuid(),
            "created": iso_ms(created),
            "span_id": root_id,
            "root_span_id": root_id,
            "span_parents": None,
            "is_root": True,
            "input": {
                "question": question,
                "locale": self.maybe(self.rng.choice(("en-US", "fr-FR", "ja-JP"))),
            },
            "output": None if failed else self.text(_ANSWERS),
            "expected": self.maybe(self.text(_ANSWERS), 0.1),
            "error": "RateLimitError: 429 Too Many Requests from upstream model"
            if failed
            else None,
            "scores": self.scores(),
            "metrics": self.metrics(created, llm=False),
            "metadata": {
                "model": self.rng.choice(_MODELS),
                "environment": self.rng.choice(_ENVIRONMENTS),
                "session": {"id": self.uuid()[:8], "turn": self.rng.randint(1, 9)},
            },
            "tags": self.maybe(sorted(self.rng.sample(_TAGS, self.rng.randint(1, 2))), 0.4),
            "span_attributes": {"name": "handle_request", "type": root_type},
        }
        spans = [root]
        for index in range(self.rng.randint(1, max_spans) - 1):
            parent = self.rng.choice(spans)
            spans.append(self.child(root, parent, created + 0.01 * (index + 1), question))
        return spans

    def child(
        self, root: dict[str, Any], parent: dict[str, Any], created: float, question: str
    ) -> dict[str, Any]:
        kind = self.rng.choice(("llm", "llm", "tool", "function", "score"))
        span_id = self.uuid()
        span: dict[str, Any] = {
            "id": self.uuid(),
            "created": iso_ms(created),
            "span_id": span_id,
            "root_span_id": root["span_id"],
            "span_parents": [parent["span_id"]],
            "is_root": False,
            "metrics": self.metrics(created, llm=kind == "llm"),
            "span_attributes": {
                "name": kind if kind != "tool" else self.rng.choice(_TOOLS),
                "type": kind,
            },
        }
        if kind == "llm":
            tool = self.rng.choice(_TOOLS)
            span["input"] = {
                "messages": self.messages(question),
                "tools": [{"type": "function", "function": {"name": tool}}],
            }
            span["output"] = {
                "role": "assistant",
                "content": self.maybe(self.text(_ANSWERS), 0.7),
                "tool_calls": self.maybe(
                    [
                        {
                            "id": f"call_{self.uuid()[:12]}",
                            "type": "function",
                            "function": {
                                "name": tool,
                                "arguments": json.dumps({"query": question}),
                            },
                        }
                    ],
                    0.4,
                ),
            }
            span["metadata"] = {
                "model": self.rng.choice(_MODELS[:-1]),
                "temperature": self.rng.choice((0, 0.2, 0.7)),
            }
        elif kind == "score":
            value = round(self.rng.random(), 3)
            span["input"] = {"output": root["output"], "expected": root["expected"]}
            span["output"] = {
                "score": value,
                "rationale": self.maybe("Matches the reference answer."),
            }
            span["scores"] = {"factuality": value}
        else:
            span["input"] = {"query": question, "top_k": self.rng.randint(1, 8)}
            span["output"] = [
                {
                    "doc_id": self.uuid()[:8],
                    "title": self.rng.choice(_UNICODE),
                    "score": round(self.rng.random(), 4),
                }
                for _ in range(self.rng.randint(0, 3))
            ]
        return span

    def record(self, created: float) -> dict[str, Any]:
        question = self.text(_QUESTIONS)
        span_id = self.uuid()
        return {
            "id": self.uuid(),
            "created": iso_ms(created),
            "span_id": span_id,
            "root_span_id": span_id,
            "is_root": True,
            "input": {"question": question, "context": self.maybe(self.rng.choice(_UNICODE))},
            "expected": self.maybe(self.text(_ANSWERS), 0.9),
            "metadata": self.maybe(
                {
                    "source": self.rng.choice(("prod-logs", "manual", "synthetic")),
                    "difficulty": self.rng.randint(1, 5),
                },
                0.8,
            ),
            "tags": self.maybe(sorted(self.rng.sample(_TAGS, 2)), 0.3),
        }


def generate_demo(
    store: Store, *, seed: int = 7, org_name: str | None = None, end: float | None = None
) -> Demo:
    """Three projects with logs, two experiments and one or two datasets each, as history.

    Every write happens in the past on a stand-in for the store's clock, so `_xact_id`s look
    like history: the data is written oldest project first, a second per write, from two
    hours before `end` (default: the store clock, whole second); `created` values lie in the
    week before that (objects' in the months before), so no row is written before it was
    created, and shuffled batches still make late rows. The last write, alone an hour before
    `end`, is the clean-up deleting two log spans per project: it leaves no rows, so a
    lookback of minutes before it (where a run that read everything leaves its watermark)
    holds nothing to send again. Project 0 has the run of rows sharing one `created`; one
    large payload lives in each project (a log row, a dataset record, an experiment row).
    The projects go to `org_name`, else the store's first org; a store without orgs gets
    `acme` (the emulator's default). Meant for a fresh store: a store's `_xact_id`s never go
    down, so earlier writes would pull these up.
    """
    if not store.orgs():
        store.add_org(org_name or "acme")
    end = float(int(store.clock())) if end is None else end
    maker = _Maker(seed, end - HISTORY_QUIET - _DEMO_CLEANUP_AFTER)
    moments = itertools.count(maker.end + _DEMO_WRITE_STEP, _DEMO_WRITE_STEP)

    def write(writes: list[Callable[[], str]]) -> None:
        """Make the writes in order, each a step after the last."""
        _write_in_the_past(store, [(next(moments), one) for one in writes])

    day = 86_400.0
    projects: list[dict[str, Any]] = []
    experiments: list[dict[str, Any]] = []
    datasets: list[dict[str, Any]] = []
    large: list[str] = []
    merged: list[str] = []
    deleted: list[str] = []
    cleanup: list[Callable[[], str]] = []
    same_created_at = maker.end - 2 * day + 0.123
    for index, (name, target) in enumerate(zip(PROJECT_NAMES, _LOG_TARGETS, strict=True)):
        project = store.add_project(
            name,
            org_name=org_name,
            id=maker.uuid(),
            created=maker.end - (90 - 20 * index) * day,
            description=maker.maybe(f"Demo project {index} {maker.rng.choice(_UNICODE)}"),
            user_id=maker.uuid(),
            settings={"comparison_key": "input.question"} if index == 0 else None,
        )
        projects.append(project)
        logs, annotated, doomed = _demo_logs(
            store, maker, project["id"], target, same_created_at if index == 0 else None
        )
        write(logs)
        merged += annotated
        deleted += doomed
        cleanup.append(partial(store.delete_rows, "project_logs", project["id"], doomed))
        big_object = ("project_logs", "dataset", "experiment")[index]
        project_datasets = len(datasets)
        for number in range(1 + index % 2):
            dataset = store.add_dataset(
                project["id"],
                f"golden-set-{number + 1}",
                id=maker.uuid(),
                created=maker.end - (30 - number) * day,
                description=maker.maybe("Curated support questions ✓"),
                tags=maker.maybe(["curated"]),
                metadata={"owner": "support-team", "refresh": "weekly"},
                user_id=project["user_id"],
                url_slug=f"golden-set-{number + 1}",
            )
            datasets.append(dataset)
            writes, big = _demo_dataset(
                store, maker, dataset["id"], big=big_object == "dataset" and number == 0
            )
            write(writes)
            large += big
        previous: str | None = None
        for number, label in enumerate(("baseline", "candidate")):
            experiment_id = maker.uuid()
            description = maker.maybe("Nightly eval run")
            model = maker.rng.choice(_MODELS[:-1])
            commit = f"{maker.rng.getrandbits(160):040x}"
            experiment = store.add_experiment(
                project["id"],
                f"{label}-{number + 1}",
                id=experiment_id,
                created=maker.end - (10 - 3 * number) * day,
                description=description,
                metadata={"model": model},
                tags=[label],
                repo_info={"commit": commit, "branch": "main", "dirty": False},
                commit=commit,
                base_exp_id=previous,
                user_id=project["user_id"],
                # The candidate is an eval over the first golden set, with saved parameters.
                **(_eval_inputs(store, maker, datasets[project_datasets]) if number else {}),
            )
            previous = experiment["id"]
            experiments.append(experiment)
            writes, big = _demo_experiment(
                store, maker, experiment["id"], big=big_object == "experiment" and number == 0
            )
            write(writes)
            large += big
        if big_object == "project_logs":
            writes, big = _big_log_row(store, maker, project["id"])
            write(writes)
            large += big
    _write_in_the_past(store, [(end - HISTORY_QUIET, delete) for delete in cleanup])
    made: tuple[tuple[RowSource, list[dict[str, Any]]], ...] = (
        ("project_logs", projects),
        ("experiment", experiments),
        ("dataset", datasets),
    )
    counts = {
        (source, o["id"]): len(store.rows(source, o["id"])) for source, objs in made for o in objs
    }
    return Demo(
        tuple(projects),
        tuple(experiments),
        tuple(datasets),
        counts,
        iso_ms(same_created_at),
        tuple(large),
        tuple(merged),
        tuple(deleted),
        end,
    )


def _demo_logs(
    store: Store, maker: _Maker, project_id: str, target: int, same_created_at: float | None
) -> tuple[list[Callable[[], str]], list[str], list[str]]:
    """Traces inserted in shuffled batches (late rows), then annotated, attached, commented.

    Returns those writes in order, the annotated roots' ids and two span ids to delete (the
    caller's clean-up). With `same_created_at`, a bulk import of single-span traces sharing
    that `created` lands half-way through the inserts.
    """
    rng = maker.rng
    writes: list[Callable[[], str]] = []
    batch_import = []
    if same_created_at is not None:
        batch_import = [
            maker.trace(same_created_at, root_type="task", max_spans=1)
            for _ in range(SAME_CREATED_RUN)
        ]
    total = len(batch_import)
    traces: list[list[dict[str, Any]]] = []
    while total < target:
        trace = maker.trace(
            maker.end - rng.uniform(0, 7 * 86_400.0), root_type=rng.choice(("task", "function"))
        )
        traces.append(trace)
        total += len(trace)
    rng.shuffle(traces)
    position = 0
    while position < len(traces):
        size = rng.randint(3, 12)
        spans = [span for trace in traces[position : position + size] for span in trace]
        writes.append(partial(store.insert_rows, "project_logs", project_id, spans))
        position += size
        if batch_import and position > len(traces) // 2:
            spans = [span for trace in batch_import for span in trace]
            writes.append(partial(store.insert_rows, "project_logs", project_id, spans))
            batch_import = []
    roots = [trace[0] for trace in traces]
    annotated = rng.sample(roots, max(3, len(roots) // 20))
    annotations = [
        {
            "id": root["id"],
            "scores": {"user_rating": rng.choice((0.0, 1.0))},
            "metadata": {"user_correction": rng.random() < 0.5},
            "tags": sorted({*(root["tags"] or []), "annotated"}),
            "expected": maker.maybe(maker.text(_ANSWERS), 0.5),
        }
        for root in annotated
    ]
    writes.append(partial(store.merge_rows, "project_logs", project_id, annotations))
    attachment = {
        "type": "braintrust_attachment",
        "key": f"attachments/{maker.uuid()}.png",
        "filename": "screenshot.png",
        "content_type": "image/png",
    }
    attach = {"id": annotated[0]["id"], "input": {"screenshot": attachment}}
    writes.append(partial(store.merge_rows, "project_logs", project_id, [attach]))
    for root in annotated[:3]:
        text = f"Checked by QA {rng.choice(_UNICODE)}"
        writes.append(partial(store.add_comment, "project_logs", project_id, root["id"], text))
    survivors = [trace for trace in traces if trace[0] not in annotated and len(trace) > 1]
    doomed = [trace[-1]["id"] for trace in rng.sample(survivors, 2)]
    return writes, [root["id"] for root in annotated], doomed


def _demo_experiment(
    store: Store, maker: _Maker, experiment_id: str, *, big: bool
) -> tuple[list[Callable[[], str]], list[str]]:
    """An eval run's rows, logged in one write; the write, and the large row's id if `big`."""
    rows = [
        span
        for _ in range(maker.rng.randint(8, 14))
        for span in maker.trace(
            maker.end - maker.rng.uniform(9, 10) * 86_400.0, root_type="eval", max_spans=4
        )
    ]
    if big:
        rows[0]["expected"] = maker.big_text(220_000)
    write = partial(store.insert_rows, "experiment", experiment_id, rows)
    return [write], [rows[0]["id"]] if big else []


def _demo_dataset(
    store: Store, maker: _Maker, dataset_id: str, *, big: bool
) -> tuple[list[Callable[[], str]], list[str]]:
    """Records added in two writes, one edited after; the writes, and the large record's id."""
    records = [
        maker.record(maker.end - maker.rng.uniform(20, 30) * 86_400.0)
        for _ in range(maker.rng.randint(20, 40))
    ]
    if big:
        records[0]["input"] = {"document": maker.big_text(260_000), "question": "Summarise this."}
    half = len(records) // 2
    edit = {"expected": "Corrected answer ✓", "metadata": {"reviewed": True}}
    writes: list[Callable[[], str]] = [
        partial(store.insert_rows, "dataset", dataset_id, records[:half]),
        partial(store.insert_rows, "dataset", dataset_id, records[half:]),
        partial(store.merge_rows, "dataset", dataset_id, [{"id": records[1]["id"], **edit}]),
    ]
    return writes, [records[0]["id"]] if big else []


def _eval_inputs(store: Store, maker: _Maker, dataset: dict[str, Any]) -> dict[str, Any]:
    """What an experiment records about the dataset and parameters it ran with."""
    versions = [int(row["_xact_id"]) for row in store.rows("dataset", dataset["id"])]
    return {
        "dataset_id": dataset["id"],
        "dataset_version": str(max(versions)),
        "parameters_id": maker.uuid(),
        "parameters_version": str(max(versions) - 1),
        "internal_metadata": {"source": "eval", "runner": "braintrust-py"},
    }


def _big_log_row(
    store: Store, maker: _Maker, project_id: str
) -> tuple[list[Callable[[], str]], list[str]]:
    """A log span with a 380 KB output; its write and its id."""
    trace = maker.trace(maker.end - 3 * 86_400.0, root_type="task", max_spans=1)
    trace[0]["output"] = maker.big_text(380_000)
    return [partial(store.insert_rows, "project_logs", project_id, trace)], [str(trace[0]["id"])]


def generate_logs(  # noqa: PLR0913
    store: Store,
    project_id: str,
    n: int,
    *,
    seed: int = 7,
    row_bytes: int = 1500,
    dataset_id: str | None = None,
) -> None:
    """Bulk log rows (traces of 1-3 spans) of about `row_bytes` of JSON each, 1000 per write.

    Fast enough for benchmarks: 200,000 rows take seconds, not minutes. With `dataset_id`,
    each row is also written to that dataset as a record (its `input`, `output` as
    `expected`, `metadata` and `tags`), so a dataset reader sees the same payloads.
    """
    rng = random.Random(seed)
    end = float(int(store.clock()))
    padding = max(0, row_bytes - _BULK_ROW_BASE_BYTES)
    words = " ".join(rng.choice(_ANSWERS) for _ in range(64)).encode("ascii", "ignore").decode()
    filler = words * (1 + padding // len(words))
    questions = [q.format(n=i) for i, q in enumerate(_QUESTIONS * 20)]
    answers = [a.format(n=i) for i, a in enumerate(_ANSWERS * 20)]
    batch: list[dict[str, Any]] = []
    created = end - n * 0.5
    source: RowSource = "project_logs"
    made = 0
    while made < n:
        spans = min(rng.randint(1, 3), n - made)
        root = str(uuid.UUID(int=rng.getrandbits(128), version=4))
        for index in range(spans):
            created += rng.uniform(0.0, 1.0)
            span_id = root if index == 0 else str(uuid.UUID(int=rng.getrandbits(128), version=4))
            offset = rng.randrange(0, max(1, len(filler) - padding))
            start = created - 1.5
            batch.append(
                {
                    "id": str(uuid.UUID(int=rng.getrandbits(128), version=4)),
                    "created": iso_ms(created),
                    "span_id": span_id,
                    "root_span_id": root,
                    "span_parents": None if index == 0 else [root],
                    "is_root": index == 0,
                    "input": {"messages": [{"role": "user", "content": rng.choice(questions)}]},
                    "output": {
                        "role": "assistant",
                        "content": rng.choice(answers),
                        "notes": filler[offset : offset + padding],
                    },
                    "scores": {"accuracy": round(rng.random(), 3), "user_rating": None},
                    "metrics": {
                        "start": round(start, 3),
                        "end": round(created, 3),
                        "tokens": rng.randint(10, 4000),
                    },
                    "metadata": {
                        "model": rng.choice(_MODELS),
                        "environment": rng.choice(_ENVIRONMENTS),
                    },
                    "tags": None,
                    "span_attributes": {
                        "name": "llm" if index else "handle_request",
                        "type": "llm" if index else "task",
                    },
                }
            )
        made += spans
        if len(batch) >= 1000 or made >= n:
            store.insert_rows(source, project_id, batch)
            if dataset_id is not None:
                store.insert_rows("dataset", dataset_id, [_as_dataset_record(r) for r in batch])
            batch = []


def _as_dataset_record(span: dict[str, Any]) -> dict[str, Any]:
    """A log span as the dataset record a team would curate from it."""
    return {
        "id": span["id"],
        "created": span["created"],
        "input": span["input"],
        "expected": span["output"],
        "metadata": span["metadata"],
        "tags": span["tags"],
    }


# A wide org: many small objects, for counting requests --------------------------------------

WIDE_PROJECT_NAMES = (
    "support-bot",
    "rag-search",
    "code-review",
    "summarizer",
    "sales-agent",
    "ticket-triage",
    "translation",
    "onboarding-coach",
)
_DAY = 86_400.0
_ANNOTATIONS: dict[RowSource, tuple[str, ...]] = {
    "project_logs": ("score", "expected", "tag", "comment"),
    "experiment": ("score", "expected", "tag", "comment"),
    "dataset": ("expected", "tag", "comment"),  # dataset records have no `scores`
}


@dataclass(frozen=True)
class WideOrg:
    """What `generate_wide_org` made: object ids in creation order, visible rows per object.

    Attributes:
        projects: project ids.
        experiments: experiment ids.
        datasets: dataset ids.
        row_counts: visible rows per (`project_logs`|`experiment`|`dataset`, object id).
        end: the moment the history was written up to (its writes stop an hour before).
    """

    projects: tuple[str, ...]
    experiments: tuple[str, ...]
    datasets: tuple[str, ...]
    row_counts: dict[tuple[RowSource, str], int]
    end: float

    def object_ids(self, source: RowSource) -> tuple[str, ...]:
        """The ids a row source takes: projects for `project_logs`."""
        by_source = {
            "project_logs": self.projects,
            "experiment": self.experiments,
            "dataset": self.datasets,
        }
        return by_source[source]

    def rows(self, source: RowSource | None = None) -> int:
        """Visible rows of one row source, or of all three."""
        return sum(n for (s, _), n in self.row_counts.items() if source in {None, s})


@dataclass(frozen=True)
class SmallChange:
    """What `wide_org_small_change` wrote, as (row source, object id, row id) keys.

    Attributes:
        annotated: rows given a score, a corrected `expected`, a tag or a comment.
        new_log_rows: log rows inserted.
    """

    annotated: tuple[tuple[RowSource, str, str], ...]
    new_log_rows: tuple[tuple[RowSource, str, str], ...]

    @property
    def changed(self) -> frozenset[tuple[RowSource, str, str]]:
        """Every row the change touched: what the next incremental run must send."""
        return frozenset(self.annotated + self.new_log_rows)


class _PastClock:
    """Stands in for the store's clock while history is written, so `_xact_id`s carry its times."""

    def __init__(self, now: float) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def generate_wide_org(  # noqa: PLR0913
    store: Store,
    *,
    seed: int = 13,
    projects: int = 8,
    experiments_per_project: int = 40,
    datasets_per_project: int = 4,
    logs_per_project: int = 400,
    org_name: str | None = None,
    end: float | None = None,
) -> WideOrg:
    """An org of many small objects (issue 13's "wide org"), written as months of history.

    By default 8 projects of 400 log rows (1-3 KB each, traces logged over the last two
    weeks), 40 experiments of 9-60 rows each (eval runs over two months) and 4 datasets of
    15-50 small records each. Every write happens at its own past moment on the store's clock
    (swapped for the duration), so `created` and `_xact_id` both look like history and the
    last write is an hour before `end` (default: the store clock, whole second). Meant for a
    fresh store that is not serving yet: a store's `_xact_id`s never go down, so earlier writes
    would pull these up, and requests meanwhile would see the stand-in clock.
    """
    if not store.orgs():
        store.add_org(org_name or "acme")
    maker = _Maker(seed, float(int(store.clock())) if end is None else end)
    rng = maker.rng
    history = maker.end - HISTORY_QUIET
    writes: list[tuple[float, Callable[[], str]]] = []
    made: dict[RowSource, list[str]] = {source: [] for source in ROW_SOURCES}
    for index in range(projects):
        name = WIDE_PROJECT_NAMES[index % len(WIDE_PROJECT_NAMES)]
        project = store.add_project(
            name if index < len(WIDE_PROJECT_NAMES) else f"{name}-{index}",
            org_name=org_name,
            id=maker.uuid(),
            created=history - rng.uniform(90, 180) * _DAY,
            description=maker.maybe(f"{name} in production"),
            user_id=maker.uuid(),
        )
        made["project_logs"].append(project["id"])
        writes += _wide_logs(store, maker, project["id"], logs_per_project, history)
        for number in range(datasets_per_project):
            created = history - rng.uniform(40, 80) * _DAY
            dataset = store.add_dataset(
                project["id"],
                f"golden-set-{number + 1}",
                id=maker.uuid(),
                created=created,
                description=maker.maybe("Curated support questions"),
                metadata={"owner": "support-team"},
                user_id=project["user_id"],
            )
            made["dataset"].append(dataset["id"])
            writes += _wide_dataset(store, maker, dataset["id"], created)
        previous: str | None = None
        starts = sorted(
            history - rng.uniform(0.1, 60) * _DAY for _ in range(experiments_per_project)
        )
        for number, created in enumerate(starts):
            commit = f"{rng.getrandbits(160):040x}"
            experiment = store.add_experiment(
                project["id"],
                f"eval-{number + 1:03d}",
                id=maker.uuid(),
                created=created,
                description=maker.maybe("Nightly eval run", 0.3),
                metadata={"model": rng.choice(_MODELS[:-1])},
                tags=maker.maybe(["nightly"]),
                repo_info={"commit": commit, "branch": "main", "dirty": False},
                commit=commit,
                base_exp_id=previous,
                user_id=project["user_id"],
            )
            previous = experiment["id"]
            made["experiment"].append(experiment["id"])
            writes += _wide_experiment(store, maker, experiment["id"], created)
    _write_in_the_past(store, writes)
    counts = {
        (source, object_id): len(store.ordered(source, (object_id,), (("_xact_id", False),)).rows)
        for source, ids in made.items()
        for object_id in ids
    }
    return WideOrg(
        tuple(made["project_logs"]),
        tuple(made["experiment"]),
        tuple(made["dataset"]),
        counts,
        maker.end,
    )


def _write_in_the_past(store: Store, writes: list[tuple[float, Callable[[], str]]]) -> None:
    """Make each write at its moment, oldest first, on a stand-in for the store's clock."""
    clock = store.clock
    past = _PastClock(0.0)
    store.clock = past
    try:
        for moment, write in sorted(writes, key=lambda pair: pair[0]):
            past.now = moment
            write()
    finally:
        store.clock = clock


def _cut(traces: list[list[dict[str, Any]]], n: int) -> list[list[dict[str, Any]]]:
    """The traces holding exactly `n` spans: the last one loses its latest spans (still a tree)."""
    kept: list[list[dict[str, Any]]] = []
    total = 0
    for trace in traces:
        if total >= n:
            break
        kept.append(trace[: n - total])
        total += len(kept[-1])
    return kept


def _log_trace(maker: _Maker, created: float) -> list[dict[str, Any]]:
    """A production trace whose spans carry 1-3 KB each: chat history, retrieved context."""
    trace = maker.trace(created, root_type=maker.rng.choice(("task", "function")))
    for span in trace:
        missing = maker.rng.randint(1000, 3000) - len(json.dumps(span).encode())
        if missing <= 0:
            continue
        if span["span_attributes"]["type"] == "llm":
            turns: list[dict[str, Any]] = []
            while missing > 0:
                role = ("user", "assistant")[len(turns) % 2]
                content = maker.text(_QUESTIONS if role == "user" else _ANSWERS)
                turns.append({"role": role, "content": content})
                missing -= len(content) + 34
            span["input"]["messages"][1:1] = turns  # earlier turns of the conversation
        else:
            span["input"]["context"] = maker.big_text(missing)
    return trace


def _wide_logs(
    store: Store, maker: _Maker, project_id: str, n: int, history: float
) -> list[tuple[float, Callable[[], str]]]:
    """Two weeks of logging: traces flushed 1-4 at a time, a few late, a few annotated."""
    rng = maker.rng
    logged: list[tuple[float, list[dict[str, Any]]]] = []
    total = 0
    while total < n:
        moment = history - rng.uniform(0, 14) * _DAY
        late = rng.uniform(3600, 2 * _DAY) if rng.random() < 0.03 else 0.0  # a skewed clock
        logged.append((moment, _log_trace(maker, moment - late)))
        total += len(logged[-1][1])
    logged.sort(key=lambda pair: pair[0])
    moments = [moment for moment, _ in logged]
    traces = _cut([trace for _, trace in logged], n)
    writes: list[tuple[float, Callable[[], str]]] = []
    position = 0
    while position < len(traces):
        batch = traces[position : position + rng.randint(1, 4)]
        position += len(batch)
        flushed = moments[position - 1] + rng.uniform(0.5, 5)
        spans = [span for trace in batch for span in trace]
        writes.append((flushed, partial(store.insert_rows, "project_logs", project_id, spans)))
    for index in rng.sample(range(len(traces)), max(1, len(traces) // 25)):
        reviewed = moments[index] + rng.uniform(0, min(3 * _DAY, history - moments[index]))
        update = {"id": traces[index][0]["id"], "scores": {"user_rating": rng.choice((0.0, 1.0))}}
        writes.append((reviewed, partial(store.merge_rows, "project_logs", project_id, [update])))
    return writes


def _wide_experiment(
    store: Store, maker: _Maker, experiment_id: str, created: float
) -> list[tuple[float, Callable[[], str]]]:
    """An eval run of 9-60 rows, logged in two flushes within minutes of its creation."""
    rng = maker.rng
    n = rng.randint(9, 60)
    traces: list[list[dict[str, Any]]] = []
    while sum(map(len, traces)) < n:
        started = created + rng.uniform(1, 240)
        traces.append(maker.trace(started, root_type="eval", max_spans=4))
    rows = [span for trace in _cut(traces, n) for span in trace]
    half = len(rows) // 2
    return [
        (created + 120, partial(store.insert_rows, "experiment", experiment_id, rows[:half])),
        (created + 250, partial(store.insert_rows, "experiment", experiment_id, rows[half:])),
    ]


def _wide_dataset(
    store: Store, maker: _Maker, dataset_id: str, created: float
) -> list[tuple[float, Callable[[], str]]]:
    """15-50 small records, added in two sittings days apart, one edited later."""
    rng = maker.rng
    first = created + rng.uniform(60, 900)
    second = first + rng.uniform(1, 10) * _DAY
    records = [maker.record(first - rng.uniform(0, 60)) for _ in range(rng.randint(15, 50))]
    half = len(records) // 2
    for record in records[half:]:
        record["created"] = iso_ms(second)
    edit = {"id": records[0]["id"], "expected": "Corrected answer", "metadata": {"reviewed": True}}
    return [
        (first, partial(store.insert_rows, "dataset", dataset_id, records[:half])),
        (second, partial(store.insert_rows, "dataset", dataset_id, records[half:])),
        (
            second + rng.uniform(1, 20) * _DAY,
            partial(store.merge_rows, "dataset", dataset_id, [edit]),
        ),
    ]


def wide_org_small_change(
    store: Store, org: WideOrg, *, seed: int = 1, annotations: int = 28, new_log_rows: int = 20
) -> SmallChange:
    """Issue 13's "small change", written now (store clock): annotations and new log rows.

    `annotations` distinct rows, spread over log rows, experiment rows and dataset records in
    turn, each one merge write or comment as a reviewer makes them: a human score, a corrected
    `expected`, a tag, a comment (records have no scores). Then `new_log_rows` rows of fresh
    traces in random projects, one write per trace.
    """
    maker = _Maker(seed, float(int(store.clock())))
    rng = maker.rng
    annotated: list[tuple[RowSource, str, str]] = []
    for number in range(annotations):
        source = ROW_SOURCES[number % len(ROW_SOURCES)]
        object_id = rng.choice(org.object_ids(source))
        rows = [
            row
            for row in store.rows(source, object_id)
            if (source, object_id, row["id"]) not in annotated
        ]
        row = rng.choice(rows)
        kinds = _ANNOTATIONS[source]
        kind = kinds[number // len(ROW_SOURCES) % len(kinds)]
        update: dict[str, Any] = {"id": row["id"]}
        if kind == "score":
            update["scores"] = {"human_review": rng.choice((0.0, 0.5, 1.0))}
        elif kind == "expected":
            update["expected"] = f"Corrected by a reviewer: {maker.text(_ANSWERS)}"
        elif kind == "tag":
            update["tags"] = sorted({*(row.get("tags") or []), "reviewed"})
        if kind == "comment":
            store.add_comment(source, object_id, row["id"], f"Reviewer: {maker.text(_ANSWERS)}")
        else:
            store.merge_rows(source, object_id, [update])
        annotated.append((source, object_id, row["id"]))
    fresh: list[tuple[RowSource, str, str]] = []
    while len(fresh) < new_log_rows:
        project_id = rng.choice(org.projects)
        trace = _log_trace(maker, maker.end - rng.uniform(0, 30))[: new_log_rows - len(fresh)]
        store.insert_rows("project_logs", project_id, trace)
        fresh += [("project_logs", project_id, span["id"]) for span in trace]
    return SmallChange(tuple(annotated), tuple(fresh))
