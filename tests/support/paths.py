"""Where the repository's files are, wherever a test module sits in tests/."""

from __future__ import annotations

from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[2]
TOPOLOGY_FILE = REPO_ROOT / "topology" / "palu.yaml"
SCHEMAS_DIR = REPO_ROOT / "schemas"
