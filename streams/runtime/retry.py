"""The one retry policy of the stream processes: exponential back-off with jitter, capped.

Two jitters, each where it is documented: ``full`` (uniform in [0, min(cap, base·2^(n-1))], AWS
architecture blog) spreads a subscriber's retries (webhook delivery, docs/subscriptions.md);
``spread`` (the exponential delay ±20 %) waits out an outage of the central store, the schema
registry or the broker, where the next attempt should come close to the planned time.
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Literal, TypeVar

T = TypeVar("T")
_RANDOM = random.Random()

Jitter = Literal["full", "spread"]


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    """How long to wait before attempt ``n + 1`` after ``n`` failed attempts."""

    base_s: float
    cap_s: float
    jitter: Jitter = "spread"

    def delay(self, attempt: int, rng: random.Random | None = None) -> float:
        """The wait after failed attempt ``attempt`` (1 for the first)."""
        planned = min(self.cap_s, self.base_s * 2.0 ** (attempt - 1))
        uniform = (rng or _RANDOM).uniform
        if self.jitter == "full":
            return uniform(0, planned)
        return planned * uniform(0.8, 1.2)

    def capped(self, wait: float) -> float:
        """A wait asked for from outside (an HTTP ``Retry-After``), held to the cap."""
        return min(wait, self.cap_s)

    async def until_done(
        self,
        work: Callable[[], Awaitable[T]],
        retry_on: tuple[type[BaseException], ...],
        on_retry: Callable[[BaseException, float], None],
    ) -> T:
        """Await ``work()`` until it returns, as long as it takes; each failure in
        ``retry_on`` is told to ``on_retry`` with the wait that follows it."""
        attempt = 0
        while True:
            try:
                return await work()
            except retry_on as error:
                attempt += 1
                wait = self.delay(attempt)
                on_retry(error, wait)
                await asyncio.sleep(wait)


#: An outage (the store, the registry, the broker): from half a second up to 30 s.
OUTAGE = RetryPolicy(0.5, 30.0)
