"""The `sync` worker: consumes the `sync` queue and nothing else."""
