"""Real servers and processes for tests: private Redis, a fresh PostgreSQL database, deployables."""
