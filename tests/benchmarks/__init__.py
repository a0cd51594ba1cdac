"""Benchmarks: runnable modules (`python -m tests.benchmarks.<name>`), never collected as tests."""
