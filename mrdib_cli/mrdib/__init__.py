"""mrdib stage of the pipeline."""
