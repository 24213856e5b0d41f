"""The `Sink` contract (sinks/base.py): add buffers, flush writes, a failed flush keeps it."""

from __future__ import annotations

import datetime as dt
import time
from collections.abc import Sequence
from pathlib import Path

import pytest
from sqlalchemy import select
from sqlalchemy.exc import OperationalError

from simpul import dbmigrate
from simpul.db import make_engine
from sinks.base import Buffered
from sinks.central_store import CentralStore, WriteResult
from sinks.dead_letters import DeadLetterLog, DeadLetterRow, dead_letters
from sinks.webhook import Attempt, Post, WebhookSink

pytestmark = pytest.mark.unit

NOW = dt.datetime(2026, 12, 1, 8, 0, tzinfo=dt.UTC)


def _letter(offset: int) -> DeadLetterRow:
    return DeadLetterRow(
        "simpul.in.permit.issued", 0, offset, "permit.issued", "dpmptsp", "validate",
        "identifier.nik", "applicant_nik: expected 16 digits, got 15", f"e-{offset}", NOW,
    )  # fmt: skip


def test_a_failed_flush_keeps_its_batch_and_the_retry_writes_it_once(tmp_path: Path) -> None:
    unmigrated = make_engine(f"sqlite:///{tmp_path / 'empty.db'}")
    url = f"sqlite:///{tmp_path / 'store.db'}"
    dbmigrate.upgrade(url)
    log = DeadLetterLog(unmigrated)
    log.add_all([_letter(1), _letter(2)])
    assert log.pending() == 2
    with pytest.raises(OperationalError):  # no dead_letters table there
        log.flush()
    assert log.pending() == 2  # nothing lost
    log.engine = make_engine(url)  # the store is back
    log.add(_letter(3))
    log.flush()
    log.flush()  # nothing left: writes nothing
    assert log.pending() == 0
    with log.engine.connect() as conn:
        offsets = sorted(conn.execute(select(dead_letters.c.offset)).scalars())
    assert offsets == [1, 2, 3]


def test_an_empty_store_flush_is_an_empty_result(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'store.db'}"
    dbmigrate.upgrade(url)
    assert CentralStore(make_engine(url)).flush() == WriteResult()


def test_items_added_while_flushing_wait_for_the_next_flush() -> None:
    class Recorder(Buffered[int, list[int]]):
        def __init__(self) -> None:
            super().__init__()
            self.written: list[list[int]] = []

        def _write(self, batch: Sequence[int]) -> list[int]:
            if not self.written:
                self.add(99)  # as another thread would, mid-write
            self.written.append(list(batch))
            return list(batch)

    sink = Recorder()
    sink.add_all([1, 2])
    assert sink.flush() == [1, 2]
    assert sink.flush() == [99]
    assert sink.written == [[1, 2], [99]]


async def _flush(sink: WebhookSink) -> list[Attempt]:
    try:
        return await sink.flush()
    finally:
        await sink.aclose()


def test_webhook_sink_refused_connection_is_a_value_not_an_exception() -> None:
    import asyncio

    from simpul.cli.services.broker import free_port

    sink = WebhookSink(timeout_s=2.0, max_connections=2)
    url = f"http://127.0.0.1:{free_port()}/hook"  # nobody listens there
    sink.add(Post(url, b"s" * 32, b"{}", 1, 1_764_576_000))
    (attempt,) = asyncio.run(_flush(sink))
    assert attempt.status is None and attempt.label == "connect"
    assert not attempt.delivered and not attempt.refused  # worth another attempt


class _Endpoint:
    """A real local HTTP endpoint answering every POST with ``status`` and ``headers``,
    after ``delay`` seconds; it counts the requests by path."""

    def __init__(self, status: int, headers: dict[str, str], delay: float = 0.0) -> None:
        import threading
        from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

        self.paths: list[str] = []
        endpoint = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_POST(self) -> None:
                self.rfile.read(int(self.headers["Content-Length"]))
                endpoint.paths.append(self.path)
                time.sleep(delay)
                self.send_response(status)
                for name, value in headers.items():
                    self.send_header(name, value)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def _attempt(url: str, timeout_s: float = 2.0) -> Attempt:
    import asyncio

    sink = WebhookSink(timeout_s=timeout_s, max_connections=2)
    sink.add(Post(url, b"s" * 32, b"{}", 1, 1_764_576_000))
    (attempt,) = asyncio.run(_flush(sink))
    return attempt


def test_webhook_sink_does_not_follow_a_redirect_it_is_the_endpoints_answer() -> None:
    endpoint = _Endpoint(307, {"Location": "/elsewhere"})
    try:
        attempt = _attempt(f"{endpoint.url}/hook")
    finally:
        endpoint.close()
    assert attempt.status == 307 and attempt.refused
    assert endpoint.paths == ["/hook"]  # nothing was POSTed to /elsewhere


def test_webhook_sink_reads_retry_after_and_times_out_a_slow_endpoint() -> None:
    busy = _Endpoint(503, {"Retry-After": "7"})
    slow = _Endpoint(200, {}, delay=1.5)
    try:
        waited = _attempt(f"{busy.url}/hook")
        timed_out = _attempt(f"{slow.url}/hook", timeout_s=0.3)
    finally:
        busy.close()
        slow.close()
    assert waited.status == 503 and waited.retry_after == 7.0 and not waited.refused
    assert timed_out.status is None and timed_out.label == "timeout"
    assert timed_out.reason == "timed out (0.3s)"
