"""A stand-in for llama-cpp-python in tests/bench/test_serve_bench.py: only its server."""
