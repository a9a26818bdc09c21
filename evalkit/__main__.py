"""python -m evalkit: the evalkit command group (evaluate, demo)."""
from evalkit.cli import main

main(prog_name="python -m evalkit")
