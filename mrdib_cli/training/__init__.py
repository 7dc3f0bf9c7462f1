"""training stage of the pipeline."""
