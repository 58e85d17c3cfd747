"""Singer messages on stdout as JSON lines, encoded with msgspec and written in blocks.

The SDK's default writer encodes with simplejson and flushes stdout after every message,
which costs more than reading the row did. Here messages collect in one buffer that goes out
when it passes `FLUSH_BYTES`, with every STATE message (so a target sees a bookmark as soon
as the records before it), and at exit.
"""

from __future__ import annotations

import atexit
import sys
from typing import Any

import msgspec
from singer_sdk.singerlib import SingerMessageType
from singer_sdk.singerlib.encoding.base import GenericSingerWriter
from singer_sdk.singerlib.encoding.simple import Message
from singer_sdk.singerlib.json import serialize_json

if sys.version_info >= (3, 12):
    from typing import override
else:
    from typing_extensions import override

FLUSH_BYTES = 1 << 18
"""Bytes of messages held before they are written: large writes, little memory."""


def _other_types(value: Any) -> Any:
    """Encode what JSON has no type for (Decimals from the SDK's config parsing) as text."""
    return str(value)


_ENCODER = msgspec.json.Encoder(enc_hook=_other_types, decimal_format="number")


def _escaped(payload: dict[str, Any]) -> bytes:
    r"""A message holding a lone surrogate (text cut mid-character upstream), as text.

    Such text has no UTF-8 form: simplejson writes it as a \ud83d escape, so the value
    reaches the target unchanged. It knows nothing of fields kept as JSON text, so those are
    decoded first.
    """
    if isinstance(record := payload.get("record"), dict):
        record = {
            k: msgspec.json.decode(v) if isinstance(v, msgspec.Raw) else v
            for k, v in record.items()
        }
        payload = {**payload, "record": record}
    return serialize_json(payload).encode()


class BufferedMessageWriter(GenericSingerWriter[bytes, Message]):
    """Writes Singer messages to stdout in large blocks."""

    def __init__(self) -> None:
        """Start with an empty buffer, flushed at exit at the latest."""
        self._buffer = bytearray()
        atexit.register(self.flush)

    @override
    def serialize_message(self, message: Message) -> bytes:
        return self._encode(message.to_dict()) + b"\n"

    @override
    def write_message(self, message: Message) -> None:
        payload = message.to_dict()
        end = len(self._buffer)
        try:
            _ENCODER.encode_into(payload, self._buffer, -1)
        except UnicodeEncodeError:
            del self._buffer[end:]  # msgspec leaves what it wrote before failing
            self._buffer += _escaped(payload)
        self._buffer += b"\n"
        if message.type == SingerMessageType.STATE or len(self._buffer) >= FLUSH_BYTES:
            self.flush()

    def flush(self) -> None:
        """Write out what is buffered."""
        if self._buffer:
            sys.stdout.flush()  # anything printed as text goes first
            sys.stdout.buffer.write(self._buffer)
            sys.stdout.buffer.flush()
            self._buffer.clear()

    @staticmethod
    def _encode(payload: dict[str, Any]) -> bytes:
        try:
            return _ENCODER.encode(payload)
        except UnicodeEncodeError:
            return _escaped(payload)
