#!/bin/sh
# Regenerates requirements/constraints.txt: a fresh venv with every extra the tests use, frozen.
# Run it after a change to pyproject.toml's dependencies and commit the result.
set -eu
cd "$(dirname "$0")/.."
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
"${PYTHON:-python3}" -m venv "$tmp/venv"
"$tmp/venv/bin/pip" install --quiet -e '.[test,dev]'
{
    sed -n '/^#/!q;p' requirements/constraints.txt  # the header
    "$tmp/venv/bin/pip" freeze --exclude-editable | sort -f
} > "$tmp/constraints.txt"
mv "$tmp/constraints.txt" requirements/constraints.txt
