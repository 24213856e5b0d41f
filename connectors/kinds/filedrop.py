"""File drop: an agency puts CSV or JSON Lines files in a directory; each valid row is an event.

For example a kelurahan office's monthly export of issued letters. Files are picked up once
they have not changed for ``file.minimum.age.ms``. Every row is validated; the valid ones are
published, the bad ones are written to ``<file>.rejects.csv`` (line number and reason), and the
file moves to ``finished.path`` (done/) or, when no row could be published, ``error.path``
(failed/). A symbolic link is never followed and a file larger than ``file.max.bytes``
(default: the ``connect_file_max_bytes`` setting) is never read: either moves to failed/ with
the reason in its rejects file and counts in ``simpul_connector_files_refused_total``. Files
are hashed and parsed as streams, not read whole. A file whose content was processed before
(same SHA-256) is ignored: it moves to done/ as ``<name>.duplicate`` and nothing is published
again.

Delivery guarantee: at-least-once. The file's hash is recorded in the central store only after
the broker acked its rows, and each row's ``ce_id`` derives from the file's hash and the line
number, so a file re-read after a crash duplicates nothing the bus keeps. Under
``errors.tolerance: none`` a file with any bad row publishes nothing and moves to failed/.
"""

from __future__ import annotations

import csv
import errno
import hashlib
import io
import json
import os
import re
import stat
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, BinaryIO, Literal

from pydantic import BaseModel, ConfigDict, Field

from connectors.base import BatchOutcome, SourceConnector, SourceRecord
from connectors.state import OffsetStore
from simpul import jsontext, metrics
from simpul.errors import Problem


class FileDropOptions(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)

    input_path: Annotated[Path, Field(alias="input.path")]
    finished_path: Annotated[Path | None, Field(alias="finished.path")] = None
    error_path: Annotated[Path | None, Field(alias="error.path")] = None
    pattern: Annotated[str, Field(alias="input.file.pattern")] = r".*\.(csv|jsonl|ndjson)$"
    format: Literal["auto", "csv", "jsonl"] = "auto"
    csv_delimiter: Annotated[str, Field(alias="csv.delimiter", min_length=1, max_length=1)] = ","
    min_age_ms: Annotated[int, Field(alias="file.minimum.age.ms", ge=0)] = 1000
    poll_interval_ms: Annotated[int | None, Field(alias="poll.interval.ms", ge=10)] = None
    #: Largest file read; None: the ``connect_file_max_bytes`` setting.
    max_bytes: Annotated[int | None, Field(alias="file.max.bytes", ge=1)] = None

    @property
    def poll_interval_s(self) -> float | None:
        return self.poll_interval_ms / 1000 if self.poll_interval_ms else None

    @property
    def done_dir(self) -> Path:
        return self.finished_path or self.input_path / "done"

    @property
    def failed_dir(self) -> Path:
        return self.error_path or self.input_path / "failed"


@dataclass
class _Current:
    path: Path
    sha256: str
    records: list[SourceRecord]


Row = tuple[int, dict[str, Any] | None, Problem | None]


def read_rows(source: bytes | BinaryIO, fmt: str, delimiter: str) -> Iterator[Row]:
    """(line number, row, problem) for every row, read as a stream; line numbers as a
    spreadsheet shows them. Text that is not UTF-8 ends the file with one problem."""
    stream = io.BytesIO(source) if isinstance(source, bytes | bytearray) else source
    text = io.TextIOWrapper(stream, encoding="utf-8-sig", newline="")
    number = 0
    try:
        if fmt == "csv":
            reader = csv.DictReader(text, delimiter=delimiter)
            try:
                for row in reader:
                    number = reader.line_num
                    if None in row:
                        yield (
                            reader.line_num,
                            None,
                            Problem("row", "more values than header columns"),
                        )
                    elif any(v for v in row.values()):
                        yield reader.line_num, dict(row), None
            except csv.Error as error:
                yield reader.line_num, None, Problem("row", str(error))
            return
        for number, line in enumerate(text, start=1):
            if not line.strip():
                continue
            try:
                value = jsontext.loads(line)
            except json.JSONDecodeError as error:
                yield number, None, Problem("line", f"not JSON ({error.msg}, column {error.colno})")
                continue
            except ValueError as error:
                yield number, None, Problem("line", str(error))
                continue
            if not isinstance(value, dict):
                yield (
                    number,
                    None,
                    Problem("line", f"expected a JSON object, got {type(value).__name__}"),
                )
            else:
                yield number, value, None
    except UnicodeDecodeError as error:
        yield (
            max(number, 1),
            None,
            Problem("file", f"not UTF-8 text (after line {number}, {error.reason})"),
        )
    finally:
        text.detach()


class Refused(Exception):
    """A file the connector will not read: a symbolic link, not a regular file, too large."""

    def __init__(self, code: str, reason: str) -> None:
        super().__init__(reason)
        self.code, self.reason = code, reason


