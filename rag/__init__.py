"""cascade-rag: retrieval, storage, serving and the CLI (imports stay light; heavy modules load on use)."""
