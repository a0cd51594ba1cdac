"""The `cleanup` worker: consumes the `cleanup` queue and nothing else."""
