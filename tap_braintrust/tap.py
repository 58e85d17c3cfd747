"""tap-braintrust: settings, their validation, and the list of streams."""

from __future__ import annotations

import io
import os
import re
import ssl
import sys
from difflib import get_close_matches
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any
from urllib.parse import urlsplit

import click
from singer_sdk import Tap
from singer_sdk import typing as th
from singer_sdk.exceptions import ConfigValidationError, FatalAPIError

from tap_braintrust import streams
from tap_braintrust.custom import read_custom_streams
from tap_braintrust.errors import redact
from tap_braintrust.inputs import InputFileError, check_catalog, check_state, read_json_object
from tap_braintrust.timestamps import parse_timestamp
from tap_braintrust.transport import Transport
from tap_braintrust.writer import BufferedMessageWriter

if sys.version_info >= (3, 12):
    from typing import override
else:
    from typing_extensions import override

if TYPE_CHECKING:
    from collections.abc import Callable, Collection, Mapping

    from singer_sdk.plugin_base import _ConfigInput
    from singer_sdk.streams import Stream

    from tap_braintrust.client import ObjectListingStream
    from tap_braintrust.queries import RowSource

DEFAULT_API_URL = "https://api.braintrust.dev"
_PRINTABLE_ASCII = re.compile(r"[\x21-\x7e]+")
_CONTROL_CHARACTERS = re.compile(r"[\x00-\x1f\x7f]")


DEFAULT_OBJECTS_PER_QUERY = 100
"""Measured on a wide org (README, Performance): see `objects_per_query`."""

PREFETCH_SWITCH_INTERVAL = 0.0005
"""Seconds a thread may hold the GIL while another waits for it, during a run."""


_CUSTOM_STREAM_KEYS: tuple[tuple[str, th.JSONTypeHelper[Any], str], ...] = (
    ("name", th.StringType(), "The stream's name."),
    (
        "from",
        th.StringType(),
        (
            "Row stream: project_logs, experiment or dataset (the rows of every object of "
            "that kind in the selected projects)."
        ),
    ),
    (
        "object_ids",
        th.ArrayType(th.StringType),
        "Row stream: only these experiments, datasets or projects.",
    ),
    ("filter", th.StringType(), "Row stream: a BTQL expression, as in Braintrust's UI."),
    (
        "select",
        th.ArrayType(th.StringType),
        "Row stream: field paths to keep, named by their last part.",
    ),
    ("shape", th.StringType(), "Row stream: spans (default), traces or summary."),
    ("sql", th.StringType(), "Report stream: a SQL query, its answer replaced each run."),
    (
        "primary_keys",
        th.ArrayType(th.StringType),
        "Report stream: the columns that identify a row.",
    ),
    ("tz_offset", th.IntegerType(), "Report stream: minutes west of UTC for day boundaries."),
)
"""The keys of a `custom_streams` item; custom.py checks them, naming the stream."""


