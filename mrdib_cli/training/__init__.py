"""training stage: BPR sampler, trainer loop, checkpoints, plug-in objectives."""
