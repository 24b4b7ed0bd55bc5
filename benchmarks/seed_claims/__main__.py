"""``python -m benchmarks.seed_claims``: the command line of ``benchmarks/seed_claims/cli.py``."""

from benchmarks.seed_claims.cli import main

main()
