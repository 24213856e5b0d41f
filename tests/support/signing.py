"""Signing keys for the test session, and the helpers a raw test producer signs with."""

from __future__ import annotations

import functools
import os
import tempfile
import uuid
from pathlib import Path

from simpul.envelope import Headers
from simpul.settings import Settings
from simpul.signing import Signer, signer_for


def install_test_keys(topology_file: Path) -> Path:
    """Generate signing keys for every agency and gateway of the topology into a temporary
    directory and point ``SIMPUL_KEYS_DIR`` / ``SIMPUL_PUBLIC_KEYS_FILE`` at it (this process
    and its children). Returns the public keys file."""
    from simpul.cli.keys import installation_owners
    from simpul.signing import ensure_keys
    from simpul.topology.model import load_topology

    if os.environ.get("SIMPUL_TEST_KEYS") == "1":
        return Path(os.environ["SIMPUL_PUBLIC_KEYS_FILE"])
    root = Path(tempfile.mkdtemp(prefix="simpul-test-keys-"))
    public, private = root / "public.keys.yaml", root / "private"
    ensure_keys(public, private, installation_owners(load_topology(topology_file)))
    os.environ.update(
        SIMPUL_KEYS_DIR=str(private),
        SIMPUL_PUBLIC_KEYS_FILE=str(public),
        SIMPUL_HTTP_TOKEN=uuid.uuid4().hex,  # status, health and connect REST need it
        SIMPUL_TEST_KEYS="1",
    )
    return public


@functools.cache
def signer(owner: str) -> Signer:
    """The signer of an agency or gateway under the test keys (`install_test_keys`)."""
    return signer_for(Settings(), owner)


def sign(owner: str, headers: Headers, key: bytes | None, value: bytes | None) -> Headers:
    """The one helper raw test producers use to sign a valid event as ``owner``."""
    return signer(owner).sign(headers, key, value)


def auth() -> dict[str, str]:
    """The header Simpul's status, health, metrics and connect endpoints need in tests."""
    return {"Authorization": f"Bearer {os.environ['SIMPUL_HTTP_TOKEN']}"}
