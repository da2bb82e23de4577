"""`python -m ablations.cli`: the `senet-ablate` command."""

from ablations.cli import console

console()
