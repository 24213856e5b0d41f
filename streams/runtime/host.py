"""The process host of every long-running stream process: the worker, the joins, the deliverer.

Faust, with its Kafka switched off, gives each process its lifecycle (mode services started
and stopped in order; SIGTERM or SIGINT is a graceful stop and exit 0, a crashed service exit
1) and an aiohttp web server. The host puts on that server what every process has: ``/metrics``
and ``/health``, every page behind the installation's token (`simpul.httpauth`) with bounded
bodies, bound to ``settings.bind_host`` on the process's own port. docs/faust.md says why
Faust is the host and not the engine.
"""

from __future__ import annotations

import gc
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any, NoReturn

import faust
from faust.app.base import BootStrategy
from mode import Service
from prometheus_client import CONTENT_TYPE_LATEST, disable_created_metrics, generate_latest

from simpul.httpauth import aiohttp_options
from simpul.settings import Settings

if TYPE_CHECKING:
    from faust.worker import Worker

#: The cyclic garbage collector's first threshold: a young collection once this many more
#: container objects were made than freed (CPython's default is 700).
GC_YOUNG_THRESHOLD = 50_000

#: What ``/health`` answers: the JSON document and the HTTP status (503 while degraded).
HealthReport = Callable[[], tuple[Mapping[str, Any], int]]


class ProcessHost:
    """One long-running process: its services, its pages and its run in the foreground."""

    def __init__(self, settings: Settings, name: str, port: int, health: HealthReport) -> None:
        disable_created_metrics()  # type: ignore[no-untyped-call]  # prometheus_client
        settings.paths.data_dir.mkdir(
            parents=True, exist_ok=True
        )  # Faust makes only the last level
        self.settings = settings
        self.name = name
        self.app = faust.App(
            name,
            web_enabled=True,
            web_port=port,
            web_bind=settings.http.bind_host,
            # Every page, Faust's own included, needs the token; bodies are bounded.
            web_application_options=aiohttp_options(settings),
            topic_allow_declare=False,
            store="memory://",
            datadir=str(settings.paths.data_dir / f"faust-{name}"),
        )
        # Faust's Kafka stays off: the services consume with aiokafka themselves.
        self.app.boot_strategy = BootStrategy(self.app, enable_kafka=False)

        @self.app.page("/metrics")
        async def metrics_page(web: Any, request: Any) -> Any:
            return web.bytes(generate_latest(), content_type=CONTENT_TYPE_LATEST.split(";")[0])

        @self.app.page("/health")
        async def health_page(web: Any, request: Any) -> Any:
            body, status = health()
            return web.json(dict(body), status=status)

    def service(self, service: type[Service]) -> None:
        """Run ``service`` (made by the host with no arguments) for the process's lifetime."""
        self.app.service(service)

    def page(self, path: str) -> Callable[[Any], Any]:
        """Decorate a page handler ``(web, request)`` or a `faust.web.View` for ``path``."""
        decorator: Callable[[Any], Any] = self.app.page(path)
        return decorator

    def worker(self) -> Worker:
        """The Faust worker that runs this process."""
        from faust.worker import Worker

        worker = Worker(
            self.app,
            loglevel=self.settings.process.log_level.upper(),
            quiet=True,
            redirect_stdouts=False,
        )
        # Faust's terminal spinner: at a log level of warning or above it sets the root
        # logger to DEBUG so that every record turns it. Every library's debug record was then
        # made and formatted (aiokafka's for each request), a fifth of a stream process's CPU.
        worker.spinner = None
        return worker

    def run(self) -> NoReturn:
        """Run in the foreground until SIGTERM/SIGINT (exit 0) or a service crashes (exit 1)."""
        quiet_garbage_collector()
        self.worker().execute_from_commandline()


def quiet_garbage_collector() -> None:
    """Keep CPython's cyclic collector off the event path of a stream process.

    With the default threshold a batch's own records, alive for one pipeline step, outlived
    two young collections and were promoted to the oldest generation, so a full collection ran
    every 3 s in the worker at 1 000 events/s: 110-140 ms of CPU each with the GIL held, every
    event in flight stalled behind it (and 120-390 ms in the joins). A batch is freed by
    reference counting, not by this collector. So: what the process imported and built before
    its services start (modules, classes, the topology) is frozen out of every collection, and a
    young collection waits for `GC_YOUNG_THRESHOLD` more live containers, not 700.
    """
    gc.collect()
    gc.freeze()
    _, middle, oldest = gc.get_threshold()
    gc.set_threshold(GC_YOUNG_THRESHOLD, middle, oldest)
