"""`python -m simpul` runs the CLI."""

from simpul.cli import main

main()