class TapBraintrust(Tap):
    """Singer tap for Braintrust projects, experiments, datasets and their rows."""

    name = "tap-braintrust"
    message_writer_class = BufferedMessageWriter

    config_jsonschema = th.PropertiesList(
        th.Property(
            "api_key",
            th.StringType(min_length=1),
            required=True,
            secret=True,
            title="API key",
            description="Braintrust API key (`sk-...`), sent as a Bearer token.",
        ),
        th.Property(
            "api_url",
            th.StringType(min_length=1),
            default=DEFAULT_API_URL,
            title="API URL",
            description=(
                "Data plane base URL: https://api.braintrust.dev (US), "
                "https://api-eu.braintrust.dev (EU) or a self-hosted data plane."
            ),
        ),
        th.Property(
            "org_name",
            th.StringType(min_length=1),
            title="Organization name",
            description="For keys that belong to several orgs: the org to read.",
        ),
        th.Property(
            "start_date",
            th.DateTimeType,
            title="Start date",
            description=(
                "Earliest `created` time of rows to sync (ISO-8601); unset means all history. "
                "Projects, experiments and datasets are always read whole."
            ),
        ),
        th.Property(
            "project_ids",
            th.ArrayType(th.StringType(min_length=1)),
            title="Project ids",
            description="Only these projects and everything in them.",
        ),
        th.Property(
            "project_names",
            th.ArrayType(th.StringType(min_length=1)),
            title="Project names",
            description="Only these projects, by name; combines with `project_ids`.",
        ),
        th.Property(
            "page_size",
            th.IntegerType(minimum=1, maximum=1000),
            default=1000,
            title="Page size",
            description="Objects or rows asked for per request (1 to 1000).",
        ),
        th.Property(
            "objects_per_query",
            th.IntegerType(minimum=1, maximum=1000),
            default=DEFAULT_OBJECTS_PER_QUERY,
            title="Objects per query",
            description=(
                "Most projects, experiments or datasets whose rows one `/btql` query reads "
                "(objects at different watermarks go in different queries). Fewer cost more "
                "requests; more make each query bigger. Halved for the rest of a run when "
                "Braintrust refuses or keeps failing a query that wide."
            ),
        ),
        th.Property(
            "keyset_paging",
            th.BooleanType,
            default=False,
            title="Keyset paging",
            description=(
                "Never follow Braintrust's cursor in row reads: trace summaries then page by "
                "the traces not yet answered (rows and whole traces always page by keyset, "
                "after the last row's keys). For a self-hosted data plane whose cursor "
                "misbehaves. Reports still follow the cursor when one comes."
            ),
        ),
        th.Property(
            "detect_deletes",
            th.BooleanType,
            default=True,
            title="Detect deletes",
            description=(
                "Mark what was deleted in Braintrust since an earlier run: experiment and "
                "dataset rows (sent again, as last read, with `_sdc_deleted_at`) and "
                "projects, experiments and datasets no longer listed. Costs a count query "
                "or two per run for each kind of row; project logs and custom streams are "
                "never marked. See the README's Deleted rows and objects."
            ),
        ),
        th.Property(
            "max_deleted_share",
            th.NumberType(minimum=0, maximum=1),
            default=0.5,
            title="Max deleted share",
            description=(
                "Most share of the selected projects, experiments or datasets that earlier "
                "runs delivered which one run marks deleted; more, and it marks none, with a "
                "warning (a wrong `org_name` or key unlists everything). 1 allows any."
            ),
        ),
        th.Property(
            "lookback_seconds",
            th.IntegerType(minimum=0, maximum=86400),
            default=60,
            title="Lookback seconds",
            description=(
                "Each incremental run re-reads rows written this many seconds before the "
                "last run's `_xact_id` watermark, for writes that became visible late; "
                "rows in that window are sent again."
            ),
        ),
        th.Property(
            "request_timeout",
            th.IntegerType(minimum=1),
            default=60,
            title="Request timeout",
            description="Seconds to wait for one HTTP response before retrying.",
        ),
        th.Property(
            "max_tries",
            th.IntegerType(minimum=1, maximum=100),
            default=10,
            title="Max tries",
            description=(
                "Tries per request, the first included, before a transient failure (429, "
                "5xx, timeout, dropped connection, broken body) fails the run."
            ),
        ),
        th.Property(
            "max_backoff_seconds",
            th.NumberType(minimum=0, maximum=3600),
            default=60,
            title="Max backoff seconds",
            description=(
                "Longest wait between tries; waits are random (full jitter) up to 1, 2, 4, "
                "... seconds, capped here."
            ),
        ),
        th.Property(
            "max_retry_after_seconds",
            th.NumberType(minimum=0, maximum=3600),
            default=300,
            title="Max Retry-After seconds",
            description=(
                "Longest wait honoured from a 429's `Retry-After` (seconds or HTTP date); "
                "a longer one is cut to this before the retry."
            ),
        ),
        th.Property(
            "max_requests_per_minute",
            th.IntegerType(minimum=1),
            title="Max requests per minute",
            description=(
                "Client-side budget: requests (retries included) are spaced so no minute "
                "holds more. Unset: paced only after a 429, at the rate it teaches. Hosted "
                "Free/Pro plans allow about 20 `/btql` requests a minute."
            ),
        ),
        th.Property(
            "ca_bundle",
            th.StringType(min_length=1),
            title="CA bundle",
            description=(
                "PEM file (or OpenSSL hashed directory) of the CA certificates to trust "
                "instead of the public ones (certifi's) for a self-hosted data plane with a "
                "private CA. TLS is always verified."
            ),
        ),
        th.Property(
            "json_fields_as_text",
            th.BooleanType,
            default=False,
            title="JSON fields as text",
            description=(
                "Send the free-form fields (`input`, `output`, `expected`, `error`, "
                "`metadata`, ...) as strings holding their JSON text instead of JSON values, "
                "for loaders that write a JSON scalar (a plain-string `output`) as invalid "
                "JSON: target-duckdb, pipelinewise-target-postgres. Off: target-postgres "
                "stores them as jsonb."
            ),
        ),
        th.Property(
            "custom_streams",
            th.ArrayType(
                th.ObjectType(
                    *(
                        th.Property(key, kind, description=description)
                        for key, kind, description in _CUSTOM_STREAM_KEYS
                    )
                )
            ),
            title="Custom streams",
            description=(
                "More streams: BTQL-filtered rows, selected columns, whole traces or trace "
                "summaries (with `from`), or SQL reports (with `sql`). See the README's "
                "Custom streams section."
            ),
        ),
    ).to_dict()

    @override
    def discover_streams(self) -> list[Stream]:
        # One transport for all streams: pooled connections, and one request budget. The row
        # streams read their objects' ids from the listings, so each is listed once a run.
        transport = Transport(self.config, self.logger)
        projects = streams.ProjectsStream(self, transport)
        experiments = streams.ExperimentsStream(self, transport, projects)
        datasets = streams.DatasetsStream(self, transport, projects)
        specs, _ = read_custom_streams(self.config.get("custom_streams"), STREAM_NAMES)
        listings: dict[RowSource, ObjectListingStream] = {
            "project_logs": projects,
            "experiment": experiments,
            "dataset": datasets,
        }
        return [
            projects,
            experiments,
            datasets,
            streams.ProjectLogsStream(self, transport, projects),
            streams.ExperimentEventsStream(self, transport, experiments),
            streams.DatasetEventsStream(self, transport, datasets),
            *streams.custom_streams(self, transport, specs, listings),
        ]

    @override
    def _validate_config(self, *, raise_errors: bool = True) -> list[str]:
        # The schema catches types and ranges; these catch values that type-check but
        # cannot work, and every problem is reported in one error.
        errors = super()._validate_config(raise_errors=False)
        errors += config_problems(self.config, self.config_jsonschema["properties"])
        if errors and raise_errors:
            summary = "Config validation failed"
            raise ConfigValidationError(summary, errors=errors, schema=self.config_jsonschema)
        return errors

    @override
    @classmethod
    def cb_config(
        cls, ctx: click.Context, param: click.Option, value: tuple[str, ...]
    ) -> _ConfigInput:
        for path in value:
            if path != "ENV":
                _read_input(Path(path).read_text, path, param="--config")
        return super().cb_config(ctx, param, value)

    @override
    @classmethod
    def invoke(
        cls,
        *,
        state: IO[str] | None = None,
        catalog: IO[str] | None = None,
        **kwargs: Any,
    ) -> None:
        # The SDK reads each file as it was; these only refuse a bad one first.
        if state is not None:
            text = _read_input(state.read, state.name, param="--state", check=check_state)
            state = io.StringIO(text)
        if catalog is not None:
            # The built-in streams set `name` on their class, custom ones come from the config.
            config = kwargs.get("config")
            custom = config.config.get("custom_streams") if config is not None else None
            names = {*STREAM_NAMES, *_custom_names(custom)}
            text = _read_input(
                catalog.read,
                catalog.name,
                param="--catalog",
                check=lambda parsed: check_catalog(parsed, names),
            )
            catalog = io.StringIO(text)
        # The thread that fetches the next page needs the GIL for a moment after every read
        # from the socket; at the default 5 ms switch interval it waits that long behind the
        # thread writing records each time, and the two stop overlapping (about 20% slower).
        switch_interval = sys.getswitchinterval()
        sys.setswitchinterval(PREFETCH_SWITCH_INTERVAL)
        try:
            super().invoke(state=state, catalog=catalog, **kwargs)
        except FatalAPIError as exc:
            # Already actionable (see client.py): one line, no traceback, and whatever it
            # quotes from a server, never the key, from a config file or the environment.
            message = redact(str(exc), os.environ.get("TAP_BRAINTRUST_API_KEY"))
            if (config := kwargs.get("config")) is not None:
                message = redact(message, config.config.get("api_key"))
            cls.logger.error("%s", message)  # noqa: TRY400
            sys.exit(1)
        finally:
            sys.setswitchinterval(switch_interval)


