"""`simpul registry` on its own (without a stack), for the registry's API and CLI tests."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import httpx

from simpul.cli.services.broker import free_port
from tests.support.processes import SimpulProcess


@dataclass
class Registry:
    url: str
    token: str | None
    process: SimpulProcess
    data_dir: Path

    def client(self, auth: bool = False) -> httpx.Client:
        headers = {"Authorization": f"Bearer {self.token}"} if auth and self.token else {}
        return httpx.Client(base_url=self.url, headers=headers, timeout=10)


def start_registry(database_url: str, data_dir: Path, **env: str) -> Registry:
    """`simpul registry` on a free port over `database_url`; waits until it answers."""
    port = free_port()
    process = SimpulProcess(
        ["registry"],
        {
            **os.environ,
            "SIMPUL_DATABASE_URL": database_url,
            "SIMPUL_REGISTRY_PORT": str(port),
            "SIMPUL_DATA_DIR": str(data_dir),
            **env,
        },
        data_dir / "registry.log",
    )
    url = f"http://127.0.0.1:{port}"
    process.wait_http(f"{url}/", ok=lambda status: status in (200, 401), token=False)
    return Registry(url, env.get("SIMPUL_REGISTRY_ADMIN_TOKEN"), process, data_dir)
