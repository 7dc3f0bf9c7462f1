"""Sections of the reproduction report (`benchmarks/run_all.py`): one module per section, see _common.py."""
