"""``python -m catsock``: the command line (see catsock/cli.py)."""

from .cli import main

main(prog_name="python -m catsock")
