"""The dead-letter limit (arroyo's DlqLimit): share over a sliding window, pause, resume."""

from __future__ import annotations

import pytest
from prometheus_client import REGISTRY

from streams.ingest.dlq_limit import DlqLimit

pytestmark = pytest.mark.unit


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def _gauge(name: str, type_name: str) -> float | None:
    return REGISTRY.get_sample_value(name, {"type": type_name})


def test_limit_needs_the_minimum_then_trips_over_the_share() -> None:
    limit = DlqLimit(0.5, window=100, min_events=20, cooldown_s=60, pause=False)
    assert not limit.observe("t.min", 10, 10)  # all dead, but only 10 seen
    assert limit.observe("t.min", 10, 10)  # 20 seen, 100 % dead
    assert _gauge("simpul_dlq_limit_exceeded", "t.min") == 1
    assert _gauge("simpul_dlq_window_share", "t.min") == 1.0


def test_window_slides_so_old_dead_letters_stop_counting() -> None:
    limit = DlqLimit(0.5, window=100, min_events=10, cooldown_s=60, pause=False)
    assert limit.observe("t.slide", 60, 60)
    assert limit.observe("t.slide", 40, 0)  # 60 of 100
    assert not limit.observe("t.slide", 60, 0)  # the first batch has slid out: 0 of 100
    assert _gauge("simpul_dlq_limit_exceeded", "t.slide") == 0


def test_a_paused_type_resumes_by_command_or_after_the_cool_down() -> None:
    clock = Clock()
    limit = DlqLimit(0.5, window=100, min_events=1, cooldown_s=60, pause=True, clock=clock)
    limit.pause("t.pause")
    assert limit.paused() == ["t.pause"] and _gauge("simpul_type_paused", "t.pause") == 1
    clock.now = 59
    assert limit.due() == []
    clock.now = 60
    assert limit.due() == ["t.pause"] and limit.paused() == []
    assert _gauge("simpul_type_paused", "t.pause") == 0
    limit.observe("t.pause", 5, 5)
    limit.pause("t.pause")
    assert limit.resume("t.pause") and not limit.resume("t.pause")
    assert not limit.observe("t.pause", 1, 0)  # the window starts again after a resume
