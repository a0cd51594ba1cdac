"""Stand-in servers for the neighbours RAG Core talks to (Ingest, Users) and for Qdrant."""
