"""What runs inside a worker process beside its tasks: the entrypoint, recovery, health."""
