"""File drop: CSV and JSON Lines validated row by row, rejects with line numbers, done/ and
failed/, and a file dropped twice ignored. Real broker, real store, real files."""

from __future__ import annotations

import csv
import hashlib
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from connectors.base import record_ce_id
from connectors.testing import start_runtime
from simpul.cli.services.broker import Broker
from simpul.envelope import header
from tests.support.connector_cases import LETTER_COLUMNS, LetterFiles
from tests.support.processes import wait_until
from tests.support.stack import Stack, make_stack
from tests.support.topics import read_topic

pytestmark = pytest.mark.integration

TOPIC = "simpul.in.kelurahan.document.issued"


@pytest.fixture(scope="module")
def stack(broker: Broker, tmp_path_factory: pytest.TempPathFactory) -> Stack:
    workdir = tmp_path_factory.mktemp("filedrop")
    return make_stack(broker, f"sqlite:///{workdir / 'store.db'}", workdir)


class Drop:
    def __init__(
        self, stack: Stack, directory: Path, tolerance: str = "all", max_bytes: int | None = None
    ) -> None:
        self.name = f"drop-{directory.name}"
        self.directory = directory
        self.files = LetterFiles(directory, stack.topology)
        self.runtime = start_runtime(
            stack,
            {
                "name": self.name,
                "connector.class": "file",
                "event.type": "kelurahan.document.issued",
                "agency": "kel-besusu-barat",
                "input.path": str(directory),
                "field.mapping": LETTER_COLUMNS,
                "errors.tolerance": tolerance,
                "file.minimum.age.ms": 100,
                "poll.interval.ms": 100,
                **({"file.max.bytes": max_bytes} if max_bytes else {}),
            },
        )
        self.task = next(iter(self.runtime.tasks.values()))

    def ids(self, path: Path, lines: list[int]) -> set[str]:
        digest = hashlib.sha256(path.read_bytes()).hexdigest()
        return {record_ce_id(self.name, f"{digest}:{line}") for line in lines}

    def moved(self, folder: str, name: str) -> Path:
        return wait_until(
            lambda: (self.directory / folder / name).exists() and self.directory / folder / name,
            60,
            f"{name} in {folder}/",
        )


@pytest.fixture
def drop(stack: Stack, tmp_path: Path) -> Iterator[Drop]:
    made = Drop(stack, tmp_path / "kel-besusu-barat")
    yield made
    made.runtime.stop()


def _on_topic(stack: Stack, ids: set[str]) -> list[Any]:
    messages = read_topic(stack.settings.kafka.bootstrap, TOPIC, idle_ms=1500)
    return [m for m in messages if header(m.headers, "ce_id") in ids]


def _rejects(path: Path) -> dict[int, str]:
    with path.open(newline="", encoding="utf-8") as handle:
        return {int(row["line"]): row["reason"] for row in csv.DictReader(handle)}


def test_valid_rows_are_published_and_bad_rows_rejected_with_line_and_reason(
    stack: Stack, drop: Drop
) -> None:
    rows = [drop.files.row() for _ in range(4)]
    rows[1]["nik"] = "72710112345"  # line 3
    rows[2]["kode_kelurahan"] = "7271021002"  # line 4: Ujuna's, not Besusu Barat's
    path = drop.files.write(rows)
    keep = path.read_bytes()
    done = drop.moved("done", path.name)
    assert done.read_bytes() == keep
    rejects = _rejects(drop.directory / "done" / f"{path.name}.rejects.csv")
    assert set(rejects) == {3, 4}
    assert rejects[3].startswith("resident_nik:")
    assert rejects[4].startswith("kelurahan_code: kel-besusu-barat may only report for")
    published = _on_topic(stack, drop.ids(done, [2, 5]))
    assert len(published) == 2
    assert not _on_topic(stack, drop.ids(done, [3, 4]))
    assert drop.task.counters.published == 2 and drop.task.counters.failed == 2


