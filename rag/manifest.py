"""The data directory's manifest: what its chunks and vectors were made with (model, dtype, fingerprint, chunk
format, embedder, index type). Models that differ from it are refused while the store holds documents."""
from .document_store import DocumentStore, StoreError


class Manifest:
    def __init__(self, store: DocumentStore):
        self.store = store

    def read(self) -> dict | None:
        return self.store.manifest()

    def check(self, key: str, value, what: str) -> None:
        """Raises StoreError when the store holds documents made with another `key`."""
        manifest = self.store.manifest()
        if manifest is not None and manifest.get(key) != value and self.store.counts()["documents"]:
            raise StoreError(
                f"{self.store.where} was built with another {key} ({manifest.get(key)}, model "
                f"{manifest.get('model')}, dtype {manifest.get('dtype')}); {what} differ now: use the same "
                f"--model/--dtype/embedder or another --data-dir or --store")

    def update(self, fields: dict) -> None:
        if self.store.manifest() != fields:
            self.store.write_manifest(fields)