STREAM_NAMES = (
    "projects",
    "experiments",
    "datasets",
    "project_logs",
    "experiment_events",
    "dataset_events",
)
"""The streams `discover_streams` makes; a catalog may name only these."""


def _custom_names(custom_streams: Any) -> list[str]:
    """The names `custom_streams` defines (its problems are reported by config validation)."""
    specs, _ = read_custom_streams(custom_streams, STREAM_NAMES)
    return [spec.name for spec in specs]


def _read_input(
    read: Callable[[], str],
    name: str,
    *,
    param: str,
    check: Callable[[dict[str, Any]], None] | None = None,
) -> str:
    """An input file's text once it reads as a JSON object and passes `check`.

    Otherwise click's usage error (exit 2), naming the file and what is wrong.
    """
    try:
        text = read()
        parsed = read_json_object(text, name)
        if check is not None:
            check(parsed)
    except OSError as exc:
        msg = f"cannot read {name}: {exc.strerror or exc}"
    except UnicodeDecodeError as exc:
        msg = f"{name} is not UTF-8 text ({exc.reason} at byte {exc.start})"
    except InputFileError as exc:
        msg = str(exc)
    else:
        return text
    raise click.BadParameter(msg, param_hint=f"'{param}'")


def config_problems(
    config: Mapping[str, Any], properties: Mapping[str, Mapping[str, Any]]
) -> list[str]:
    """Problems with values that pass the JSON Schema (its `properties`) but cannot work."""
    problems = [_unknown_setting(name, properties) for name in config if name not in properties]
    problems += [
        f"{name} is null; remove it to use the default"
        for name, schema in properties.items()
        if "default" in schema and name in config and config[name] is None
    ]
    api_key = config.get("api_key")
    if isinstance(api_key, str) and api_key and not _PRINTABLE_ASCII.fullmatch(api_key):
        # Checked before any request: a line break in a header value ends up, key and
        # all, in the HTTP library's error message.
        problems.append("api_key must be the key alone: printable ASCII, no spaces or line breaks")
    org_name = config.get("org_name")
    if isinstance(org_name, str) and not _fits_a_header(org_name):
        problems.append(
            "org_name must be the org's name without surrounding spaces or control "
            "characters, in Latin-1 text (it is sent in the x-bt-org-name header)"
        )
    api_url = config.get("api_url")
    if isinstance(api_url, str):
        problems.extend(_api_url_problems(api_url))
    ca_bundle = config.get("ca_bundle")
    if isinstance(ca_bundle, str) and ca_bundle:
        problems.extend(_ca_bundle_problems(Path(ca_bundle)))
    start_date = config.get("start_date")
    if isinstance(start_date, str):
        try:
            parse_timestamp(start_date)
        except ValueError as exc:
            problems.append(f"start_date: {exc}")
    problems += read_custom_streams(config.get("custom_streams"), STREAM_NAMES)[1]
    for setting in ("project_ids", "project_names"):
        values = config.get(setting)
        if isinstance(values, list) and len(set(map(str, values))) != len(values):
            problems.append(f"{setting} lists a value more than once")
    return problems


