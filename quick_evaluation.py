#!/usr/bin/env python3
"""Run one stage of the evaluation on the GPU server: extract, knn or recall (see --help)."""
from evalkit.cli import quick_main

if __name__ == "__main__":
    quick_main()
