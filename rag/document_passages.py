"""What an ingestion makes of its documents, wherever it runs (in-process, or a Ray driver and its actors): which
documents are new or changed (by content hash: an unchanged one is skipped), each one's passages (text and the token
ids of the passage prompt), checked against the ingestion's limits before anything is written, and the manifest of
what the chunks and vectors are made with. The in-process Ingestor and rag/ray_ingest.py share these steps, so both
plan, limit and key an ingestion alike."""
import hashlib
import json
from typing import Callable, Iterator

from cascade_rag.engine.chunk_format import FORMAT_VERSION

from .chunk_provider import Model
from .chunking import split_passages
from .embedder import Embedder
from .ingest import Document, IngestReport, InputError
from .ingest_cost import chunk_file_bytes
from .ingest_limits import IngestLimits, check_call, check_document, check_positions, check_title
from .options import RAGOptions

Passages = list[tuple[str, list[int]]]   # (text, token ids) of each passage of a document


def content_hash(document: Document, options: RAGOptions) -> str:
    key = [document.title, document.text, options.passage_tokens, options.overlap]
    key += [sorted(document.metadata.items())] if document.metadata else []
    return hashlib.sha256(json.dumps(key).encode()).hexdigest()


def changed_documents(items: list[Document | InputError], report: IngestReport, known: Callable[[str], str | None],
                      options: RAGOptions) -> Iterator[tuple[Document, str]]:
    """(document, content hash) of each new or changed document, its title checked against the limits; input
    errors, repeated ids and unchanged documents (`known(id)`: the stored content hash) reported."""
    seen = set()
    for item in items:
        if isinstance(item, InputError):
            report.errors.append(item)
        elif item.id in seen:
            report.errors.append(InputError(item.source or "input", f"document {item.id} given twice; the first one "
                                                                     f"was kept"))
        else:
            seen.add(item.id)
            check_title(options.ingest_limits, item.id, item.title)
            digest = content_hash(item, options)
            if known(item.id) == digest:
                report.unchanged.append(item.id)
            else:
                yield item, digest


def passages_of(document: Document, model: Model, options: RAGOptions) -> Passages:
    """The document's passages as the prompt template lays them out (user text never a control token), each checked
    to fit the model's positions after level 0 and the whole against the limits of one document."""
    tok = model.engine.tokenizer
    texts = split_passages(document.text, lambda s: len(tok.encode_text(s)), tok.encode_text, tok.decode,
                           options.passage_tokens, options.overlap)
    passages = [(text, tok.encode_text(model.template.passage(document.title, text))) for text in texts]
    check_positions(document.id, document.title, max((len(ids) for _, ids in passages), default=0),
                    model.level0.length, model.engine.config.max_position)
    kv = model.engine.kv_bytes_per_token()
    check_document(options.ingest_limits, document.id, len(passages), sum(len(ids) for _, ids in passages),
                   sum(chunk_file_bytes(ids, kv) for _, ids in passages))
    return passages


class CallTally:
    """The passages and tokens of one ingestion so far, checked against the limits of a call as each document is
    planned (its chunk bytes are checked once the chunks to compute are known)."""

    def __init__(self, limits: IngestLimits):
        self.limits, self.passages, self.tokens = limits, 0, 0

    def add(self, passages: Passages) -> None:
        self.passages += len(passages)
        self.tokens += sum(len(ids) for _, ids in passages)
        check_call(self.limits, self.passages, self.tokens, 0)


def manifest_fields(model: Model, embedder: Embedder, options: RAGOptions) -> dict:
    return {"model": str(model.engine.model_path), "model_id": model.engine.model_id, "dtype": options.dtype,
            "fingerprint": model.fingerprint, "system_prompt": options.system_prompt, "chunk_format": FORMAT_VERSION,
            "kv_format": options.kv_format, "embedder": embedder.name, "dim": embedder.dim, "index": options.index,
            "kv_bytes_per_token": model.engine.kv_bytes_per_token()}
