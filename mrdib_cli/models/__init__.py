"""models stage of the pipeline."""
