"""`simpul deliver`: the webhook deliverer as a long-running command."""

from __future__ import annotations

import typer
from rich.console import Console

from simpul.cli.common import HostOption, PortOption, checked_settings, checked_topology, listening

err = Console(stderr=True)


def deliver(host: HostOption = None, port: PortOption = None) -> None:
    """POST agency inbox messages to their webhooks (signed, retried, dead-lettered);
    /metrics and /health on SIMPUL_DELIVER_WEB_PORT."""
    from sinks.webhook import WebhookConfigError
    from streams.deliver.service import run_deliverer
    from streams.fanout.plan import SubscriptionError, SubscriptionPlan

    settings = listening(checked_settings(), "deliver_web_port", host, port)
    topology = checked_topology(settings)
    try:
        SubscriptionPlan.build(topology, settings.paths.schemas_dir)
        if not any(s.webhook for s in topology.subscriptions):
            err.print("[yellow]no subscription has a webhook; nothing to deliver[/yellow]")
            raise typer.Exit(0)
        run_deliverer(settings, topology)
    except (SubscriptionError, WebhookConfigError) as error:
        err.print(f"[red]{error}[/red]")
        raise typer.Exit(2) from None
