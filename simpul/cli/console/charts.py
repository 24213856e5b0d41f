"""Server-rendered SVG: an agency's hourly trend and the diagram of flows between agencies.

Plain markup with escaped text, no script and no build step; the browser scales it.
"""

from __future__ import annotations

import fnmatch
from collections.abc import Sequence
from dataclasses import dataclass
from html import escape

from simpul.topology.model import Topology


def trend_svg(events: Sequence[int], dead: Sequence[int], title: str) -> str:
    """Hourly bars: events (blue) with their dead letters (red) stacked on top, oldest left."""
    width, height, gap = 4 * len(events), 28, 1
    peak = max([e + d for e, d in zip(events, dead, strict=True)] + [1])
    bars = []
    for i, (e, d) in enumerate(zip(events, dead, strict=True)):
        x = i * 4
        he = round((height - 2) * e / peak) if e else 0
        hd = round((height - 2) * d / peak) if d else 0
        if e and not he:
            he = 1
        if d and not hd:
            hd = 1
        if he:
            bars.append(
                f'<rect class="ev" x="{x}" y="{height - he}" width="{4 - gap}" height="{he}"/>'
            )
        if hd:
            bars.append(
                f'<rect class="dl" x="{x}" y="{height - he - hd}" width="{4 - gap}" height="{hd}"/>'
            )
    return (
        f'<svg class="trend" viewBox="0 0 {width} {height}" width="{width * 2}" '
        f'height="{height}" preserveAspectRatio="none" role="img" aria-label="{escape(title)}">'
        f"<title>{escape(title)}</title>"
        f'<line x1="0" y1="{height - 0.5}" x2="{width}" y2="{height - 0.5}" class="axis"/>'
        + "".join(bars)
        + "</svg>"
    )


@dataclass(frozen=True, slots=True)
class Flow:
    producer: str
    event_type: str
    subscriber: str
    subscription: str


def flows(topology: Topology) -> list[Flow]:
    """Every producer → event type → subscriber path the subscriptions create."""
    found = []
    codes = [a.code for a in topology.agencies]
    for subscription in topology.subscriptions:
        for name in subscription.event_types:
            event_type = topology.types_by_name.get(name)
            if event_type is None:
                continue
            producers = sorted(
                {c for c in codes for p in event_type.producers if fnmatch.fnmatchcase(c, p)}
            )
            for producer in producers:
                found.append(Flow(producer, name, subscription.agency, subscription.name))
    return found


def flow_svg(topology: Topology, title: str, headings: tuple[str, str, str]) -> str:
    """Three columns: producing agencies, event types, receiving agencies; one line per path."""
    paths = flows(topology)
    producers = sorted({f.producer for f in paths})
    types = sorted({f.event_type for f in paths})
    subscribers = sorted({f.subscriber for f in paths})
    row, top = 26, 30
    rows = max(len(producers), len(types), len(subscribers), 1)
    height = top + rows * row + 10
    width, box_w = 900, 220
    columns = {"p": 10, "t": (width - box_w) // 2, "s": width - box_w - 10}

    def y(items: list[str], item: str) -> float:
        offset = (rows - len(items)) * row / 2
        return top + offset + items.index(item) * row + row / 2

    parts = [
        f'<svg class="flows" viewBox="0 0 {width} {height}" role="img" '
        f'aria-label="{escape(title)}" xmlns="http://www.w3.org/2000/svg">',
        f"<title>{escape(title)}</title>",
    ]
    for key, heading in zip(("p", "t", "s"), headings, strict=True):
        parts.append(f'<text class="heading" x="{columns[key]}" y="16">{escape(heading)}</text>')
    seen_edges: set[tuple[str, str, str]] = set()
    for f in paths:
        for kind, a, b, ya, yb in (
            ("pt", f.producer, f.event_type, y(producers, f.producer), y(types, f.event_type)),
            (
                "ts",
                f.event_type,
                f.subscriber,
                y(types, f.event_type),
                y(subscribers, f.subscriber),
            ),
        ):
            if (kind, a, b) in seen_edges:
                continue
            seen_edges.add((kind, a, b))
            x1 = (columns["p"] if kind == "pt" else columns["t"]) + box_w
            x2 = columns["t"] if kind == "pt" else columns["s"]
            mid = (x1 + x2) / 2
            parts.append(
                f'<path class="edge" data-from="{escape(a)}" data-to="{escape(b)}" '
                f'd="M{x1},{ya} C{mid},{ya} {mid},{yb} {x2},{yb}"/>'
            )
    for key, items, css in (
        ("p", producers, "producer"),
        ("t", types, "type"),
        ("s", subscribers, "subscriber"),
    ):
        for item in items:
            cy = y(items, item)
            parts.append(
                f'<g class="node {css}" data-node="{escape(item)}">'
                f'<rect x="{columns[key]}" y="{cy - 10}" width="{box_w}" height="20" rx="4"/>'
                f'<text x="{columns[key] + 8}" y="{cy + 4}">{escape(item)}</text></g>'
            )
    parts.append("</svg>")
    return "".join(parts)