def open_regular(path: Path, max_bytes: int) -> BinaryIO:
    """The file opened for reading without following a symbolic link, or `Refused`."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | getattr(os, "O_NONBLOCK", 0))
    except OSError as error:
        if error.errno == errno.ELOOP:
            raise Refused("symlink", "file: a symbolic link; not followed, nothing read") from None
        raise
    handle = os.fdopen(fd, "rb")
    info = os.fstat(handle.fileno())
    if not stat.S_ISREG(info.st_mode):
        handle.close()
        raise Refused("not_regular", "file: not a regular file; nothing read")
    if info.st_size > max_bytes:
        handle.close()
        raise Refused(
            "too_large",
            f"file: {info.st_size} bytes exceeds file.max.bytes {max_bytes}; nothing read",
        )
    return handle


def sha256_of(handle: BinaryIO) -> str:
    digest = hashlib.sha256()
    for chunk in iter(lambda: handle.read(1 << 20), b""):
        digest.update(chunk)
    handle.seek(0)
    return digest.hexdigest()


class FileDropConnector(SourceConnector):
    """``connector.class: file`` — CSV or JSON Lines files dropped in a directory."""

    Options = FileDropOptions
    writes_rejects = True
    atomic_batches = True
    options: FileDropOptions

    def start(self) -> None:
        self.state = OffsetStore(self.context.store_engine)
        for directory in (self.options.input_path, self.options.done_dir, self.options.failed_dir):
            directory.mkdir(parents=True, exist_ok=True)
        self.pattern = re.compile(self.options.pattern)
        self.current: _Current | None = None
        self.files_done = 0

    def _candidates(self) -> list[Path]:
        now = time.time()
        found = []
        for path in self.options.input_path.iterdir():
            if not self.pattern.fullmatch(path.name):
                continue
            if path.name.startswith(".") or path.name.endswith(".rejects.csv"):
                continue
            stat_ = path.lstat()  # a link's own times: its target is never looked at
            if stat.S_ISDIR(stat_.st_mode):
                continue
            if (now - stat_.st_mtime) * 1000 >= self.options.min_age_ms:
                found.append((stat_.st_mtime, path.name, path))
        return [p for *_, p in sorted(found)]

    @property
    def max_bytes(self) -> int:
        return self.options.max_bytes or self.context.settings.connect.file_max_bytes

    def poll(self) -> Sequence[SourceRecord]:
        for path in self._candidates():
            try:
                handle = open_regular(path, self.max_bytes)
            except Refused as refused:
                self._refuse(path, refused)
                continue
            with handle:
                digest = sha256_of(handle)
                if (earlier := self.state.seen_file(self.spec.name, digest)) is not None:
                    target = _free_name(self.options.done_dir, f"{path.name}.duplicate")
                    (self.options.done_dir / f"{target.name}.txt").write_text(
                        f"same content as {earlier}, already processed; nothing published\n"
                    )
                    path.replace(target)
                    continue
                fmt = self.options.format
                if fmt == "auto":
                    fmt = "csv" if path.suffix.lower() == ".csv" else "jsonl"
                records = [
                    SourceRecord(
                        data=row or {},
                        identity=f"{digest}:{line}",
                        ref=f"{path.name} line {line}",
                        position={"file": path.name, "line": line},
                        problem=problem,
                    )
                    for line, row, problem in read_rows(handle, fmt, self.options.csv_delimiter)
                ]
            self.current = _Current(path, digest, records)
            if records:
                return records
            self._finish(BatchOutcome())  # empty file: nothing to publish
        return []

    def _refuse(self, path: Path, refused: Refused) -> None:
        """Move the file (a link itself, never its target) to failed/ with the reason."""
        metrics.CONNECTOR_FILES_REFUSED.labels(self.spec.name, refused.code).inc()
        target = _free_name(self.options.failed_dir, path.name)
        with (self.options.failed_dir / f"{target.name}.rejects.csv").open(
            "w", newline="", encoding="utf-8"
        ) as handle:
            writer = csv.writer(handle)
            writer.writerow(["line", "reason", "record"])
            writer.writerow(["", refused.reason, ""])
        path.replace(target)  # rename(2) moves the link, not what it points at
        self.files_done += 1

    def commit(self, outcome: BatchOutcome) -> None:
        if self.current is not None:
            self._finish(outcome)

    def _finish(self, outcome: BatchOutcome) -> None:
        current = self.current
        assert current is not None
        rejected = list(outcome.rejected)
        failed = outcome.failed is not None or bool(rejected and not outcome.published)
        target_dir = self.options.failed_dir if failed else self.options.done_dir
        published = 0 if outcome.failed is not None else len(outcome.published)
        self.state.remember_file(
            self.spec.name,
            current.sha256,
            current.path.name,
            "failed" if failed else "done",
            published,
            len(rejected),
        )
        target = _free_name(target_dir, current.path.name)
        if rejected:
            rejects = target_dir / f"{target.name}.rejects.csv"
            with rejects.open("w", newline="", encoding="utf-8") as handle:
                writer = csv.writer(handle)
                writer.writerow(["line", "reason", "record"])
                for item in rejected:
                    line = item.record.position.get("line", "")
                    record = json.dumps(dict(item.record.data), ensure_ascii=False, default=str)
                    writer.writerow([line, item.reason, record])
        current.path.replace(target)
        self.current = None
        self.files_done += 1

    def position(self) -> dict[str, Any] | None:
        return {"files_processed": self.files_done}


def _free_name(directory: Path, name: str) -> Path:
    """``directory/name``, or ``name.1``, ``name.2`` ... when a file of that name is there."""
    target = directory / name
    counter = 1
    while target.exists():
        target = directory / f"{name}.{counter}"
        counter += 1
    return target
