"""Benchmarks of optax_usam (run as modules: ``python -m benchmarks.overhead``)."""
