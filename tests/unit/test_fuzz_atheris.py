"""A bounded coverage-guided fuzzing run (atheris) of every target, as part of `make test`.

Each target of tests/fuzz/targets.py runs for a few seconds in its own process; a crash fails
the test with the input libFuzzer saved. `make fuzz` runs the same targets for longer. Every
crash found becomes a named test in tests/unit/streams/ingest/test_robustness.py.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.fuzz.targets import TARGETS
from tests.support.paths import REPO_ROOT

pytestmark = pytest.mark.unit

SECONDS = int(os.environ.get("SIMPUL_FUZZ_SECONDS", "3"))


@pytest.mark.parametrize("target", sorted(TARGETS))
def test_fuzz_target_finds_no_crash(target: str, tmp_path: Path) -> None:
    pytest.importorskip("atheris", reason="pip install atheris (the test extra)")
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "tests.fuzz.targets",
            target,
            f"-max_total_time={SECONDS}",
            f"-artifact_prefix={tmp_path}/",
            "-rss_limit_mb=1024",
        ],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=SECONDS + 120,
    )
    crashes = [p.name for p in tmp_path.iterdir()]
    tail = "\n".join(
        line for line in result.stderr.splitlines() if not line.startswith("INFO: Instrumenting")
    )[-3000:]
    assert result.returncode == 0 and not crashes, f"{target}: {crashes}\n{tail}"
    assert "Done" in result.stderr
