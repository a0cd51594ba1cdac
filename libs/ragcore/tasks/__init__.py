"""Celery plumbing every deployable shares: the task contracts, the app factory, dispatch by name, the
ledger and the periodic locks."""
