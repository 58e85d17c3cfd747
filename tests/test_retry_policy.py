"""The retry arithmetic on its own: Retry-After parsing, backoff bounds, page-size steps."""

from __future__ import annotations

from email.utils import formatdate

import pytest
import requests

from tap_braintrust.client import PageSize
from tap_braintrust.transport import RetryPolicy, retry_after_seconds

NOW = 1_795_000_000.0
POLICY = RetryPolicy(max_tries=10, max_backoff_seconds=8, max_retry_after_seconds=300)


@pytest.mark.parametrize(
    ("header", "seconds"),
    [
        ("120", 120.0),
        (" 7 ", 7.0),
        ("1.5", 1.5),
        ("0", 0.0),
        (formatdate(NOW + 30, usegmt=True), 30.0),
        (formatdate(NOW - 30, usegmt=True), 0.0),  # a date already past: go now
        ("-3", None),
        ("nan", None),
        ("inf", None),
        ("in a minute", None),
        ("", None),
        (None, None),
    ],
)
def test_retry_after_reads_seconds_or_an_http_date(
    header: str | None, seconds: float | None
) -> None:
    assert retry_after_seconds(header, NOW) == seconds


def _response(retry_after: str | None) -> requests.Response:
    response = requests.Response()
    response.status_code = 429
    if retry_after is not None:
        response.headers["Retry-After"] = retry_after
    return response


def test_retry_after_is_honoured_up_to_the_cap() -> None:
    assert POLICY.wait(1, _response("12")) == 12.0
    assert POLICY.wait(1, _response("3600")) == 300.0
    no_cap = RetryPolicy(max_tries=10, max_backoff_seconds=8, max_retry_after_seconds=0)
    assert max(no_cap.wait(4, _response("60")) for _ in range(100)) > 1.0  # backoff, no burst


@pytest.mark.parametrize("header", ["0", formatdate(0, usegmt=True)])
def test_retry_after_asking_for_no_wait_backs_off_instead(header: str) -> None:
    # Retrying at once would spend every try in a burst (a clock ahead of the server's
    # turns a date a second away into "now").
    waits = [POLICY.wait(4, _response(header)) for _ in range(100)]
    assert max(waits) > 1.0
    assert all(wait <= 8.0 for wait in waits)


def test_without_retry_after_the_wait_is_jittered_exponential_and_capped() -> None:
    for tries, ceiling in ((1, 1.0), (2, 2.0), (3, 4.0), (4, 8.0), (9, 8.0)):
        waits = [POLICY.wait(tries, _response(None)) for _ in range(200)]
        assert all(0.0 <= wait <= ceiling for wait in waits), tries
        assert max(waits) > ceiling / 2  # spread over the range, not a fixed wait
        assert len(set(waits)) > 100
    assert POLICY.wait(3, None) <= 4.0  # no answer at all (a dropped connection)


def test_a_page_halves_down_to_one_row_then_cannot_shrink() -> None:
    page = PageSize(1000)
    steps = []
    while (size := page.shrink()) is not None:
        steps.append(size)
    assert steps == [500, 250, 125, 62, 31, 15, 7, 3, 1]
    assert page.current == 1


def test_a_page_grows_back_after_good_pages_but_never_past_the_setting() -> None:
    page = PageSize(300)
    page.shrink()
    page.shrink()
    assert page.current == 75
    sizes = []
    for _ in range(3 * PageSize.GROW_AFTER):
        page.succeeded()
        sizes.append(page.current)
    grow = PageSize.GROW_AFTER
    assert sizes == [75] * (grow - 1) + [150] * grow + [300] * (grow + 1)
    page.shrink()
    for _ in range(grow - 1):
        page.succeeded()
    assert page.current == 150  # a failure restarts the count
