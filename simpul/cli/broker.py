"""`simpul broker`: run the embedded broker (Tansu) or Apache Kafka in the foreground."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from simpul.cli.common import checked_settings, console, err
from simpul.settings import Settings


def broker(
    engine: Annotated[
        str,
        typer.Option(help="embedded (Tansu, memory only) or kafka (Apache Kafka, on disk)"),
    ] = "embedded",
    port: Annotated[
        int | None, typer.Option(help="Port to listen on [default: SIMPUL_BROKER_PORT]")
    ] = None,
    nodes: Annotated[int, typer.Option(min=1, max=5, help="Kafka nodes (kafka only)")] = 1,
    data_dir: Annotated[
        Path | None, typer.Option(help="Kafka log directories [default: SIMPUL_KAFKA_DATA_DIR]")
    ] = None,
) -> None:
    """Run a broker in the foreground until Ctrl-C or SIGTERM (then it stops cleanly, exit 0)."""
    import signal
    import subprocess

    from simpul.cli.services.broker import EMBEDDED_LOSES, BrokerError, broker_command, port_is_free

    settings = checked_settings()
    port = port or settings.broker.port
    if engine not in ("embedded", "kafka"):
        err.print(f"[red]--engine: {engine!r} is not one of: embedded, kafka[/red]")
        raise typer.Exit(2)
    if engine == "kafka":
        _run_kafka(settings, port, nodes, data_dir or settings.kafka.data_dir)
        return
    if nodes != 1:
        err.print("[red]--nodes: the embedded broker runs one node; use --engine kafka[/red]")
        raise typer.Exit(2)
    if not port_is_free(port):
        err.print(
            f"[red]port {port} is already in use[/red]: another broker may be running. "
            "Stop it, or pass --port."
        )
        raise typer.Exit(1)
    try:
        command = broker_command(port)
    except BrokerError as error:
        from rich.markup import escape

        err.print(f"[red]{escape(str(error))}[/red]")  # the hint's [embedded] is no markup
        raise typer.Exit(1) from None
    process = subprocess.Popen(command)
    signal.signal(signal.SIGTERM, lambda *_: process.terminate())  # before anyone is told
    console.print(f"embedded broker on [bold]127.0.0.1:{port}[/bold] (Ctrl-C stops)")
    console.print(f"[yellow]{EMBEDDED_LOSES}[/yellow]")
    try:
        process.wait()
    except KeyboardInterrupt:
        process.terminate()
        process.wait()
    raise typer.Exit(0 if process.returncode in (0, -signal.SIGTERM) else process.returncode)


def _run_kafka(settings: Settings, port: int, nodes: int, data_dir: Path) -> None:
    import signal
    import threading

    from simpul.cli.services.broker import BrokerError
    from simpul.cli.services.kafka import KAFKA_VERSION, KafkaCluster

    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    cluster = KafkaCluster(data_dir, nodes, port=port, cache_dir=settings.kafka.cache_dir)
    try:
        console.print(f"Apache Kafka {KAFKA_VERSION}: resolving jars and starting {nodes} node(s)…")
        cluster.start()
    except BrokerError as error:
        cluster.kill()
        err.print(f"[red]{error}[/red]")
        raise typer.Exit(1) from None
    console.print(
        f"Apache Kafka {KAFKA_VERSION} (KRaft, {nodes} node(s)) on [bold]{cluster.bootstrap}[/bold]"
        f", data in {data_dir} (kept across restarts). Ctrl-C or SIGTERM stops it."
    )
    console.print(
        f"Point Simpul at it: SIMPUL_BROKER_ENGINE=kafka SIMPUL_KAFKA_BOOTSTRAP={cluster.bootstrap}"
    )
    while not stop.wait(0.5):
        for node in cluster.members:
            if not node.running:
                err.print(f"[red]Kafka node {node.node_id} exited[/red]:\n{cluster.log_tail(node)}")
                cluster.stop()
                raise typer.Exit(1)
    cluster.stop()
    console.print("Apache Kafka stopped")
