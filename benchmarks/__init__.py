"""Benchmarks and tools outside the service: speed against transformers, the kernels, plots, the load test."""
