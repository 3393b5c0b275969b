"""Benchmarks (`make bench`): figures as JSON on stdout and in bench/results/latest.json."""
