"""The process host (streams/runtime/host.py) as a real process: its pages, token and exits."""

from __future__ import annotations

import logging
import os
import secrets
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import httpx
import pytest

from simpul.cli.services.broker import free_port
from tests.support.processes import wait_until

pytestmark = pytest.mark.integration

PROGRAM = textwrap.dedent(
    """
    import gc
    import logging
    import sys
    from mode import Service
    from simpul.settings import Settings
    from streams.runtime.host import ProcessHost

    def health():
        if sys.argv[2] == "levels":
            debug = logging.getLogger("aiokafka.conn").isEnabledFor(logging.DEBUG)
            return {"root": logging.getLogger().getEffectiveLevel(), "debug": debug}, 200
        if sys.argv[2] == "gc":
            return {"threshold": gc.get_threshold(), "frozen": gc.get_freeze_count()}, 200
        return {"status": "ok", "seen": 7}, 200

    host = ProcessHost(Settings(), "host-test", int(sys.argv[1]), health)

    class Work(Service):
        @Service.task
        async def _work(self) -> None:
            if sys.argv[2] == "crash":
                await self.sleep(1.0)
                await self.crash(RuntimeError("a bug in the service"))

    host.service(Work)
    host.run()
    """
)


def _start(
    tmp_path: Path, port: int, mode: str, token: str, **settings: str
) -> subprocess.Popen[bytes]:
    env = {
        **os.environ,
        "SIMPUL_DATA_DIR": str(tmp_path),
        "SIMPUL_HTTP_TOKEN": token,
        "SIMPUL_BIND_HOST": "127.0.0.1",
        **settings,
    }
    return subprocess.Popen(
        [sys.executable, "-c", PROGRAM, str(port), mode],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )


def _get(port: int, path: str, token: str | None) -> httpx.Response | None:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    try:
        return httpx.get(f"http://127.0.0.1:{port}{path}", headers=headers, timeout=2)
    except httpx.TransportError:
        return None


def test_host_serves_health_and_metrics_behind_the_token_and_stops_on_sigterm(
    tmp_path: Path,
) -> None:
    port, token = free_port(), secrets.token_urlsafe(24)
    process = _start(tmp_path, port, "serve", token)
    try:
        health = wait_until(lambda: _get(port, "/health", token), 60, "the host's /health")
        assert health.status_code == 200 and health.json() == {"status": "ok", "seen": 7}
        metrics = _get(port, "/metrics", token)
        assert metrics is not None and metrics.status_code == 200
        assert "# TYPE" in metrics.text
        for path in ("/health", "/metrics"):
            refused = _get(port, path, None)
            assert refused is not None and refused.status_code == 401, path
        wrong = _get(port, "/health", "not-the-token")
        assert wrong is not None and wrong.status_code == 401
    finally:
        process.send_signal(signal.SIGTERM)
        code = process.wait(60)
    assert code == 0


def test_a_crashed_service_ends_the_process_with_exit_1(tmp_path: Path) -> None:
    port, token = free_port(), secrets.token_urlsafe(24)
    process = _start(tmp_path, port, "crash", token)
    try:
        code = process.wait(60)
    finally:
        if process.poll() is None:
            process.kill()
    assert code == 1


def test_a_quiet_log_level_leaves_debug_records_unmade(tmp_path: Path) -> None:
    """At warning, Faust's terminal spinner would set the root logger to DEBUG; every library's
    debug record would then be made and formatted (aiokafka's for each request)."""
    port, token = free_port(), secrets.token_urlsafe(24)
    process = _start(tmp_path, port, "levels", token, SIMPUL_LOG_LEVEL="warning")
    try:
        health = wait_until(lambda: _get(port, "/health", token), 60, "the host's /health")
        assert health.json() == {"root": logging.WARNING, "debug": False}
    finally:
        process.send_signal(signal.SIGTERM)
        code = process.wait(60)
    assert code == 0


def test_the_garbage_collector_leaves_what_was_built_at_start_alone(tmp_path: Path) -> None:
    from streams.runtime.host import GC_YOUNG_THRESHOLD

    port, token = free_port(), secrets.token_urlsafe(24)
    process = _start(tmp_path, port, "gc", token)
    try:
        health = wait_until(lambda: _get(port, "/health", token), 60, "the host's /health")
        young, middle, oldest = health.json()["threshold"]
        assert (young, middle, oldest) == (GC_YOUNG_THRESHOLD, 10, 10)  # CPython's own 2nd, 3rd
        assert health.json()["frozen"] > 10_000  # the modules, classes and app built at start
    finally:
        process.send_signal(signal.SIGTERM)
        code = process.wait(60)
    assert code == 0
