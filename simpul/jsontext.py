"""JSON from outside (request bodies, file lines, source columns) with its nesting bounded.

`json.loads` raises `RecursionError` on deeply nested input, which no caller expects; here
too-deep input is a `ValueError` that names the limit, like any other malformed JSON.
"""

from __future__ import annotations

import json
from typing import Any

#: Deepest nesting of objects and arrays accepted; event payloads are two or three levels.
MAX_DEPTH = 32


class TooDeep(ValueError):
    """The document nests objects and arrays deeper than `MAX_DEPTH`."""

    def __init__(self, limit: int) -> None:
        super().__init__(f"nested deeper than {limit} levels of objects and arrays")


def loads(text: str | bytes | bytearray, max_depth: int = MAX_DEPTH) -> Any:
    """`json.loads`, raising `ValueError` (never `RecursionError`) for any bad document."""
    try:
        value = json.loads(text)
    except RecursionError:
        raise TooDeep(max_depth) from None
    if depth(value) > max_depth:
        raise TooDeep(max_depth)
    return value


def depth(value: Any) -> int:
    """Nesting depth of a parsed document (a scalar is 0), without recursion."""
    deepest = 0
    stack: list[tuple[Any, int]] = [(value, 0)]
    while stack:
        item, level = stack.pop()
        if isinstance(item, dict):
            children: Any = item.values()
        elif isinstance(item, list):
            children = item
        else:
            continue
        level += 1
        deepest = max(deepest, level)
        stack.extend((child, level) for child in children)
    return deepest
