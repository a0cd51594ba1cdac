"""Clients of the neighbours: the shared httpx transport, Ingest, Users, the embedder, Qdrant."""
