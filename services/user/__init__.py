"""The `user` worker: consumes the `user` queue and nothing else."""
