"""The one interface every sink follows: `Sink.add` buffers an item, `Sink.flush` writes them.

The contract (after quix-streams' sinks):

* `add` never writes and never fails on the destination's account.
* `flush` writes everything added since the last flush that returned, as one batch, and
  returns what that write came to. A flush that raises keeps its batch, so calling it again
  retries the same items (a retry policy wraps the call; the sink itself does not loop).
* Delivery guarantee: at-least-once when the caller commits its consumer offsets only after
  `flush` returned; each sink's docstring says how it absorbs the second copy a crash between
  the write and the commit leaves (an idempotent key, or a row that says it was sent twice).

The sinks: `sinks.central_store.CentralStore` (idempotent on ``ce_id``),
`sinks.dead_letters.DeadLetterLog` (idempotent on the letter's position),
`sinks.audit.AuditLog` (a re-delivery is recorded again: it happened) and
`sinks.webhook.WebhookSink` (its flush is awaited; one POST per item, the outcome a value).
"""

from __future__ import annotations

import threading
from collections.abc import Iterable, Sequence
from typing import Generic, Protocol, TypeVar

ItemT = TypeVar("ItemT")
ItemT_contra = TypeVar("ItemT_contra", contravariant=True)
ResultT_co = TypeVar("ResultT_co", covariant=True)
ResultT = TypeVar("ResultT")


class Sink(Protocol[ItemT_contra, ResultT_co]):
    """Buffers with `add`, writes with `flush` (the module docstring has the contract)."""

    def add(self, item: ItemT_contra) -> None: ...

    def flush(self) -> ResultT_co: ...


class Buffered(Generic[ItemT, ResultT]):
    """The buffer of a blocking sink: `flush` hands the items added so far to `_write` and
    drops them only when it returned; items added meanwhile (from another thread) stay. One
    flush at a time: a second waits for the first."""

    def __init__(self) -> None:
        self._buffer: list[ItemT] = []
        self._buffer_lock = threading.Lock()
        self._flush_lock = threading.Lock()

    def add(self, item: ItemT) -> None:
        with self._buffer_lock:
            self._buffer.append(item)

    def add_all(self, items: Iterable[ItemT]) -> None:
        with self._buffer_lock:
            self._buffer.extend(items)

    def flush(self) -> ResultT:
        with self._flush_lock:
            with self._buffer_lock:
                batch = list(self._buffer)
            result = self._write(batch)
            with self._buffer_lock:
                del self._buffer[: len(batch)]
            return result

    def pending(self) -> int:
        """Items added and not yet written."""
        with self._buffer_lock:
            return len(self._buffer)

    def _write(self, batch: Sequence[ItemT]) -> ResultT:
        raise NotImplementedError