def test_the_same_file_dropped_twice_is_ignored(stack: Stack, drop: Drop) -> None:
    path = drop.files.write([drop.files.row() for _ in range(2)])
    content = path.read_bytes()
    drop.moved("done", path.name)
    wait_until(lambda: drop.task.counters.published == 2, 60, "2 published")
    again = drop.directory / "again.csv"
    again.write_bytes(content)  # the office sends last month's export once more
    drop.moved("done", "again.csv.duplicate")
    assert (
        (drop.directory / "done" / "again.csv.duplicate.txt")
        .read_text()
        .startswith(f"same content as {path.name}")
    )
    assert drop.task.counters.read == 2
    assert len(_on_topic(stack, drop.ids(drop.directory / "done" / path.name, [2, 3]))) == 2


def test_json_lines_file_with_a_broken_line(stack: Stack, drop: Drop) -> None:
    good = {column: value for column, value in drop.files.row().items()}
    drop.directory.mkdir(parents=True, exist_ok=True)
    path = drop.directory / "letters.jsonl"
    path.write_text(json.dumps(good) + "\n" + '{"nomor_surat": "470/1\n' + "\n" + "[1, 2]\n")
    done = drop.moved("done", "letters.jsonl")
    rejects = _rejects(drop.directory / "done" / "letters.jsonl.rejects.csv")
    assert set(rejects) == {2, 4}
    assert rejects[2].startswith("line: not JSON") and "got list" in rejects[4]
    assert len(_on_topic(stack, drop.ids(done, [1]))) == 1


def test_a_file_without_one_good_row_goes_to_failed(drop: Drop) -> None:
    bad = drop.files.row()
    bad["jenis_surat"] = "SURAT_SAKTI"
    path = drop.files.write([bad])
    drop.moved("failed", path.name)
    rejects = _rejects(drop.directory / "failed" / f"{path.name}.rejects.csv")
    assert list(rejects) == [2] and rejects[2].startswith("document_type")


def test_tolerance_none_publishes_nothing_from_a_file_with_a_bad_row(
    stack: Stack, tmp_path: Path
) -> None:
    strict = Drop(stack, tmp_path / "strict", tolerance="none")
    try:
        rows = [strict.files.row() for _ in range(3)]
        rows[2]["nik"] = "1"
        path = strict.files.write(rows)
        failed = strict.moved("failed", path.name)
        assert set(_rejects(strict.directory / "failed" / f"{path.name}.rejects.csv")) == {4}
        assert not _on_topic(stack, strict.ids(failed, [2, 3, 4]))
        good = strict.files.write([strict.files.row()])  # the connector goes on with the next
        strict.moved("done", good.name)
        assert str(strict.task.state) == "RUNNING"
    finally:
        strict.runtime.stop()


def test_a_symlink_is_refused_unfollowed_and_counted(
    stack: Stack, drop: Drop, tmp_path: Path
) -> None:
    secret = tmp_path / "outside" / "secret.csv"
    secret.parent.mkdir()
    secret.write_text("nik,name\n7271054507910003,Siti Rahmawati\n")
    drop.directory.mkdir(parents=True, exist_ok=True)
    (drop.directory / "looks-fine.csv").symlink_to(secret)
    moved = drop.moved("failed", "looks-fine.csv")
    assert moved.is_symlink() and secret.read_text().startswith("nik,name")  # target untouched
    rejects = (drop.directory / "failed" / "looks-fine.csv.rejects.csv").read_text()
    assert "a symbolic link; not followed" in rejects and "7271054507910003" not in rejects
    assert _refused(drop.name, "symlink") == 1
    good = drop.files.write([drop.files.row()])  # the connector goes on with the next file
    drop.moved("done", good.name)


def test_a_file_over_the_size_limit_is_refused_unread(stack: Stack, tmp_path: Path) -> None:
    small = Drop(stack, tmp_path / "small", max_bytes=2048)
    try:
        rows = [small.files.row() for _ in range(40)]  # well over 2 kB
        path = small.files.write(rows)
        size = path.stat().st_size
        small.moved("failed", path.name)
        rejects = (small.directory / "failed" / f"{path.name}.rejects.csv").read_text()
        assert f"file: {size} bytes exceeds file.max.bytes 2048; nothing read" in rejects
        assert _refused(small.name, "too_large") == 1
        assert small.task.counters.read == 0
    finally:
        small.runtime.stop()


def _refused(connector: str, reason: str) -> float:
    from prometheus_client import REGISTRY

    value = REGISTRY.get_sample_value(
        "simpul_connector_files_refused_total", {"connector": connector, "reason": reason}
    )
    return value or 0.0
