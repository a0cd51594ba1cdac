"""Routers per resource, gathered in `api.main`."""
