"""Python stubs generated from proto/cascade_rag/v1/cascade_rag.proto (regenerate: `make proto`)."""
