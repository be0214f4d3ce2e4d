"""`python -m ftkit ...` is the `ftkit` command (also what `accelerate launch -m ftkit train ...` runs)."""
from ftkit.cli import entry

entry()
