"""CloudEvents 1.0 attributes carried as Kafka headers (binary content mode).

Headers: ``ce_specversion``, ``ce_id`` (unique per event; the dedup key), ``ce_source``
(``/agency/<code>``), ``ce_type``, ``ce_time`` (RFC 3339) and ``content-type``.
"""

from __future__ import annotations

import datetime as dt
import uuid
from collections.abc import Iterable
from dataclasses import dataclass, field

from simpul.errors import InvalidMessage

SPECVERSION = "1.0"
CONTENT_TYPE = "application/avro"
REQUIRED = ("ce_specversion", "ce_id", "ce_source", "ce_type", "ce_time")

Headers = list[tuple[str, bytes]]


def utcnow() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def format_time(value: dt.datetime) -> str:
    if value.tzinfo is None:
        raise ValueError("ce_time must be timezone-aware")
    return value.astimezone(dt.UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def parse_time(text: str) -> dt.datetime:
    parsed = dt.datetime.fromisoformat(text)
    if parsed.tzinfo is None:
        raise ValueError("no UTC offset")
    return parsed.astimezone(dt.UTC)


@dataclass(frozen=True, slots=True)
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
        for name, raw in headers or ():
            if name in values and (name.startswith("ce_") or name == "content-type"):
                # Readers taking the first and the last copy would see two different events.
                raise InvalidMessage("headers", "header.repeated", f"{name}: header repeated")
            if name in values or raw is None:
                continue
            try:
                values[name] = raw.decode("utf-8")
            except UnicodeDecodeError:
                raise InvalidMessage(
                    "headers", "header.encoding", f"{name}: header is not UTF-8"
                ) from None
        for name in REQUIRED:
            if not values.get(name):
                raise InvalidMessage("headers", "header.missing", f"{name}: header missing")
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


def without_simpul_headers(headers: Iterable[tuple[str, bytes]]) -> Headers:
    """The headers less every ``simpul_*`` one. That prefix is Simpul's: what a producer sent
    under it is dropped at ingest, and every stage that adds its own starts from this."""
    return [(k, v) for k, v in headers if not k.startswith(SIMPUL_HEADER_PREFIX)]
