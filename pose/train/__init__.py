"""Training: data pipeline, curriculum sampler, loop, checkpoints, DDP."""
