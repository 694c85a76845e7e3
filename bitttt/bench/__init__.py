"""Benchmarks runnable from an installed wheel (`bitttt bench ...`)."""
