"""Run an ASGI app with uvicorn so that SIGTERM returns to the caller, who then stops cleanly.

uvicorn re-raises a captured SIGINT/SIGTERM after shutdown, which would end the process by the
signal (exit -15) before the connectors flush their producers and stop their tasks. Used by the
registry, the ingress and the connector runtime.
"""

from __future__ import annotations

import contextlib
import signal
import threading
from collections.abc import Iterator
from typing import Any

import uvicorn


class GracefulServer(uvicorn.Server):
    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        if threading.current_thread() is not threading.main_thread():
            yield  # a server on a thread (the http connector) is stopped by its owner
            return
        stops = (signal.SIGINT, signal.SIGTERM)
        previous = {sig: signal.signal(sig, self.handle_exit) for sig in stops}
        try:
            yield
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)


def run(app: Any, port: int, host: str, max_body: int, **config: Any) -> None:
    """Serve until SIGINT/SIGTERM, then return; request bodies over ``max_body`` get 413."""
    from simpul.httpauth import BodyLimit

    options = {"log_level": "warning", **config}
    GracefulServer(uvicorn.Config(BodyLimit(app, max_body), host=host, port=port, **options)).run()
