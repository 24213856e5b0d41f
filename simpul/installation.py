"""Secrets of one installation: generated once, never shipped, never a published default.

A secret setting (``SIMPUL_AUDIT_KEY``, ``SIMPUL_HTTP_TOKEN``, ...) wins; when it is empty,
the secret is generated on first use into ``data_dir`` (mode 0600) and read from there after.
Compose gets them from the env file `simpul secrets init` writes. Known development values
(the ones earlier releases published) are refused everywhere.
"""

from __future__ import annotations

import os
import secrets
from pathlib import Path

#: Values that were published as defaults, in the repository or its compose file. A process
#: given one of them refuses to start: whoever read the repository would know the secret.
KNOWN_DEVELOPMENT_SECRETS = frozenset(
    {
        "simpul-dev-audit-key-change-me",
        "change-me-registry-admin-token",
        "change-me-audit-key-of-the-city",
        "change-me-dinsos-webhook-secret",
        "simpul",
    }
)


def known_development_secret(value: str) -> bool:
    return value in KNOWN_DEVELOPMENT_SECRETS or value.lower().startswith("change-me")


def installation_secret(path: Path, *, create: bool, nbytes: int = 32) -> str | None:
    """The secret in ``path``; with ``create``, made once (0600) if absent. Concurrent
    first starts agree: the file is created exclusively and the loser reads the winner's."""
    if path.exists():
        return path.read_text(encoding="utf-8").strip() or None
    if not create:
        return None
    path.parent.mkdir(parents=True, exist_ok=True)
    value = secrets.token_urlsafe(nbytes)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        return path.read_text(encoding="utf-8").strip()
    with os.fdopen(fd, "w", encoding="utf-8") as file:
        file.write(value + "\n")
    return value


def new_secret(nbytes: int = 32) -> str:
    return secrets.token_urlsafe(nbytes)
