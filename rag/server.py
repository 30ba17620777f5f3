"""The gRPC server: the Answer, Documents and Info services of proto/cascade_rag/v1 over one RAG, with the
standard health service and server reflection. One engine at batch size 1 behind a bounded RequestQueue."""
import time
from concurrent.futures import ThreadPoolExecutor

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from .admission import Admission
from .answer_service import AnswerService
from .documents_service import DocumentsService
from .drain import Drain
from .index_refresher import IndexRefresher
from .info_service import InfoService
from .http_server import HTTPServer
from .http_service import http_app
from .listen import add_port, check_port
from .malformed import MalformedRequests
from .metrics import ServingMetrics
from .model_thread import ModelThread
from .pipeline import RAG
from .proto_gen import cascade_rag_pb2 as pb
from .proto_gen import cascade_rag_pb2_grpc as pb_grpc
from .request_log import RequestLog
from .request_queue import RequestQueue
from .serving import Serving, served_model_name
from .token_auth import TokenAuth
from .token_scopes import TokenScopes
from .wire import MAX_MESSAGE_BYTES

SPARE_WORKERS = 8                 # threads beyond the queue, for health, info, documents and quick rejections
REFUSAL_WORKERS = 4               # threads beyond those, for Admission's refusals (gRPC's own refusals beyond)
SERVICES = [d.full_name for d in pb.DESCRIPTOR.services_by_name.values()]
OPEN_METHODS = "/grpc.health.v1.Health/"
FLUSH_S = 1.0  # after the drain, for the last statuses to reach their clients (and health Watch streams to end)
CANCELLED_S = 10.0  # for the handlers of the calls cancelled at the end of the drain to return


class RAGServer:
    """The services bound to host:port (port 0 picks a free one: see `.port`); start(), then stop(grace).
    Loads the models first, so the first request does not wait for them. Raises PortInUse or OSError when it
    cannot listen. `metrics_port`: Prometheus metrics on host:metrics_port (0: a free one, see `.metrics_port`;
    None: not served, though still counted in `.metrics`). `token` covers every collection; `tokens` adds tokens
    scoped to collections (TokenScopes.of). `http_port`: the OpenAI-compatible HTTP endpoint on host:http_port
    (0: a free one, see `.http_port`; plaintext only)."""

    def __init__(self, rag: RAG, host: str = "127.0.0.1", port: int = 50051, max_queue: int = 8,
                 token: str | None = None, tls: tuple[bytes, bytes] | None = None,
                 max_message_bytes: int = MAX_MESSAGE_BYTES, metrics_port: int | None = None,
                 tokens: TokenScopes | None = None, http_port: int | None = None):
        if tls and http_port is not None:
            raise ValueError("the HTTP endpoint is plaintext: serve it behind a TLS proxy, or leave out http_port")
        for p in (port, metrics_port, http_port):
            if p is not None:
                check_port(host, p)  # before loading the models
        self.rag, self.queue = rag, RequestQueue(max_queue)
        self.drain = Drain(OPEN_METHODS, counted=tuple(f"/{service}/" for service in SERVICES))
        workers = max_queue + 1 + SPARE_WORKERS
        self.models = ModelThread()
        engine = self.models.call(lambda: (rag.model(), rag.embedder())[0].engine)  # loaded on their thread
        self.metrics = ServingMetrics(served_model_name(engine), list(rag.provider.tier_stats()), rag.chunks.tier)
        self.metrics.watch(lambda: self.queue.waiting, lambda: self.queue.running, self._tier_bytes)
        # every call logged and counted, those refused too; a draining server refuses all; beyond `workers` calls
        # in progress, calls are refused and counted in the queue's rejections
        interceptors = [RequestLog(self.metrics, tuple(f"/{service}/" for service in SERVICES)), self.drain,
                        Admission(workers, self.queue)]
        self.tokens = (tokens or TokenScopes({})).with_token(token) if token else tokens
        interceptors += ([TokenAuth(self.tokens, OPEN_METHODS)] if self.tokens else []) + [MalformedRequests()]
        options = [("grpc.max_receive_message_length", max_message_bytes),
                   ("grpc.max_send_message_length", max_message_bytes),
                   ("grpc.so_reuseport", 0)]  # a port in use is an error, not a second server on it
        threads = workers + REFUSAL_WORKERS
        self.server = grpc.server(ThreadPoolExecutor(threads, thread_name_prefix="cascade-rag-grpc"),
                                  interceptors=interceptors, options=options, maximum_concurrent_rpcs=threads)
        self.serving = Serving(rag, self.queue, self.models, self.metrics)
        pb_grpc.add_AnswerServicer_to_server(AnswerService(self.serving, self.tokens), self.server)
        pb_grpc.add_DocumentsServicer_to_server(DocumentsService(rag, self.models, self.tokens, self.drain.over),
                                                self.server)
        pb_grpc.add_InfoServicer_to_server(InfoService(rag, self.queue, max_message_bytes, self.tokens), self.server)
        self.health = health.HealthServicer()
        health_pb2_grpc.add_HealthServicer_to_server(self.health, self.server)
        reflection.enable_server_reflection(SERVICES + [health.SERVICE_NAME, reflection.SERVICE_NAME], self.server)
        self.port = add_port(self.server, host, port, tls)
        self.refresher = IndexRefresher(rag.retriever)  # the store may change through other replicas
        self.metrics_port = None if metrics_port is None else self.metrics.serve(host, metrics_port)
        self.http = None if http_port is None else HTTPServer(
            http_app(self.serving, self.drain, self.tokens, self.metrics.model_name), host, http_port)
        self.http_port = None if self.http is None else self.http.port

    def _tier_bytes(self) -> dict[str, int]:
        stats = self.rag.stats()
        return {self.rag.chunks.tier: stats["chunk_bytes"],
                **{name: t["bytes"] for name, t in stats.get("cache", {}).items()}}

    def start(self) -> "RAGServer":
        self.refresher.start()
        self.server.start()
        if self.http is not None:
            self.http.start()
        for service in ["", *SERVICES]:
            self.health.set(service, health_pb2.HealthCheckResponse.SERVING)
        return self

    def stop(self, grace: float | None = 30.0) -> None:
        """Drains: health turns NOT_SERVING and new calls get UNAVAILABLE, both still answered on the open port,
        while the calls in flight (queued ones included) finish for up to `grace` seconds; then cancels the rest
        and closes the port. `grace` None: cancels at once."""
        began = time.monotonic()
        self.health.enter_graceful_shutdown()
        self.drain.begin(grace)  # an ingestion in flight stops, uncommitted, once `grace` is over
        idle = grace is not None and self.drain.wait(grace - (time.monotonic() - began))
        self.server.stop(None if grace is None else FLUSH_S if idle else 0).wait()  # closes the port
        if self.http is not None:
            self.http.stop()
        self.drain.wait(CANCELLED_S)  # the handlers of cancelled calls still use the model thread on their way out
        self.models.shutdown()
        self.metrics.stop()
        self.refresher.stop()
