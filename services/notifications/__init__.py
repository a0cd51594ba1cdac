"""The `notifications` worker: consumes the `notifications` queue and nothing else."""