def _unknown_setting(name: str, known_settings: Collection[str]) -> str:
    # Fatal rather than ignored: a misspelt `project_id` would otherwise sync every project.
    problem = f"unknown setting {name!r}"
    if close := get_close_matches(name, known_settings, n=1):
        problem += f" (did you mean {close[0]!r}?)"
    return problem


def _fits_a_header(value: str) -> bool:
    try:
        value.encode("latin-1")
    except UnicodeEncodeError:
        return False
    return value == value.strip() and not _CONTROL_CHARACTERS.search(value)


def _ca_bundle_problems(ca_bundle: Path) -> list[str]:
    # Loaded here: a file without a certificate would otherwise fail every TLS handshake.
    if not ca_bundle.exists():
        return [f"ca_bundle: no file or directory at {str(ca_bundle)!r}"]
    try:
        if ca_bundle.is_dir():
            ssl.create_default_context(capath=ca_bundle)
        else:
            ssl.create_default_context(cafile=ca_bundle)
    except (ssl.SSLError, OSError) as exc:
        return [f"ca_bundle: {str(ca_bundle)!r} holds no usable PEM certificate ({exc})"]
    return []


def _api_url_problems(api_url: str) -> list[str]:
    example = f"an http(s) base URL such as {DEFAULT_API_URL}"
    try:
        url = urlsplit(api_url)
        url.port  # noqa: B018 - reading it validates the port
    except ValueError as exc:
        return [f"api_url is not a valid URL ({exc}); it must be {example}"]
    if url.username or url.password:  # checked first: such a URL is not echoed
        return ["api_url must not carry credentials; put the key in api_key"]
    if url.scheme not in {"http", "https"} or not url.hostname or re.search(r"\s", api_url):
        return [f"api_url must be {example}, not {api_url!r}"]
    if url.query or url.fragment:
        return [f"api_url must be {example}, without a query string or fragment"]
    return []


if __name__ == "__main__":
    TapBraintrust.cli()
