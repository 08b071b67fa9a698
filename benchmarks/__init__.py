"""Benchmark harness for the SPEC §10 targets (not part of the test suite)."""
