"""A dead-letter limit per event type, after sentry-arroyo's ``DlqLimit``.

When more than ``dlq_limit_share`` of the last ``dlq_limit_window`` messages of a type went to
the dead-letter topic (and at least ``dlq_limit_min_events`` were seen), the limit is exceeded:
``simpul_dlq_limit_exceeded{type}`` turns 1, which the alert rule ``SimpulDeadLetterLimit``
watches. With ``dlq_limit_pause`` the worker then stops consuming that type instead of
dead-lettering a whole upstream outage (an agency publishing with a broken schema, say): the
batch that crossed the limit is left uncommitted and its partitions paused, until a person
resumes it (``simpul dlq resume <type>``) or ``dlq_limit_cooldown_s`` has passed. On resume
the window starts empty, so a source still broken is paused again after the minimum.

Pure bookkeeping here; `IngestService` does the seeking, pausing and resuming.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field

from simpul import metrics


@dataclass
class _Window:
    batches: deque[tuple[int, int]] = field(default_factory=deque)  # (messages, dead letters)
    total: int = 0
    dead: int = 0


class DlqLimit:
    """Per type: the share dead-lettered over a sliding window of messages, and pauses."""

    def __init__(
        self,
        share: float,
        window: int,
        min_events: int,
        cooldown_s: float,
        *,
        pause: bool,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.share, self.window, self.min_events = share, window, min_events
        self.cooldown_s, self.pause_enabled, self.clock = cooldown_s, pause, clock
        self._windows: dict[str, _Window] = {}
        self._paused: dict[str, float] = {}  # type -> when the cool-down ends

    def observe(self, type_name: str, messages: int, dead: int) -> bool:
        """Count one batch of the type; True when the limit is now exceeded."""
        win = self._windows.setdefault(type_name, _Window())
        win.batches.append((messages, dead))
        win.total += messages
        win.dead += dead
        while len(win.batches) > 1 and win.total - win.batches[0][0] >= self.window:
            gone_total, gone_dead = win.batches.popleft()
            win.total -= gone_total
            win.dead -= gone_dead
        share = win.dead / win.total if win.total else 0.0
        exceeded = win.total >= self.min_events and share > self.share
        metrics.DLQ_WINDOW_SHARE.labels(type_name).set(share)
        metrics.DLQ_LIMIT_EXCEEDED.labels(type_name).set(1 if exceeded else 0)
        return exceeded

    def pause(self, type_name: str) -> None:
        self._paused[type_name] = self.clock() + self.cooldown_s
        metrics.TYPE_PAUSED.labels(type_name).set(1)

    def paused(self) -> list[str]:
        return sorted(self._paused)

    def resume(self, type_name: str) -> bool:
        """Resume now (a person's command); False when the type was not paused."""
        if self._paused.pop(type_name, None) is None:
            return False
        self._windows.pop(type_name, None)
        metrics.TYPE_PAUSED.labels(type_name).set(0)
        metrics.DLQ_LIMIT_EXCEEDED.labels(type_name).set(0)
        return True

    def due(self) -> list[str]:
        """Paused types whose cool-down has passed (resumed by this call)."""
        now = self.clock()
        ready = [name for name, until in self._paused.items() if until <= now]
        for name in ready:
            self.resume(name)
        return ready
