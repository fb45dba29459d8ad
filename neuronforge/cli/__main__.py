"""`python -m neuronforge.cli`: the same entry point as the `neuronforge` script."""

from neuronforge.cli import main

main()
