"""YAML files of the installation (topology, connectors, public keys), read with libyaml.

PyYAML's pure-Python parser takes about 40 ms for a city's topology or its public keys file;
its libyaml parser (``CSafeLoader``, in the PyPI wheels) about 5 ms, and builds the same
objects through the same safe constructor. Every process start, publisher and key command
reads these files, so the parser is chosen once, here. Errors are `yaml.YAMLError` either way.
"""

from __future__ import annotations

from typing import Any

import yaml

#: libyaml's parser when PyYAML was built with it, else the pure-Python one (same results).
Loader: Any = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


def safe_load(text: str) -> Any:
    """`yaml.safe_load`, parsed by libyaml when it is there."""
    return yaml.load(text, Loader=Loader)
