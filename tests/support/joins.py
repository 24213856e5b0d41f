"""`simpul joins` as a process of a stack, and the payloads its joins take."""

from __future__ import annotations

import datetime as dt
import json
import signal
import urllib.request
import uuid
from typing import Any

from simpul.cli.services.broker import free_port
from tests.support.processes import SimpulProcess
from tests.support.signing import auth
from tests.support.stack import Stack


class JoinsProcess:
    """`simpul joins` as a subprocess, with its /health and /metrics."""

    def __init__(self, stack: Stack) -> None:
        self.port = free_port()
        self.env = {**stack.env, "SIMPUL_JOINS_WEB_PORT": str(self.port)}
        self.log = stack.workdir / "joins.log"
        self.process: SimpulProcess | None = None

    def start(self) -> None:
        self.process = SimpulProcess(["joins"], self.env, self.log)
        self.process.wait_ready(
            lambda: len(self.health().get("loaded_partitions", [])) == 4, "4 partitions loaded", 90
        )

    def stop(self, sig: int = signal.SIGTERM) -> None:
        assert self.process is not None
        self.process.stop(sig)
        self.process = None

    def _get(self, path: str) -> str:
        request = urllib.request.Request(f"http://127.0.0.1:{self.port}{path}", headers=auth())
        with urllib.request.urlopen(request, timeout=5) as reply:
            return reply.read().decode()

    def health(self) -> dict[str, Any]:
        try:
            return json.loads(self._get("/health"))
        except OSError:
            return {}

    def metric(self, name: str, **labels: str) -> float:
        total = 0.0
        for line in self._get("/metrics").splitlines():
            if line.startswith(name + "{") and all(f'{k}="{v}"' in line for k, v in labels.items()):
                total += float(line.rsplit(" ", 1)[1])
        return total


def now() -> dt.datetime:
    return dt.datetime.now(dt.UTC).replace(microsecond=0)


def employee(nip: str, grade: str, when: dt.datetime) -> dict[str, Any]:
    return {
        "nip": nip,
        "name": "Andi Lamadjido",
        "unit_code": "BKPSDM-01",
        "position": "Analis Kepegawaian",
        "grade": grade,
        "status": "ACTIVE",
        "updated_at": when,
    }


def assessment(nip: str, assessor: str) -> dict[str, Any]:
    return {
        "assessment_id": f"EKIN-2026-11-{uuid.uuid4().hex[:8]}",
        "nip": nip,
        "period": "2026-11",
        "rating": "ABOVE",
        "score": 110.5,
        "assessor_nip": assessor,
    }


def recipient(nik: str, status: str, when: dt.datetime) -> dict[str, Any]:
    return {
        "nik": nik,
        "programs": ["PKH", "PBI_JK"],
        "disability_category": None,
        "kelurahan_code": "7271021002",
        "status": status,
        "updated_at": when,
    }
