"""The one way a test starts a Simpul process: `simpul <command>` as a child process, with its
output in a log file (or a pipe), readiness checks that fail early when it dies, and a stop."""

from __future__ import annotations

import signal
import subprocess
import sys
import urllib.error
import urllib.request
import weakref
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import IO, Any

from connectors.testing import wait_until
from tests.support.signing import auth


def authorized(url: str) -> urllib.request.Request:
    """A request carrying the test installation's HTTP token."""
    return urllib.request.Request(url, headers=auth())


def http_status(url: str, token: bool = True, timeout: float = 1) -> int | None:
    """The HTTP status `url` answers with, or None while nothing listens."""
    request = authorized(url) if token else urllib.request.Request(url)
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return int(response.status)
    except urllib.error.HTTPError as error:
        return int(error.code)
    except OSError:
        return None


def terminate(process: subprocess.Popen[Any]) -> None:
    """SIGTERM, then SIGKILL after 10 s: for processes a failed test left behind."""
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(10)


class SimpulProcess:
    """`python -m simpul <args>` as a child process.

    Its output goes to `log` (appended), or, with `capture=True`, to a text pipe read with
    `wait_for_line` / `output`. A process its test forgot (a failed assertion) is terminated
    when the object is collected, so no worker outlives its test holding CPU and ports.
    """

    def __init__(
        self,
        args: Sequence[str],
        env: Mapping[str, str],
        log: Path | None = None,
        *,
        capture: bool = False,
    ) -> None:
        if (log is None) == (not capture):
            raise ValueError("give a log file, or capture=True, not both")
        self.args = list(args)
        self.log = log
        self._seen: list[str] = []
        handle: IO[bytes] | int
        if log is not None:
            log.parent.mkdir(parents=True, exist_ok=True)
            handle = log.open("ab")
        else:
            handle = subprocess.PIPE
        try:
            self.popen: subprocess.Popen[Any] = subprocess.Popen(
                [sys.executable, "-m", "simpul", *self.args],
                env=dict(env),
                stdout=handle,
                stderr=subprocess.STDOUT,
                text=capture,
            )
        finally:
            if log is not None:
                handle.close()  # type: ignore[union-attr]  # the child holds its own copy
        weakref.finalize(self, terminate, self.popen)

    # -- what subprocess.Popen offers, for the tests that signal and wait themselves --
    @property
    def pid(self) -> int:
        return self.popen.pid

    @property
    def returncode(self) -> int | None:
        return self.popen.returncode

    def poll(self) -> int | None:
        return self.popen.poll()

    def wait(self, timeout: float | None = None) -> int:
        return self.popen.wait(timeout)

    def send_signal(self, sig: int) -> None:
        self.popen.send_signal(sig)

    @property
    def running(self) -> bool:
        return self.popen.poll() is None

    # -- readiness --
    def log_text(self) -> str:
        if self.log is not None:
            return self.log.read_text(errors="replace") if self.log.exists() else ""
        return "".join(self._seen)

    def _died(self) -> AssertionError:
        tail = "\n".join(self.log_text().splitlines()[-40:])
        return AssertionError(f"simpul {' '.join(self.args)} exited {self.poll()}:\n{tail}")

    def wait_ready(self, check: Callable[[], Any], what: str, timeout: float = 60) -> Any:
        """Wait until `check()` is true; fail at once, with the log's tail, if the process died."""

        def alive_and_ready() -> Any:
            if self.popen.poll() is not None:
                raise self._died()
            return check()

        return wait_until(alive_and_ready, timeout, f"simpul {self.args[0]}: {what}")

    def wait_http(
        self,
        url: str,
        ok: Callable[[int], bool] = lambda status: status == 200,
        token: bool = True,
        timeout: float = 60,
    ) -> None:
        """Wait until `url` answers with a status `ok` accepts."""

        def answers() -> bool:
            status = http_status(url, token)
            return status is not None and ok(status)

        self.wait_ready(answers, f"{url} answering", timeout)

    def wait_for_line(self, needle: str, timeout: float = 240) -> str:
        """With `capture=True`: read output until a line holds `needle`; all read so far."""
        assert self.popen.stdout is not None, "wait_for_line needs capture=True"

        def found() -> bool:
            line = self.popen.stdout.readline()  # type: ignore[union-attr]
            self._seen.append(line)
            if not line and self.popen.poll() is not None:
                raise self._died()
            return needle in line

        wait_until(found, timeout, needle, every=0)
        return "".join(self._seen)

    def output(self) -> str:
        """With `capture=True`, after the process ended: everything it wrote."""
        if self.popen.stdout is not None:
            self._seen.append(self.popen.stdout.read())
        return "".join(self._seen)

    # -- the end --
    def stop(self, sig: int = signal.SIGTERM, timeout: float = 60) -> int:
        """Send `sig` (SIGTERM: a clean stop) and return the exit code."""
        if self.popen.poll() is None:
            self.popen.send_signal(sig)
        return self.popen.wait(timeout)

    def kill(self, timeout: float = 30) -> int:
        return self.stop(signal.SIGKILL, timeout)


__all__ = ["SimpulProcess", "authorized", "http_status", "terminate", "wait_until"]
