#!/usr/bin/env python3
"""Evaluate a Chinese-CLIP checkpoint on the GPU server in one command (see --help)."""
from evalkit.cli import evaluate_main

if __name__ == "__main__":
    evaluate_main()
