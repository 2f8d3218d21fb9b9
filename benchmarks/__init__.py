"""Benchmark scripts (run as ``python -m benchmarks.NAME``): they print ratios measured in one run."""
import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # before torch loads: see README, "CPU threads"
