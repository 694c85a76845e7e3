"""Bridges from other libraries to bitttt's kernels. Each submodule imports its library; the
core package never imports them."""
