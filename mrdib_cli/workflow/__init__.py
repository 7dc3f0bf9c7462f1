"""Researcher workflow: study configs, cached pipelines, sweeps, the leakage doctor, quickstart."""
