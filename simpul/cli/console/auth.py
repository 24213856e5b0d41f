"""The console's own authentication: users with roles, argon2 password hashes, signed
session cookies, CSRF tokens and the rights of each role.

Self-contained on purpose (one module), so it can later be reconciled with the token auth
of the other HTTP surfaces. Nothing ships with a secret: the cookie-signing key comes from
``SIMPUL_CONSOLE_SECRET`` or is generated once into ``data_dir/console-secret`` (mode 0600),
and there is no user until `simpul console users add` creates one.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import re
import secrets
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, get_args

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError

from simpul.settings import Settings

Role = Literal["operator", "integrator", "dpo"]
ROLES: tuple[str, ...] = get_args(Role)

#: What each right allows, and which roles hold it. Operators watch and steer the running
#: bus; integration staff (Kominfo) also replay dead letters and register schemas; the data
#: protection officer answers "who received my data" and sees what is shared with whom.
RIGHTS: dict[str, frozenset[str]] = {
    "agencies.view": frozenset({"operator", "integrator", "dpo"}),
    "subscriptions.view": frozenset({"operator", "integrator", "dpo"}),
    "connectors.view": frozenset({"operator", "integrator"}),
    "connectors.control": frozenset({"operator", "integrator"}),
    "deadletters.view": frozenset({"operator", "integrator"}),
    "deadletters.replay": frozenset({"integrator"}),
    "schemas.view": frozenset({"operator", "integrator"}),
    "schemas.register": frozenset({"integrator"}),
    "privacy.view": frozenset({"dpo"}),
}

_USER_NAME = re.compile(r"^[a-z][a-z0-9._-]{1,40}$")
MIN_PASSWORD = 12
_hasher = PasswordHasher()
#: Verified when the user does not exist, so a wrong name takes as long as a wrong password.
_DUMMY_HASH = _hasher.hash(secrets.token_urlsafe(16))


class UserError(ValueError):
    """A user name, role or password that cannot be accepted; the message says which."""


def may(role: str, right: str) -> bool:
    return role in RIGHTS[right]


@dataclass(frozen=True, slots=True)
class User:
    name: str
    role: str
    language: str = "id"

    def may(self, right: str) -> bool:
        return may(self.role, right)


def _write_private(path: Path, text: str) -> None:
    """Write ``text`` with mode 0600, atomically (a crash leaves the old file)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(4)}")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as handle:
        handle.write(text)
    os.replace(tmp, path)


def session_secret(settings: Settings) -> str:
    """The installation's cookie-signing key: the setting, or one generated once (0600)."""
    if settings.console.secret:
        if len(settings.console.secret) < 32:
            raise UserError("SIMPUL_CONSOLE_SECRET: must be at least 32 characters")
        return settings.console.secret
    path = settings.paths.data_dir / "console-secret"
    if path.exists():
        return path.read_text(encoding="utf-8").strip()
    _write_private(path, secrets.token_urlsafe(48) + "\n")
    return path.read_text(encoding="utf-8").strip()


def users_path(settings: Settings) -> Path:
    return settings.console.users_file or settings.paths.data_dir / "console-users.json"


class UserStore:
    """Users in a JSON file (mode 0600): name, role, argon2id hash, preferred language."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._lock = threading.Lock()
        self._cache: tuple[float, dict[str, dict[str, str]]] | None = None

    def _read(self) -> dict[str, dict[str, str]]:
        try:
            mtime = self.path.stat().st_mtime
        except FileNotFoundError:
            return {}
        if self._cache and self._cache[0] == mtime:
            return self._cache[1]
        users: dict[str, dict[str, str]] = json.loads(self.path.read_text(encoding="utf-8"))[
            "users"
        ]
        self._cache = (mtime, users)
        return users

    def _write(self, users: dict[str, dict[str, str]]) -> None:
        _write_private(self.path, json.dumps({"users": users}, indent=2, sort_keys=True) + "\n")
        self._cache = None

    def add(self, name: str, role: str, password: str) -> User:
        if not _USER_NAME.fullmatch(name):
            raise UserError(
                f"name: {name!r} must be 2-41 lower-case letters, digits, '.', '_' or '-', "
                "starting with a letter"
            )
        if role not in ROLES:
            raise UserError(f"role: {role!r} is not one of {', '.join(ROLES)}")
        if len(password) < MIN_PASSWORD:
            raise UserError(f"password: must be at least {MIN_PASSWORD} characters")
        with self._lock:
            users = dict(self._read())
            if name in users:
                raise UserError(f"name: user {name!r} exists already")
            users[name] = {
                "role": role,
                "hash": _hasher.hash(password),
                "language": "id",
                "created_at": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
            }
            self._write(users)
        return User(name, role)

    def remove(self, name: str) -> None:
        with self._lock:
            users = dict(self._read())
            if users.pop(name, None) is None:
                raise UserError(f"name: no user {name!r}")
            self._write(users)

    def set_language(self, name: str, language: str) -> None:
        with self._lock:
            users = dict(self._read())
            if name in users:
                users[name] = {**users[name], "language": language}
                self._write(users)

    def get(self, name: str) -> User | None:
        record = self._read().get(name)
        if record is None:
            return None
        return User(name, record["role"], record.get("language", "id"))

    def list(self) -> list[User]:
        return [u for name in sorted(self._read()) if (u := self.get(name)) is not None]

    def authenticate(self, name: str, password: str) -> User | None:
        record = self._read().get(name)
        try:
            _hasher.verify(record["hash"] if record else _DUMMY_HASH, password)
        except (VerificationError, InvalidHashError):
            return None
        return self.get(name) if record else None


class LoginThrottle:
    """At most ``attempts`` failed logins per user name in ``window_s``; then that name is
    refused, even with the right password, until the oldest failure ages out. In memory:
    a restart forgets, which is acceptable against online guessing of argon2 hashes."""

    def __init__(self, attempts: int = 5, window_s: float = 900.0) -> None:
        self.attempts = attempts
        self.window_s = window_s
        self._failures: dict[str, list[float]] = {}
        self._lock = threading.Lock()

    def _recent(self, name: str, now: float) -> list[float]:
        recent = [t for t in self._failures.get(name, []) if now - t < self.window_s]
        if recent:
            self._failures[name] = recent
        else:
            self._failures.pop(name, None)
        return recent

    def wait_s(self, name: str, now: float) -> float:
        """Seconds until ``name`` may try again; 0 when it may now."""
        with self._lock:
            recent = self._recent(name, now)
            if len(recent) < self.attempts:
                return 0.0
            return self.window_s - (now - recent[-self.attempts])

    def failed(self, name: str, now: float) -> None:
        with self._lock:
            self._failures.setdefault(name, []).append(now)
            if len(self._failures) > 10_000:  # names are attacker-chosen: bound the memory
                self._failures.clear()

    def succeeded(self, name: str) -> None:
        with self._lock:
            self._failures.pop(name, None)


def new_csrf_token() -> str:
    return secrets.token_urlsafe(32)


def csrf_ok(expected: str | None, given: str | None) -> bool:
    return bool(expected and given and secrets.compare_digest(expected, given))
