"""bitttt's benchmarks, shipped with the package so `bitttt bench ...` runs from a wheel."""
