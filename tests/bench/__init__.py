"""Tests of the benchmark harness (bench/): the ``--quick`` smoke run, end to end.

These run ``python -m bench --quick`` as a subprocess against real servers on
loopback ports and check what it wrote. They assert that every scenario ran and
that catsock lost nothing at the quick loads, never how fast anything was: the
numbers depend on the machine (docs/benchmarks.md).
"""
