"""The limits of one ingestion that a server operator sets (RAGOptions.ingest_limits, `serve --max-...`): the most
passages, tokens and KV-chunk bytes of a document and of a call, the length of a title, and the free space to keep
on the data directory's filesystem. Checked while the ingestion is planned, before anything is embedded, prefilled
or written; a call past one is refused naming it."""
from dataclasses import dataclass, fields

from .document_store import StoreError
from .ingest_cost import IngestTooLarge, format_size


@dataclass(frozen=True)
class IngestLimits:
    """None: no limit (the API and `cascade-rag ingest`); `serve` sets SERVER_LIMITS unless told otherwise."""
    max_title_chars: int | None = None
    max_document_passages: int | None = None
    max_document_tokens: int | None = None
    max_document_chunk_bytes: int | None = None
    max_call_passages: int | None = None
    max_call_tokens: int | None = None
    max_call_chunk_bytes: int | None = None
    disk_reserve_bytes: int = 0            # free space left on the filesystem after the ingestion

    def __post_init__(self):
        for f in fields(self):
            value = getattr(self, f.name)
            if value is not None and value < 0:
                raise ValueError(f"{f.name} must not be negative, got {value}")


# the defaults of `cascade-rag serve`: a title repeats in every passage of its document; KV is ~46 KB a token for the
# embedded model in fp32 on a CPU, so 250,000 tokens are ~11 GiB of chunks
SERVER_LIMITS = IngestLimits(max_title_chars=500, max_document_passages=2000, max_document_tokens=250_000,
                             max_document_chunk_bytes=4 << 30, max_call_passages=10_000, max_call_tokens=1_000_000,
                             max_call_chunk_bytes=16 << 30, disk_reserve_bytes=256 << 20)
# the serve flag of each limit (named in refusals)
FLAGS = {f.name: "--" + f.name.replace("_", "-") for f in fields(IngestLimits)} | \
    {"disk_reserve_bytes": "--disk-reserve"}


class LimitExceeded(IngestTooLarge):
    """An ingestion past a limit of its size (RESOURCE_EXHAUSTED); `doc_id`: the document past a per-document one."""

    def __init__(self, message: str, doc_id: str | None = None):
        super().__init__(message)
        self.doc_id = doc_id


class InvalidDocument(StoreError):
    """A document that cannot be ingested as given (INVALID_ARGUMENT): `field` (title, text) names what is wrong."""

    def __init__(self, message: str, doc_id: str, field: str):
        super().__init__(message)
        self.doc_id, self.field = doc_id, field

    def __reduce__(self):  # pickled whole (a Ray worker hands it to the driver)
        return type(self), (str(self), self.doc_id, self.field)


def _over(limit: int | None, value: int) -> bool:
    return limit is not None and value > limit


def check_title(limits: IngestLimits, doc_id: str, title: str) -> None:
    if _over(limits.max_title_chars, len(title)):
        raise InvalidDocument(f"document {doc_id!r} has a title of {len(title):,} characters, at most "
                              f"{limits.max_title_chars:,} ({FLAGS['max_title_chars']}); a title repeats in every "
                              f"passage", doc_id, "title")


def check_positions(doc_id: str, title: str, longest: int, level0: int, max_positions: int) -> None:
    """A passage that would not fit the model's positions after level 0."""
    if level0 + longest > max_positions:
        field = "title" if title else "text"
        raise InvalidDocument(f"document {doc_id!r} has a passage of {longest:,} tokens (its title repeats in each), "
                              f"which after the {level0:,} of the system prompt exceeds the model's {max_positions:,} "
                              f"positions; shorten the title", doc_id, field)


def check_document(limits: IngestLimits, doc_id: str, passages: int, tokens: int, chunk_bytes: int) -> None:
    for name, value, what in (("max_document_passages", passages, f"{passages:,} passages"),
                              ("max_document_tokens", tokens, f"{tokens:,} tokens"),
                              ("max_document_chunk_bytes", chunk_bytes, f"{format_size(chunk_bytes)} of KV chunks")):
        limit = getattr(limits, name)
        if _over(limit, value):
            shown = format_size(limit) if name.endswith("_bytes") else f"{limit:,}"
            raise LimitExceeded(f"document {doc_id!r} would make {what}, more than the server's limit of {shown} "
                                f"({FLAGS[name]}); split it into smaller documents; nothing was ingested", doc_id)


def check_call(limits: IngestLimits, passages: int, tokens: int, chunk_bytes: int) -> None:
    for name, value, what in (("max_call_passages", passages, f"{passages:,} passages"),
                              ("max_call_tokens", tokens, f"{tokens:,} tokens"),
                              ("max_call_chunk_bytes", chunk_bytes, f"{format_size(chunk_bytes)} of KV chunks")):
        limit = getattr(limits, name)
        if _over(limit, value):
            shown = format_size(limit) if name.endswith("_bytes") else f"{limit:,}"
            raise LimitExceeded(f"these documents would make {what}, more than the server's limit of {shown} for one "
                                f"call ({FLAGS[name]}); send them over several calls; nothing was ingested")
