"""ragcore: what every deployable shares — settings, contracts, Celery, storage and neighbours."""
