"""``python -m benchmarks.overhead``: the command line of ``benchmarks/overhead/cli.py``."""

from benchmarks.overhead.cli import main

main()
