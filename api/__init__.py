"""The FastAPI control plane: queries, sync, task management."""
