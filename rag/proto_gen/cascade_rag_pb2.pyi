from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class Mode(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    MODE_UNSPECIFIED: _ClassVar[Mode]
    MODE_CACHED: _ClassVar[Mode]
    MODE_FULL: _ClassVar[Mode]
    MODE_BLEND: _ClassVar[Mode]

class FinishReason(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    FINISH_REASON_UNSPECIFIED: _ClassVar[FinishReason]
    FINISH_REASON_STOP: _ClassVar[FinishReason]
    FINISH_REASON_LENGTH: _ClassVar[FinishReason]

class IngestStatus(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    INGEST_STATUS_UNSPECIFIED: _ClassVar[IngestStatus]
    INGEST_STATUS_ADDED: _ClassVar[IngestStatus]
    INGEST_STATUS_UPDATED: _ClassVar[IngestStatus]
    INGEST_STATUS_UNCHANGED: _ClassVar[IngestStatus]
MODE_UNSPECIFIED: Mode
MODE_CACHED: Mode
MODE_FULL: Mode
MODE_BLEND: Mode
FINISH_REASON_UNSPECIFIED: FinishReason
FINISH_REASON_STOP: FinishReason
FINISH_REASON_LENGTH: FinishReason
INGEST_STATUS_UNSPECIFIED: IngestStatus
INGEST_STATUS_ADDED: IngestStatus
INGEST_STATUS_UPDATED: IngestStatus
INGEST_STATUS_UNCHANGED: IngestStatus

class QueryRequest(_message.Message):
    __slots__ = ("question", "top_k", "max_tokens", "temperature", "top_p", "seed", "mode", "collection", "filter")
    QUESTION_FIELD_NUMBER: _ClassVar[int]
    TOP_K_FIELD_NUMBER: _ClassVar[int]
    MAX_TOKENS_FIELD_NUMBER: _ClassVar[int]
    TEMPERATURE_FIELD_NUMBER: _ClassVar[int]
    TOP_P_FIELD_NUMBER: _ClassVar[int]
    SEED_FIELD_NUMBER: _ClassVar[int]
    MODE_FIELD_NUMBER: _ClassVar[int]
    COLLECTION_FIELD_NUMBER: _ClassVar[int]
    FILTER_FIELD_NUMBER: _ClassVar[int]
    question: str
    top_k: int
    max_tokens: int
    temperature: float
    top_p: float
    seed: int
    mode: Mode
    collection: str
    filter: MetadataFilter
    def __init__(self, question: _Optional[str] = ..., top_k: _Optional[int] = ..., max_tokens: _Optional[int] = ..., temperature: _Optional[float] = ..., top_p: _Optional[float] = ..., seed: _Optional[int] = ..., mode: _Optional[_Union[Mode, str]] = ..., collection: _Optional[str] = ..., filter: _Optional[_Union[MetadataFilter, _Mapping]] = ...) -> None: ...

class MetadataFilter(_message.Message):
    __slots__ = ("conditions",)
    CONDITIONS_FIELD_NUMBER: _ClassVar[int]
    conditions: _containers.RepeatedCompositeFieldContainer[MetadataCondition]
    def __init__(self, conditions: _Optional[_Iterable[_Union[MetadataCondition, _Mapping]]] = ...) -> None: ...

class MetadataCondition(_message.Message):
    __slots__ = ("key", "values")
    KEY_FIELD_NUMBER: _ClassVar[int]
    VALUES_FIELD_NUMBER: _ClassVar[int]
    key: str
    values: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, key: _Optional[str] = ..., values: _Optional[_Iterable[str]] = ...) -> None: ...

class QueryResponse(_message.Message):
    __slots__ = ("text", "result")
    TEXT_FIELD_NUMBER: _ClassVar[int]
    RESULT_FIELD_NUMBER: _ClassVar[int]
    text: str
    result: QueryResult
    def __init__(self, text: _Optional[str] = ..., result: _Optional[_Union[QueryResult, _Mapping]] = ...) -> None: ...

class QueryResult(_message.Message):
    __slots__ = ("finish_reason", "sources", "usage", "timings", "chunk_tiers", "warnings", "text", "mode")
    FINISH_REASON_FIELD_NUMBER: _ClassVar[int]
    SOURCES_FIELD_NUMBER: _ClassVar[int]
    USAGE_FIELD_NUMBER: _ClassVar[int]
    TIMINGS_FIELD_NUMBER: _ClassVar[int]
    CHUNK_TIERS_FIELD_NUMBER: _ClassVar[int]
    WARNINGS_FIELD_NUMBER: _ClassVar[int]
    TEXT_FIELD_NUMBER: _ClassVar[int]
    MODE_FIELD_NUMBER: _ClassVar[int]
    finish_reason: FinishReason
    sources: _containers.RepeatedCompositeFieldContainer[Source]
    usage: Usage
    timings: Timings
    chunk_tiers: ChunkTiers
    warnings: _containers.RepeatedScalarFieldContainer[str]
    text: str
    mode: Mode
    def __init__(self, finish_reason: _Optional[_Union[FinishReason, str]] = ..., sources: _Optional[_Iterable[_Union[Source, _Mapping]]] = ..., usage: _Optional[_Union[Usage, _Mapping]] = ..., timings: _Optional[_Union[Timings, _Mapping]] = ..., chunk_tiers: _Optional[_Union[ChunkTiers, _Mapping]] = ..., warnings: _Optional[_Iterable[str]] = ..., text: _Optional[str] = ..., mode: _Optional[_Union[Mode, str]] = ...) -> None: ...

class Usage(_message.Message):
    __slots__ = ("prompt_tokens", "completion_tokens")
    PROMPT_TOKENS_FIELD_NUMBER: _ClassVar[int]
    COMPLETION_TOKENS_FIELD_NUMBER: _ClassVar[int]
    prompt_tokens: int
    completion_tokens: int
    def __init__(self, prompt_tokens: _Optional[int] = ..., completion_tokens: _Optional[int] = ...) -> None: ...

class Timings(_message.Message):
    __slots__ = ("queue_time_ns", "retrieval_time_ns", "chunks_time_ns", "prefill_time_ns", "time_to_first_token_ns", "total_time_ns", "decode_tokens_per_second")
    QUEUE_TIME_NS_FIELD_NUMBER: _ClassVar[int]
    RETRIEVAL_TIME_NS_FIELD_NUMBER: _ClassVar[int]
    CHUNKS_TIME_NS_FIELD_NUMBER: _ClassVar[int]
    PREFILL_TIME_NS_FIELD_NUMBER: _ClassVar[int]
    TIME_TO_FIRST_TOKEN_NS_FIELD_NUMBER: _ClassVar[int]
    TOTAL_TIME_NS_FIELD_NUMBER: _ClassVar[int]
    DECODE_TOKENS_PER_SECOND_FIELD_NUMBER: _ClassVar[int]
    queue_time_ns: int
    retrieval_time_ns: int
    chunks_time_ns: int
    prefill_time_ns: int
    time_to_first_token_ns: int
    total_time_ns: int
    decode_tokens_per_second: float
    def __init__(self, queue_time_ns: _Optional[int] = ..., retrieval_time_ns: _Optional[int] = ..., chunks_time_ns: _Optional[int] = ..., prefill_time_ns: _Optional[int] = ..., time_to_first_token_ns: _Optional[int] = ..., total_time_ns: _Optional[int] = ..., decode_tokens_per_second: _Optional[float] = ...) -> None: ...

class ChunkTiers(_message.Message):
    __slots__ = ("gpu", "cpu", "disk", "recomputed", "remote")
    GPU_FIELD_NUMBER: _ClassVar[int]
    CPU_FIELD_NUMBER: _ClassVar[int]
    DISK_FIELD_NUMBER: _ClassVar[int]
    RECOMPUTED_FIELD_NUMBER: _ClassVar[int]
    REMOTE_FIELD_NUMBER: _ClassVar[int]
    gpu: int
    cpu: int
    disk: int
    recomputed: int
    remote: int
    def __init__(self, gpu: _Optional[int] = ..., cpu: _Optional[int] = ..., disk: _Optional[int] = ..., recomputed: _Optional[int] = ..., remote: _Optional[int] = ...) -> None: ...

class Source(_message.Message):
    __slots__ = ("document_id", "title", "score", "passage_id", "text", "metadata")
    class MetadataEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    DOCUMENT_ID_FIELD_NUMBER: _ClassVar[int]
    TITLE_FIELD_NUMBER: _ClassVar[int]
    SCORE_FIELD_NUMBER: _ClassVar[int]
    PASSAGE_ID_FIELD_NUMBER: _ClassVar[int]
    TEXT_FIELD_NUMBER: _ClassVar[int]
    METADATA_FIELD_NUMBER: _ClassVar[int]
    document_id: str
    title: str
    score: float
    passage_id: int
    text: str
    metadata: _containers.ScalarMap[str, str]
    def __init__(self, document_id: _Optional[str] = ..., title: _Optional[str] = ..., score: _Optional[float] = ..., passage_id: _Optional[int] = ..., text: _Optional[str] = ..., metadata: _Optional[_Mapping[str, str]] = ...) -> None: ...

class RetrieveRequest(_message.Message):
    __slots__ = ("question", "top_k", "collection", "filter")
    QUESTION_FIELD_NUMBER: _ClassVar[int]
    TOP_K_FIELD_NUMBER: _ClassVar[int]
    COLLECTION_FIELD_NUMBER: _ClassVar[int]
    FILTER_FIELD_NUMBER: _ClassVar[int]
    question: str
    top_k: int
    collection: str
    filter: MetadataFilter
    def __init__(self, question: _Optional[str] = ..., top_k: _Optional[int] = ..., collection: _Optional[str] = ..., filter: _Optional[_Union[MetadataFilter, _Mapping]] = ...) -> None: ...

class RetrieveResponse(_message.Message):
    __slots__ = ("passages", "queue_time_ns", "retrieval_time_ns")
    PASSAGES_FIELD_NUMBER: _ClassVar[int]
    QUEUE_TIME_NS_FIELD_NUMBER: _ClassVar[int]
    RETRIEVAL_TIME_NS_FIELD_NUMBER: _ClassVar[int]
    passages: _containers.RepeatedCompositeFieldContainer[Source]
    queue_time_ns: int
    retrieval_time_ns: int
    def __init__(self, passages: _Optional[_Iterable[_Union[Source, _Mapping]]] = ..., queue_time_ns: _Optional[int] = ..., retrieval_time_ns: _Optional[int] = ...) -> None: ...

class Document(_message.Message):
    __slots__ = ("id", "title", "text", "source", "metadata")
    class MetadataEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    ID_FIELD_NUMBER: _ClassVar[int]
    TITLE_FIELD_NUMBER: _ClassVar[int]
    TEXT_FIELD_NUMBER: _ClassVar[int]
    SOURCE_FIELD_NUMBER: _ClassVar[int]
    METADATA_FIELD_NUMBER: _ClassVar[int]
    id: str
    title: str
    text: str
    source: str
    metadata: _containers.ScalarMap[str, str]
    def __init__(self, id: _Optional[str] = ..., title: _Optional[str] = ..., text: _Optional[str] = ..., source: _Optional[str] = ..., metadata: _Optional[_Mapping[str, str]] = ...) -> None: ...

class IngestDocumentsRequest(_message.Message):
    __slots__ = ("documents", "collection")
    DOCUMENTS_FIELD_NUMBER: _ClassVar[int]
    COLLECTION_FIELD_NUMBER: _ClassVar[int]
    documents: _containers.RepeatedCompositeFieldContainer[Document]
    collection: str
    def __init__(self, documents: _Optional[_Iterable[_Union[Document, _Mapping]]] = ..., collection: _Optional[str] = ...) -> None: ...

class DocumentResult(_message.Message):
    __slots__ = ("id", "status")
    ID_FIELD_NUMBER: _ClassVar[int]
    STATUS_FIELD_NUMBER: _ClassVar[int]
    id: str
    status: IngestStatus
    def __init__(self, id: _Optional[str] = ..., status: _Optional[_Union[IngestStatus, str]] = ...) -> None: ...

class IngestDocumentsResponse(_message.Message):
    __slots__ = ("results", "passages", "prefilled", "tokens", "kv_bytes", "time_ns")
    RESULTS_FIELD_NUMBER: _ClassVar[int]
    PASSAGES_FIELD_NUMBER: _ClassVar[int]
    PREFILLED_FIELD_NUMBER: _ClassVar[int]
    TOKENS_FIELD_NUMBER: _ClassVar[int]
    KV_BYTES_FIELD_NUMBER: _ClassVar[int]
    TIME_NS_FIELD_NUMBER: _ClassVar[int]
    results: _containers.RepeatedCompositeFieldContainer[DocumentResult]
    passages: int
    prefilled: int
    tokens: int
    kv_bytes: int
    time_ns: int
    def __init__(self, results: _Optional[_Iterable[_Union[DocumentResult, _Mapping]]] = ..., passages: _Optional[int] = ..., prefilled: _Optional[int] = ..., tokens: _Optional[int] = ..., kv_bytes: _Optional[int] = ..., time_ns: _Optional[int] = ...) -> None: ...

class DeleteDocumentsRequest(_message.Message):
    __slots__ = ("ids", "collection")
    IDS_FIELD_NUMBER: _ClassVar[int]
    COLLECTION_FIELD_NUMBER: _ClassVar[int]
    ids: _containers.RepeatedScalarFieldContainer[str]
    collection: str
    def __init__(self, ids: _Optional[_Iterable[str]] = ..., collection: _Optional[str] = ...) -> None: ...

class DeleteDocumentsResponse(_message.Message):
    __slots__ = ("deleted_ids",)
    DELETED_IDS_FIELD_NUMBER: _ClassVar[int]
    deleted_ids: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, deleted_ids: _Optional[_Iterable[str]] = ...) -> None: ...

class ListDocumentsRequest(_message.Message):
    __slots__ = ("page_size", "page_token", "collection")
    PAGE_SIZE_FIELD_NUMBER: _ClassVar[int]
    PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    COLLECTION_FIELD_NUMBER: _ClassVar[int]
    page_size: int
    page_token: str
    collection: str
    def __init__(self, page_size: _Optional[int] = ..., page_token: _Optional[str] = ..., collection: _Optional[str] = ...) -> None: ...

class DocumentInfo(_message.Message):
    __slots__ = ("id", "title", "source", "passages", "tokens", "metadata")
    class MetadataEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    ID_FIELD_NUMBER: _ClassVar[int]
    TITLE_FIELD_NUMBER: _ClassVar[int]
    SOURCE_FIELD_NUMBER: _ClassVar[int]
    PASSAGES_FIELD_NUMBER: _ClassVar[int]
    TOKENS_FIELD_NUMBER: _ClassVar[int]
    METADATA_FIELD_NUMBER: _ClassVar[int]
    id: str
    title: str
    source: str
    passages: int
    tokens: int
    metadata: _containers.ScalarMap[str, str]
    def __init__(self, id: _Optional[str] = ..., title: _Optional[str] = ..., source: _Optional[str] = ..., passages: _Optional[int] = ..., tokens: _Optional[int] = ..., metadata: _Optional[_Mapping[str, str]] = ...) -> None: ...

class ListDocumentsResponse(_message.Message):
    __slots__ = ("documents", "next_page_token", "total_size")
    DOCUMENTS_FIELD_NUMBER: _ClassVar[int]
    NEXT_PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    TOTAL_SIZE_FIELD_NUMBER: _ClassVar[int]
    documents: _containers.RepeatedCompositeFieldContainer[DocumentInfo]
    next_page_token: str
    total_size: int
    def __init__(self, documents: _Optional[_Iterable[_Union[DocumentInfo, _Mapping]]] = ..., next_page_token: _Optional[str] = ..., total_size: _Optional[int] = ...) -> None: ...

class GetInfoRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class ModelInfo(_message.Message):
    __slots__ = ("path", "id", "dtype", "device", "kv_bytes_per_token", "max_positions")
    PATH_FIELD_NUMBER: _ClassVar[int]
    ID_FIELD_NUMBER: _ClassVar[int]
    DTYPE_FIELD_NUMBER: _ClassVar[int]
    DEVICE_FIELD_NUMBER: _ClassVar[int]
    KV_BYTES_PER_TOKEN_FIELD_NUMBER: _ClassVar[int]
    MAX_POSITIONS_FIELD_NUMBER: _ClassVar[int]
    path: str
    id: str
    dtype: str
    device: str
    kv_bytes_per_token: int
    max_positions: int
    def __init__(self, path: _Optional[str] = ..., id: _Optional[str] = ..., dtype: _Optional[str] = ..., device: _Optional[str] = ..., kv_bytes_per_token: _Optional[int] = ..., max_positions: _Optional[int] = ...) -> None: ...

class EmbedderInfo(_message.Message):
    __slots__ = ("name", "dim")
    NAME_FIELD_NUMBER: _ClassVar[int]
    DIM_FIELD_NUMBER: _ClassVar[int]
    name: str
    dim: int
    def __init__(self, name: _Optional[str] = ..., dim: _Optional[int] = ...) -> None: ...

class Counts(_message.Message):
    __slots__ = ("documents", "passages", "tokens", "chunk_files", "chunk_bytes")
    DOCUMENTS_FIELD_NUMBER: _ClassVar[int]
    PASSAGES_FIELD_NUMBER: _ClassVar[int]
    TOKENS_FIELD_NUMBER: _ClassVar[int]
    CHUNK_FILES_FIELD_NUMBER: _ClassVar[int]
    CHUNK_BYTES_FIELD_NUMBER: _ClassVar[int]
    documents: int
    passages: int
    tokens: int
    chunk_files: int
    chunk_bytes: int
    def __init__(self, documents: _Optional[int] = ..., passages: _Optional[int] = ..., tokens: _Optional[int] = ..., chunk_files: _Optional[int] = ..., chunk_bytes: _Optional[int] = ...) -> None: ...

class CacheTier(_message.Message):
    __slots__ = ("name", "chunks", "bytes", "budget_bytes", "hits", "misses", "evictions", "hit_rate")
    NAME_FIELD_NUMBER: _ClassVar[int]
    CHUNKS_FIELD_NUMBER: _ClassVar[int]
    BYTES_FIELD_NUMBER: _ClassVar[int]
    BUDGET_BYTES_FIELD_NUMBER: _ClassVar[int]
    HITS_FIELD_NUMBER: _ClassVar[int]
    MISSES_FIELD_NUMBER: _ClassVar[int]
    EVICTIONS_FIELD_NUMBER: _ClassVar[int]
    HIT_RATE_FIELD_NUMBER: _ClassVar[int]
    name: str
    chunks: int
    bytes: int
    budget_bytes: int
    hits: int
    misses: int
    evictions: int
    hit_rate: float
    def __init__(self, name: _Optional[str] = ..., chunks: _Optional[int] = ..., bytes: _Optional[int] = ..., budget_bytes: _Optional[int] = ..., hits: _Optional[int] = ..., misses: _Optional[int] = ..., evictions: _Optional[int] = ..., hit_rate: _Optional[float] = ...) -> None: ...

class QueueInfo(_message.Message):
    __slots__ = ("max_queue", "waiting", "running", "answered", "rejected")
    MAX_QUEUE_FIELD_NUMBER: _ClassVar[int]
    WAITING_FIELD_NUMBER: _ClassVar[int]
    RUNNING_FIELD_NUMBER: _ClassVar[int]
    ANSWERED_FIELD_NUMBER: _ClassVar[int]
    REJECTED_FIELD_NUMBER: _ClassVar[int]
    max_queue: int
    waiting: int
    running: int
    answered: int
    rejected: int
    def __init__(self, max_queue: _Optional[int] = ..., waiting: _Optional[int] = ..., running: _Optional[int] = ..., answered: _Optional[int] = ..., rejected: _Optional[int] = ...) -> None: ...

class Limits(_message.Message):
    __slots__ = ("max_question_chars", "max_top_k", "max_tokens", "max_message_bytes", "ingest")
    MAX_QUESTION_CHARS_FIELD_NUMBER: _ClassVar[int]
    MAX_TOP_K_FIELD_NUMBER: _ClassVar[int]
    MAX_TOKENS_FIELD_NUMBER: _ClassVar[int]
    MAX_MESSAGE_BYTES_FIELD_NUMBER: _ClassVar[int]
    INGEST_FIELD_NUMBER: _ClassVar[int]
    max_question_chars: int
    max_top_k: int
    max_tokens: int
    max_message_bytes: int
    ingest: IngestLimits
    def __init__(self, max_question_chars: _Optional[int] = ..., max_top_k: _Optional[int] = ..., max_tokens: _Optional[int] = ..., max_message_bytes: _Optional[int] = ..., ingest: _Optional[_Union[IngestLimits, _Mapping]] = ...) -> None: ...

class IngestLimits(_message.Message):
    __slots__ = ("max_title_chars", "max_document_passages", "max_document_tokens", "max_document_chunk_bytes", "max_call_passages", "max_call_tokens", "max_call_chunk_bytes", "disk_reserve_bytes")
    MAX_TITLE_CHARS_FIELD_NUMBER: _ClassVar[int]
    MAX_DOCUMENT_PASSAGES_FIELD_NUMBER: _ClassVar[int]
    MAX_DOCUMENT_TOKENS_FIELD_NUMBER: _ClassVar[int]
    MAX_DOCUMENT_CHUNK_BYTES_FIELD_NUMBER: _ClassVar[int]
    MAX_CALL_PASSAGES_FIELD_NUMBER: _ClassVar[int]
    MAX_CALL_TOKENS_FIELD_NUMBER: _ClassVar[int]
    MAX_CALL_CHUNK_BYTES_FIELD_NUMBER: _ClassVar[int]
    DISK_RESERVE_BYTES_FIELD_NUMBER: _ClassVar[int]
    max_title_chars: int
    max_document_passages: int
    max_document_tokens: int
    max_document_chunk_bytes: int
    max_call_passages: int
    max_call_tokens: int
    max_call_chunk_bytes: int
    disk_reserve_bytes: int
    def __init__(self, max_title_chars: _Optional[int] = ..., max_document_passages: _Optional[int] = ..., max_document_tokens: _Optional[int] = ..., max_document_chunk_bytes: _Optional[int] = ..., max_call_passages: _Optional[int] = ..., max_call_tokens: _Optional[int] = ..., max_call_chunk_bytes: _Optional[int] = ..., disk_reserve_bytes: _Optional[int] = ...) -> None: ...

class GetInfoResponse(_message.Message):
    __slots__ = ("version", "model", "embedder", "counts", "cache_tiers", "queue", "limits")
    VERSION_FIELD_NUMBER: _ClassVar[int]
    MODEL_FIELD_NUMBER: _ClassVar[int]
    EMBEDDER_FIELD_NUMBER: _ClassVar[int]
    COUNTS_FIELD_NUMBER: _ClassVar[int]
    CACHE_TIERS_FIELD_NUMBER: _ClassVar[int]
    QUEUE_FIELD_NUMBER: _ClassVar[int]
    LIMITS_FIELD_NUMBER: _ClassVar[int]
    version: str
    model: ModelInfo
    embedder: EmbedderInfo
    counts: Counts
    cache_tiers: _containers.RepeatedCompositeFieldContainer[CacheTier]
    queue: QueueInfo
    limits: Limits
    def __init__(self, version: _Optional[str] = ..., model: _Optional[_Union[ModelInfo, _Mapping]] = ..., embedder: _Optional[_Union[EmbedderInfo, _Mapping]] = ..., counts: _Optional[_Union[Counts, _Mapping]] = ..., cache_tiers: _Optional[_Iterable[_Union[CacheTier, _Mapping]]] = ..., queue: _Optional[_Union[QueueInfo, _Mapping]] = ..., limits: _Optional[_Union[Limits, _Mapping]] = ...) -> None: ...
