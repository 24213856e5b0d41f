"""Secrets out of what an API shows: configuration values come back redacted."""

from __future__ import annotations

import re
from typing import Any
from urllib.parse import urlsplit, urlunsplit

REDACTED = "********"
#: Keys whose values are secrets wherever they appear in a configuration.
_SECRET_KEY = re.compile(r"(pass(word|wd)?|secret|token|api_?key|credential|private)", re.I)


def redact_url(text: str) -> str:
    """``postgresql://simpul:pw@db/x`` -> ``postgresql://simpul:********@db/x``."""
    try:
        parts = urlsplit(text)
    except ValueError:
        return text
    if not parts.scheme or parts.password is None:
        return text
    host = parts.netloc.rsplit("@", 1)[1]
    user = parts.username or ""
    return urlunsplit(parts._replace(netloc=f"{user}:{REDACTED}@{host}"))


def redacted(value: Any, key: str = "") -> Any:
    """A copy of a configuration with secret-named values and URL passwords replaced."""
    if isinstance(value, dict):
        return {k: redacted(v, str(k)) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [redacted(v, key) for v in value]
    if isinstance(value, str):
        # *_env names an environment variable, not the secret itself: shown as it is.
        if key and _SECRET_KEY.search(key) and not key.endswith("_env"):
            return REDACTED
        return redact_url(value)
    return value
