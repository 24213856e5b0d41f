"""Failure as typed values: a message that can never succeed raises `InvalidMessage`."""

from __future__ import annotations

from typing import Literal

#: Where in the path a message was rejected; the ``simpul_dlq_stage`` header.
Stage = Literal[
    "headers",
    "authenticate",
    "decode",
    "schema",
    "validate",
    "authorize",
    "store",
    "join",
    "webhook",
]


class InvalidMessage(Exception):
    """A message that can never succeed: it goes to the dead-letter topic, the stream goes on.

    ``code`` is a short, bounded label for metrics (``identifier.nik``); ``reason`` is the
    sentence a person reads, and always names the field (``nik: expected 16 digits, got 15``).
    """

    def __init__(self, stage: Stage, code: str, reason: str) -> None:
        from simpul.identifiers import mask_identifiers

        # The reason travels to the dead-letter topic, the dead_letters table and logs: a NIK
        # or NIP in it is masked as subscriptions mask it (first and last four digits).
        reason = mask_identifiers(reason)
        super().__init__(reason)
        self.stage: Stage = stage
        self.code = code
        self.reason = reason

    def __repr__(self) -> str:
        return f"InvalidMessage({self.stage!r}, {self.code!r}, {self.reason!r})"


class Problem(str):
    """One problem with a payload: the sentence ``field: reason`` as text (it is logged,
    joined and sent as it always was), with its ``field`` and ``reason`` kept apart, so no
    caller splits the sentence to find the field."""

    __slots__ = ("field", "reason")
    field: str
    reason: str

    def __new__(cls, field: str, reason: str, *, text: str | None = None) -> Problem:
        problem = super().__new__(cls, f"{field}: {reason}" if text is None else text)
        problem.field = field
        problem.reason = reason
        return problem

    @classmethod
    def of(cls, text: str) -> Problem:
        """``text`` as a problem: itself when it is one; else read as ``field: reason`` (a
        plain string from outside, a third-party connector's say)."""
        if isinstance(text, Problem):
            return text
        field, sep, reason = text.partition(": ")
        return cls(field, reason) if sep else cls("", text, text=text)


class PayloadError(ValueError):
    """A payload refused before it left the agency: every problem as ``field: reason``."""

    def __init__(self, event_type: str, problems: list[str]) -> None:
        self.event_type = event_type
        self.problems = problems
        super().__init__(f"{event_type} payload refused: " + "; ".join(problems))
