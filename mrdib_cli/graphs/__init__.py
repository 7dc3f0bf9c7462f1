"""graphs stage of the pipeline."""
