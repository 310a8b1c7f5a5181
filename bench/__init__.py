"""Serving benchmarks: load generator, prompt sets, peers, roofline (see bench/README.md)."""
