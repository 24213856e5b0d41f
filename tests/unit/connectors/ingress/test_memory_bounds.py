"""Hostile clients meet bounds: each structure driven to its limit stays under its ceiling.

Ceilings (also in docs/operations.md): ingress idempotency ``ingress_idempotency_bytes`` per
agency (8 MiB default), dedup window ``dedup_window_bytes`` per partition (8 MiB default), HTTP
source ``request.max.pending`` requests.
"""

from __future__ import annotations

import asyncio
import tracemalloc
import uuid

import pytest

from connectors.ingress.app import IdempotencyCache

pytestmark = pytest.mark.unit


def _traced(work) -> int:  # type: ignore[no-untyped-def]
    tracemalloc.start()
    before = tracemalloc.get_traced_memory()[0]
    work()
    used = tracemalloc.get_traced_memory()[0] - before
    tracemalloc.stop()
    return used


def test_idempotency_cache_stays_within_its_bytes_per_agency() -> None:
    budget = 2 * 1024 * 1024
    cache = IdempotencyCache(86_400, budget)

    def flood() -> None:
        for n in range(200):  # 4 times the budget, in batches of 500 ids with 10 kB keys
            ids = tuple(f"{uuid.UUID(int=n * 1000 + i)}" for i in range(500))
            cache.put("dpmptsp", cache.digest(f"key:{n}:" + "k" * 10_000), 202, ids)

    used = _traced(flood)
    assert cache.held_bytes("dpmptsp") <= budget
    assert used <= budget * 1.25, f"{used} bytes held for a budget of {budget}"


def test_one_agency_cannot_push_out_another() -> None:
    cache = IdempotencyCache(86_400, 64 * 1024)
    cache.put("dinsos", cache.digest("key:mine"), 202, ("a",))
    for n in range(10_000):
        cache.put("dpmptsp", cache.digest(f"key:{n}"), 202, ("b",))
    assert cache.get("dinsos", cache.digest("key:mine")) is not None
    assert cache.get("dpmptsp", cache.digest("key:0")) is None  # its own oldest went first


def test_expired_answers_are_forgotten() -> None:
    cache = IdempotencyCache(-1, 64 * 1024)  # already expired when stored
    cache.put("dinsos", cache.digest("key:a"), 202, ("a",))
    assert cache.get("dinsos", cache.digest("key:a")) is None
    assert cache.held_bytes("dinsos") == 0


def test_key_locks_are_freed_when_no_request_holds_them() -> None:
    cache = IdempotencyCache(86_400, 64 * 1024)

    async def requests() -> None:
        async def one(n: int) -> None:
            async with cache.hold("dinsos", cache.digest(f"key:{n % 3}")):
                await asyncio.sleep(0)

        await asyncio.gather(*(one(n) for n in range(300)))

    asyncio.run(requests())
    assert cache.locks() == 0


@pytest.mark.integration
def test_http_source_queue_is_bounded_and_answers_503(tmp_path) -> None:  # type: ignore[no-untyped-def]
    """No connector polls here: requests pile up to request.max.pending, then 503."""
    import httpx

    from connectors.base import ConnectorContext
    from connectors.kinds.http import HttpConnector, HttpOptions
    from connectors.state import ApiKeyStore
    from simpul import dbmigrate
    from simpul.cli.services.broker import free_port
    from simpul.db import make_engine
    from simpul.settings import Settings
    from simpul.topology.connectors import ConnectorSpec
    from tests.support.processes import wait_until

    url = f"sqlite:///{tmp_path / 'store.db'}"
    dbmigrate.upgrade(url)
    engine = make_engine(url)
    key = ApiKeyStore(engine).create("dpmptsp", label="test")[1]
    port = free_port()
    declaration = {
        "name": "ptsp-http",
        "connector.class": "http",
        "event.type": "permit.issued",
        "agency": "dpmptsp",
        "listen.host": "127.0.0.1",
        "listen.port": port,
        "request.timeout.ms": 100,
        "request.max.pending": 3,
    }
    spec = ConnectorSpec.model_validate(declaration)
    connector = HttpConnector(
        spec, HttpOptions.model_validate(spec.options), ConnectorContext(Settings(), engine)
    )
    connector.start()
    try:

        def up() -> bool:
            try:
                httpx.get(f"http://127.0.0.1:{port}/docs", timeout=1)
                return True
            except httpx.HTTPError:
                return False

        wait_until(up, 30, "http source up")
        headers = {"Authorization": f"Bearer {key}"}
        answers = [
            httpx.post(f"http://127.0.0.1:{port}/records", json={"n": n}, headers=headers)
            for n in range(5)
        ]
        assert [a.status_code for a in answers] == [503] * 5
        assert all("not acknowledged" in a.text for a in answers[:3])
        assert all("3 requests already waiting" in a.text for a in answers[3:])
        assert answers[4].headers["Retry-After"] == "1"
        assert connector.queue.qsize() == 3
    finally:
        connector.stop()
