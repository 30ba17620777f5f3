"""The data directory's manifest: what its chunks and vectors were made with (model, dtype, fingerprint, chunk
format and KV format, embedder, index type). Models and KV formats that differ from it are refused while the
store holds documents."""
from .document_store import DocumentStore, StoreError


class KVFormatMismatch(StoreError):
    """Chunks asked for in a KV format other than the data directory's."""


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

    def check_kv_format(self, kv_format: str) -> None:
        """Raises KVFormatMismatch when the store holds documents whose chunks are in another KV format."""
        manifest = self.store.manifest()
        stored = (manifest or {}).get("kv_format", "dtype")
        if manifest is not None and stored != kv_format and self.store.counts()["documents"]:
            raise KVFormatMismatch(
                f"{self.store.where} holds KV chunks in format {stored}, this process was started with "
                f"--kv-format {kv_format}: use --kv-format {stored} (or leave it out) or another --data-dir or --store")

    def update(self, fields: dict) -> None:
        if self.store.manifest() != fields:
            self.store.write_manifest(fields)
