"""Benchmarks (not tests): run them with `make bench` or `python -m bench.<name>`."""
