"""What an ingestion makes of one document, wherever it runs (in-process, or in a Ray actor): its content hash
(an unchanged document is skipped), its passages (text and the token ids of the passage prompt), and the manifest
of what the chunks and vectors are made with."""
import hashlib
import json

from cascade_rag.engine.chunk_format import FORMAT_VERSION

from .chunk_provider import Model
from .chunking import split_passages
from .embedder import Embedder
from .ingest import Document
from .options import RAGOptions


def content_hash(document: Document, options: RAGOptions) -> str:
    key = [document.title, document.text, options.passage_tokens, options.overlap]
    return hashlib.sha256(json.dumps(key).encode()).hexdigest()


def passages_of(document: Document, model: Model, options: RAGOptions) -> list[tuple[str, list[int]]]:
    """(text, token ids of the passage as the prompt template lays it out) of each passage of the document."""
    tok = model.engine.tokenizer
    texts = split_passages(document.text, lambda s: len(tok.encode(s)), tok.encode, tok.decode,
                           options.passage_tokens, options.overlap)
    return [(text, tok.encode(model.template.passage(document.title, text))) for text in texts]


def manifest_fields(model: Model, embedder: Embedder, options: RAGOptions) -> dict:
    return {"model": str(model.engine.model_path), "model_id": model.engine.model_id, "dtype": options.dtype,
            "fingerprint": model.fingerprint, "system_prompt": options.system_prompt, "chunk_format": FORMAT_VERSION,
            "embedder": embedder.name, "dim": embedder.dim, "index": options.index,
            "kv_bytes_per_token": model.engine.kv_bytes_per_token()}
