"""Benchmarks: each figure beside a baseline measured in the same run; targets are ratios.

`python -m bench [--quick]` (or `make bench` / `make bench-quick`) runs
every scenario, prints a table and writes `bench/results/latest.json`.
Nothing here is a test: timings are never asserted, only reported.
"""
