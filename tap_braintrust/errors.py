"""The tap's error types and redaction, importable by every module without any HTTP code."""

from __future__ import annotations

from singer_sdk.exceptions import FatalAPIError


class BraintrustError(FatalAPIError):
    """A failure the user must act on: the message says what to do and holds no secret."""


class RequestAbandonedError(Exception):
    """A request given up between tries because its answer is no longer wanted."""


def redact(text: str, api_key: object) -> str:
    """`text` without the API key (a server may echo it back)."""
    return text.replace(api_key, "<api_key>") if isinstance(api_key, str) and api_key else text
