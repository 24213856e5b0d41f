"""`python -m simpul` runs the CLI."""

from simpul.cli.main import main

main()
