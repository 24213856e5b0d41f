"""`simpul demo`: start broker, topics, store and worker on this machine, simulate every
agency, print what arrived, stop. The run itself is `simpul.cli.demo_run`."""

from __future__ import annotations

from typing import Annotated

import typer

from simpul.cli.common import checked_settings, console, err


def demo(
    duration: Annotated[float, typer.Option(min=1, help="Seconds of simulated traffic")] = 30.0,
    rate: Annotated[float, typer.Option(min=1, help="Events per second")] = 100.0,
    city: Annotated[
        str | None,
        typer.Option(help="Run topology/<city>.yaml: palu, kupang, malang, batu, yogyakarta"),
    ] = None,
) -> None:
    """Start broker, topics, store and worker; simulate all agencies; print what arrived; stop."""
    from simpul.cli.demo_run import city_topology, run_demo

    try:
        city_topology(city, checked_settings().paths.topology_file)
    except FileNotFoundError as error:
        err.print(str(error), markup=False, style="red", soft_wrap=True)
        raise typer.Exit(2) from None
    raise typer.Exit(run_demo(console, duration=duration, rate=rate, city=city))
