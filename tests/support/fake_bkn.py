"""A fake of BKN's national civil-servant register (SIASN-like), a real HTTP server in a thread.

``GET /api/pns/perubahan?updated_since=<ISO>&page=<n>&per_page=<k>`` answers
``{"data": [...], "page": n}`` with the records changed at or after ``updated_since``, oldest
first, paged. Field names are the register's own (``nipBaru``, ``nama``, ``golRuangAkhir``...).
Generated people only.
"""

from __future__ import annotations

import datetime as dt
import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlparse

#: The register's field for each hr.employee.updated field (the connector's field.mapping).
BKN_MAPPING = {
    "nip": "nipBaru",
    "name": "nama",
    "unit_code": "unorIndukId",
    "position": "jabatanNama",
    "grade": "golRuangAkhir",
    "status": "statusPegawai",
    "updated_at": "tglPerubahan",
}


class FakeBkn:
    def __init__(self, token: str | None = None) -> None:
        self.records: list[dict[str, Any]] = []
        self.requests: list[dict[str, list[str]]] = []
        self.token = token
        self.lock = threading.Lock()
        owner = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: Any) -> None:  # quiet
                pass

            def do_GET(self) -> None:
                url = urlparse(self.path)
                query = parse_qs(url.query)
                if owner.token and self.headers.get("Authorization") != f"Bearer {owner.token}":
                    self.send_response(401)
                    self.end_headers()
                    return
                if url.path != "/api/pns/perubahan":
                    self.send_response(404)
                    self.end_headers()
                    return
                with owner.lock:
                    owner.requests.append(query)
                    since = query.get("updated_since", [None])[0]
                    rows = sorted(owner.records, key=lambda r: (r["tglPerubahan"], r["nipBaru"]))
                if since:
                    cutoff = dt.datetime.fromisoformat(since)
                    rows = [
                        r for r in rows if dt.datetime.fromisoformat(r["tglPerubahan"]) >= cutoff
                    ]
                page = int(query.get("page", ["1"])[0])
                size = int(query.get("per_page", ["100"])[0])
                body = json.dumps({"data": rows[(page - 1) * size : page * size], "page": page})
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.end_headers()
                self.wfile.write(body.encode())

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}/api/pns/perubahan"

    def __enter__(self) -> FakeBkn:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.shutdown()
        self.server.server_close()

    def add(self, record: dict[str, Any]) -> None:
        with self.lock:
            self.records = [r for r in self.records if r["nipBaru"] != record["nipBaru"]]
            self.records.append(record)


def bkn_record(employee: Any, when: dt.datetime, **override: Any) -> dict[str, Any]:
    """The register's view of a generated employee (a `simpul.citydata.Employee`)."""
    return {
        "nipBaru": employee.nip,
        "nama": employee.name,
        "unorIndukId": employee.unit_code,
        "jabatanNama": "Analis Kepegawaian",
        "golRuangAkhir": "III/b",
        "statusPegawai": "ACTIVE",
        "tglPerubahan": when.isoformat(),
        **override,
    }
