"""`simpul deliver`: the webhook deliverer as a long-running command."""

from __future__ import annotations

import asyncio
import logging

import typer
from rich.console import Console

from simpul.cli.serving import HostOption, PortOption, listening

err = Console(stderr=True)


def deliver(host: HostOption = None, port: PortOption = None) -> None:
    """POST agency inbox messages to their webhooks (signed, retried, dead-lettered);
    /metrics and /health on SIMPUL_DELIVER_WEB_PORT."""
    from simpul.cli.main import _settings, _topology
    from simpul.topology.subscriptions import SubscriptionError, SubscriptionPlan
    from sinks.webhook import WebhookConfigError, serve

    settings = listening(_settings(), "deliver_web_port", host, port)
    topology = _topology(settings)
    try:
        SubscriptionPlan.build(topology, settings.paths.schemas_dir)
        if not any(s.webhook for s in topology.subscriptions):
            err.print("[yellow]no subscription has a webhook; nothing to deliver[/yellow]")
            raise typer.Exit(0)
        logging.basicConfig(
            level=settings.process.log_level.upper(),
            format="%(asctime)s %(levelname)s %(name)s %(message)s",
        )
        asyncio.run(serve(settings, topology))
    except (SubscriptionError, WebhookConfigError) as error:
        err.print(f"[red]{error}[/red]")
        raise typer.Exit(2) from None
