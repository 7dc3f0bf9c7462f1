"""reporting stage of the pipeline."""
