"""CloudEvents 1.0 attributes carried as Kafka headers (binary content mode).

Headers: ``ce_specversion``, ``ce_id`` (unique per event; the dedup key), ``ce_source``
(``/agency/<code>``), ``ce_type``, ``ce_time`` (RFC 3339) and ``content-type``.
"""

from __future__ import annotations

import datetime as dt
import uuid
from collections.abc import Collection, Iterable
from dataclasses import dataclass, field

from simpul.errors import InvalidMessage

SPECVERSION = "1.0"
CONTENT_TYPE = "application/avro"
REQUIRED = ("ce_specversion", "ce_id", "ce_source", "ce_type", "ce_time")
#: Longest ``ce_id`` accepted: the width of ``event_log.ce_id`` and ``dead_letters.ce_id``, and
#: what bounds one entry of the dedup window.
MAX_ID_LENGTH = 255
#: Longest header value read as text; a CloudEvents attribute is never this long.
MAX_HEADER_LENGTH = 1024

Headers = list[tuple[str, bytes]]
_READ = frozenset((*REQUIRED, "content-type"))


def utcnow() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def format_time(value: dt.datetime) -> str:
    if value.tzinfo is None:
        raise ValueError("ce_time must be timezone-aware")
    return value.astimezone(dt.UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def parse_time(text: str) -> dt.datetime:
    """An RFC 3339 timestamp as an aware UTC datetime; `ValueError` for anything else.

    A well-formed time can still fall outside what a datetime holds once converted to UTC
    (``9999-12-31T23:59:59-01:00``): that is a `ValueError` too, never an `OverflowError`.
    """
    parsed = dt.datetime.fromisoformat(text)
    if parsed.tzinfo is None:
        raise ValueError("no UTC offset")
    try:
        return parsed.astimezone(dt.UTC)
    except OverflowError:
        raise ValueError("outside the years 1 to 9999 once converted to UTC") from None


# Not frozen: a frozen dataclass's __init__ costs 4x (made per event on the hot path).
@dataclass(slots=True)
class Envelope:
    """The CloudEvents context of one event; the payload travels as the Kafka value."""

    type: str
    source: str
    id: str = field(default_factory=lambda: str(uuid.uuid4()))
    time: dt.datetime = field(default_factory=utcnow)
    specversion: str = SPECVERSION

    @property
    def agency(self) -> str:
        return self.source.removeprefix("/agency/")

    def to_headers(self, extra: Iterable[tuple[str, bytes]] = ()) -> Headers:
        return [
            ("ce_specversion", self.specversion.encode()),
            ("ce_id", self.id.encode()),
            ("ce_source", self.source.encode()),
            ("ce_type", self.type.encode()),
            ("ce_time", format_time(self.time).encode()),
            ("content-type", CONTENT_TYPE.encode()),
            *extra,
        ]

    @classmethod
    def from_headers(cls, headers: Iterable[tuple[str, bytes | None]] | None) -> Envelope:
        """Parse headers, raising `InvalidMessage` naming the header that is wrong."""
        values: dict[str, str] = {}
        cloudevents: set[str] = set()
        for name, raw in headers or ():
            read = name in _READ
            if not read and not name.startswith("ce_"):
                continue  # other headers are the producer's own; only CloudEvents ones count
            if name in cloudevents:
                # Readers taking the first and the last copy would see two different events.
                raise InvalidMessage("headers", "header.repeated", f"{name[:40]}: header repeated")
            cloudevents.add(name)
            if raw is None or not read:
                continue
            if len(raw) > MAX_HEADER_LENGTH:
                raise InvalidMessage(
                    "headers",
                    "header.too_long",
                    f"{name[:40]}: header of {len(raw)} bytes exceeds {MAX_HEADER_LENGTH}",
                )
            try:
                text = raw.decode("utf-8")
            except UnicodeDecodeError:
                raise InvalidMessage(
                    "headers", "header.encoding", f"{name[:40]}: header is not UTF-8"
                ) from None
            if "\x00" in text:
                # No database text column holds NUL; it is never part of a CloudEvents value.
                raise InvalidMessage(
                    "headers", "header.nul", f"{name}: header contains a NUL character"
                )
            values[name] = text
        for name in REQUIRED:
            if not values.get(name):
                raise InvalidMessage("headers", "header.missing", f"{name}: header missing")
        if len(values["ce_id"]) > MAX_ID_LENGTH:
            raise InvalidMessage(
                "headers",
                "header.id_too_long",
                f"ce_id: {len(values['ce_id'])} characters exceeds the limit of {MAX_ID_LENGTH}",
            )
        if values["ce_specversion"] != SPECVERSION:
            raise InvalidMessage(
                "headers",
                "header.specversion",
                f"ce_specversion: {values['ce_specversion']!r} is not {SPECVERSION}",
            )
        if not values["ce_source"].startswith("/agency/"):
            raise InvalidMessage(
                "headers",
                "header.source",
                f"ce_source: {values['ce_source']!r} is not of the form /agency/<code>",
            )
        if (content_type := values.get("content-type")) and content_type != CONTENT_TYPE:
            raise InvalidMessage(
                "headers",
                "header.content_type",
                f"content-type: {content_type!r} is not {CONTENT_TYPE}",
            )
        try:
            time = parse_time(values["ce_time"])
        except ValueError as error:
            raise InvalidMessage(
                "headers",
                "header.time",
                f"ce_time: {values['ce_time']!r} is not an RFC 3339 timestamp ({error})",
            ) from None
        return cls(
            type=values["ce_type"],
            source=values["ce_source"],
            id=values["ce_id"],
            time=time,
            specversion=values["ce_specversion"],
        )


def header(headers: Iterable[tuple[str, bytes | None]] | None, name: str) -> str | None:
    for key, raw in headers or ():
        if key == name and raw is not None:
            return raw.decode("utf-8", errors="replace")
    return None


SIMPUL_HEADER_PREFIX = "simpul_"


def without_simpul_headers(
    headers: Iterable[tuple[str, bytes]], also: Collection[str] = ()
) -> Headers:
    """The headers less every ``simpul_*`` one, and less those named in ``also``, in one pass.
    That prefix is Simpul's: what a producer sent under it is dropped at ingest, and every
    stage that adds its own starts from this."""
    if not also:  # ingest's path, per event: the second test costs it 0.3 µs
        return [(k, v) for k, v in headers if not k.startswith(SIMPUL_HEADER_PREFIX)]
    return [(k, v) for k, v in headers if not k.startswith(SIMPUL_HEADER_PREFIX) and k not in also]
