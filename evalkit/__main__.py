"""python -m evalkit: the evalkit command group (evaluate, demo)."""
from evalkit.cli import group_main

group_main("python -m evalkit")
