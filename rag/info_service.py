"""The Info service: the version, the model and embedder, counts, memory tiers, the queue and the limits."""
from importlib import metadata

from .grpc_checks import MAX_QUESTION_CHARS, MAX_TOKENS, MAX_TOP_K
from .grpc_scope import visible_collections
from .pipeline import RAG
from .proto_gen import cascade_rag_pb2 as pb
from .proto_gen import cascade_rag_pb2_grpc as pb_grpc
from .request_queue import RequestQueue
from .token_scopes import TokenScopes


def version() -> str:
    try:
        return metadata.version("cascade-rag")
    except metadata.PackageNotFoundError:
        return "unknown"


class InfoService(pb_grpc.InfoServicer):
    def __init__(self, rag: RAG, queue: RequestQueue, max_message_bytes: int, tokens: TokenScopes | None = None):
        self.rag, self.queue, self.max_message_bytes, self.tokens = rag, queue, max_message_bytes, tokens
        # held here: loading them waits for the engine lock, which a running answer holds
        self.engine, self.embedder = rag.model().engine, rag.embedder()

    def GetInfo(self, request, context):
        # a token scoped to collections sees their counts only, and not the tiers that all collections share
        engine, embedder, stats = self.engine, self.embedder, self.rag.stats(visible_collections(context, self.tokens))
        tiers = []
        for name, tier in stats.get("cache", {}).items():
            lookups = tier["hits"] + tier["misses"]
            tiers.append(pb.CacheTier(name=name, hit_rate=tier["hits"] / lookups if lookups else 0.0, **tier))
        return pb.GetInfoResponse(
            version=version(),
            model=pb.ModelInfo(path=str(engine.model_path), id=engine.model_id, dtype=str(engine.dtype).split(".")[-1],
                               device=str(engine.device), kv_bytes_per_token=engine.kv_bytes_per_token(),
                               max_positions=engine.config.max_position),
            embedder=pb.EmbedderInfo(name=embedder.name, dim=embedder.dim),
            counts=pb.Counts(**{k: stats[k] for k in ("documents", "passages", "tokens", "chunk_files",
                                                      "chunk_bytes")}),
            cache_tiers=tiers,
            queue=pb.QueueInfo(max_queue=self.queue.max_queue, waiting=self.queue.waiting, running=self.queue.running,
                               answered=self.queue.served, rejected=self.queue.rejected),
            limits=pb.Limits(max_question_chars=MAX_QUESTION_CHARS, max_top_k=MAX_TOP_K, max_tokens=MAX_TOKENS,
                             max_message_bytes=self.max_message_bytes, ingest=pb.IngestLimits(
                                 **{k: v or 0 for k, v in vars(self.rag.options.ingest_limits).items()})))
