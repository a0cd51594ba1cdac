"""Tests against real Redis, PostgreSQL and worker processes."""
