"""The gRPC server: the Answer, Documents and Info services of proto/cascade_rag/v1 over one RAG, with the
standard health service and server reflection. One engine at batch size 1 behind a bounded RequestQueue."""
import base64
import binascii
import hmac
import logging
import math
import os
import signal
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from importlib import metadata

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from cascade_rag.engine import SamplingParams

from .drain import Drain
from .ingest import Document, IngestReport
from .listen import PortInUse, add_port, check_port
from .pipeline import RAG
from .proto_gen import cascade_rag_pb2 as pb
from .proto_gen import cascade_rag_pb2_grpc as pb_grpc
from .wire import MAX_MESSAGE_BYTES, PROTO_TO_MODE
from .request_queue import Abandoned, QueueFull, RequestQueue
from .ingest_cost import IngestTooLarge
from .store import NoDocuments, StoreError, StoreLocked, UnknownDocuments

log = logging.getLogger("cascade_rag")

MAX_QUESTION_CHARS = 4000
MAX_TOP_K = 32
MAX_TOKENS = 1024
MAX_TEMPERATURE = 2.0
DEFAULT_TOP_K, DEFAULT_MAX_TOKENS = 4, 128
MAX_DOCUMENT_ID_CHARS = 256
MAX_PAGE_SIZE, DEFAULT_PAGE_SIZE = 1000, 100
PAGE_TOKEN_PREFIX = "after:"
MAX_INGEST_BYTES = 64 << 20       # all the documents of one IngestDocuments call
INGEST_GROUP_CHARS = 32 << 10    # text ingested in one go on the model thread: about one GPU prefill batch
SPARE_WORKERS = 8                 # threads beyond the queue, for health, info, documents and quick rejections
SERVICES = [d.full_name for d in pb.DESCRIPTOR.services_by_name.values()]
OPEN_METHODS = "/grpc.health.v1.Health/"
FINISH_REASONS = {"stop": pb.FINISH_REASON_STOP, "length": pb.FINISH_REASON_LENGTH}
NO_DOCUMENTS = ("no documents have been ingested into this server's data directory: ingest some first "
                "(Documents.IngestDocuments, or `cascade-rag ingest PATH --data-dir DIR` on the server's directory)")
FLUSH_S = 1.0  # after the drain, for the last statuses to reach their clients (and health Watch streams to end)
CANCELLED_S = 10.0  # for the handlers of the calls cancelled at the end of the drain to return


def _version() -> str:
    try:
        return metadata.version("cascade-rag")
    except metadata.PackageNotFoundError:
        return "unknown"


def _ns(seconds: float) -> int:
    return max(0, int(seconds * 1e9))


def _invalid(context, field: str, message: str):
    context.abort(grpc.StatusCode.INVALID_ARGUMENT, f"{field}: {message}")


def _alive(context) -> bool:
    remaining = context.time_remaining()
    return context.is_active() and (remaining is None or remaining > 0)


def _check_question(context, question: str, top_k: int) -> int:
    """The top_k to use (0 means the default); aborts on an empty or oversized question or top_k out of range."""
    if not question.strip():
        _invalid(context, "question", "must not be empty")
    if len(question) > MAX_QUESTION_CHARS:
        _invalid(context, "question", f"{len(question)} characters, at most {MAX_QUESTION_CHARS} allowed")
    if top_k > MAX_TOP_K:
        _invalid(context, "top_k", f"{top_k} is out of range 1..{MAX_TOP_K}")
    return top_k or DEFAULT_TOP_K


def _sampling(context, request) -> SamplingParams:
    if request.max_tokens > MAX_TOKENS:
        _invalid(context, "max_tokens", f"{request.max_tokens} is out of range 1..{MAX_TOKENS}")
    if not (math.isfinite(request.temperature) and 0 <= request.temperature <= MAX_TEMPERATURE):
        _invalid(context, "temperature", f"{request.temperature} is out of range 0..{MAX_TEMPERATURE}")
    if not (math.isfinite(request.top_p) and 0 <= request.top_p <= 1):
        _invalid(context, "top_p", f"{request.top_p} is out of range (0, 1]")
    if request.mode not in PROTO_TO_MODE:
        _invalid(context, "mode", f"unknown mode {request.mode}")
    return SamplingParams(max_new_tokens=request.max_tokens or DEFAULT_MAX_TOKENS, temperature=request.temperature,
                          top_p=request.top_p or 1.0, seed=request.seed if request.HasField("seed") else None)


class ModelThread:
    """Runs every model call of the server (language model, embedder, FAISS) on one thread. PyTorch's CPU thread
    pool (OpenMP) belongs to the thread that uses it: each further thread brings another pool, and once their
    threads outnumber the cores OpenMP stops spinning between operations, which halved decode speed on 2 cores."""
    _END = object()

    def __init__(self):
        self._executor = ThreadPoolExecutor(1, thread_name_prefix="cascade-rag-model")

    def call(self, fn, *args):
        return self._executor.submit(fn, *args).result()

    def iterate(self, iterator):
        """The items of `iterator`, each produced on the model thread."""
        while (item := self.call(next, iterator, self._END)) is not self._END:
            yield item

    def shutdown(self) -> None:
        self._executor.shutdown()


def _groups(documents: list[Document], max_chars: int) -> list[list[Document]]:
    """Consecutive groups of documents of at most max_chars characters of text (a longer document alone)."""
    groups, size = [[]], 0
    for d in documents:
        if groups[-1] and size + len(d.text) > max_chars:
            groups.append([])
            size = 0
        groups[-1].append(d)
        size += len(d.text)
    return groups


def _source(s) -> pb.Source:
    return pb.Source(document_id=s.doc_id, title=s.title, score=s.score, passage_id=s.passage_id, text=s.text)


class AnswerService(pb_grpc.AnswerServicer):
    def __init__(self, rag: RAG, queue: RequestQueue, models: ModelThread):
        self.rag, self.queue, self.models = rag, queue, models

    def Query(self, request, context):
        arrived = time.perf_counter()
        top_k = _check_question(context, request.question, request.top_k)
        params = _sampling(context, request)
        with _engine_slot(self.queue, context) as queued_s:
            try:
                stream = self.models.call(self.rag.ask, request.question, top_k, PROTO_TO_MODE[request.mode], params)
                try:
                    for delta in self.models.iterate(iter(stream)):
                        if not context.is_active():  # cancelled or past its deadline: free the engine now
                            return
                        yield pb.QueryResponse(text=delta)
                finally:
                    self.models.call(stream.close)
            except ValueError as exc:  # e.g. passages + question + max_tokens longer than the model's context
                _invalid(context, "top_k/max_tokens", str(exc))
            except NoDocuments:
                context.abort(grpc.StatusCode.FAILED_PRECONDITION, NO_DOCUMENTS)
        a = stream.answer
        timings = pb.Timings(
            queue_time_ns=_ns(queued_s), retrieval_time_ns=_ns(a.retrieval_s), chunks_time_ns=_ns(a.chunks_s),
            prefill_time_ns=_ns(a.ttft_s), time_to_first_token_ns=_ns(queued_s + a.first_token_s),
            total_time_ns=_ns(time.perf_counter() - arrived), decode_tokens_per_second=a.decode_tokens_per_s)
        yield pb.QueryResponse(result=pb.QueryResult(
            finish_reason=FINISH_REASONS.get(a.finish_reason, pb.FINISH_REASON_UNSPECIFIED),
            sources=[_source(s) for s in a.sources], text=a.text, warnings=a.warnings, timings=timings,
            usage=pb.Usage(prompt_tokens=a.prompt_tokens, completion_tokens=len(a.token_ids)),
            chunk_tiers=pb.ChunkTiers(**a.tiers)))

    def Retrieve(self, request, context):
        top_k = _check_question(context, request.question, request.top_k)
        with _engine_slot(self.queue, context) as queued_s:
            began = time.perf_counter()
            try:
                sources = self.models.call(self.rag.retrieve, request.question, top_k)
            except NoDocuments:
                context.abort(grpc.StatusCode.FAILED_PRECONDITION, NO_DOCUMENTS)
        return pb.RetrieveResponse(passages=[_source(s) for s in sources], queue_time_ns=_ns(queued_s),
                                   retrieval_time_ns=_ns(time.perf_counter() - began))


@contextmanager
def _engine_slot(queue: RequestQueue, context):
    """RequestQueue.slot with its refusals turned into gRPC statuses."""
    try:
        with queue.slot(lambda: _alive(context)) as queued_s:
            yield queued_s
    except QueueFull as exc:
        context.abort(grpc.StatusCode.RESOURCE_EXHAUSTED, str(exc))
    except Abandoned:
        remaining = context.time_remaining()
        if remaining is not None and remaining <= 0:
            context.abort(grpc.StatusCode.DEADLINE_EXCEEDED, "the deadline passed while queued")
        context.abort(grpc.StatusCode.CANCELLED, "cancelled while queued")


class DocumentsService(pb_grpc.DocumentsServicer):
    def __init__(self, rag: RAG, models: ModelThread):
        self.rag, self.models = rag, models

    def IngestDocuments(self, request_iterator, context):
        documents, seen, size = [], set(), 0
        for request in request_iterator:
            for d in request.documents:
                field = f"documents[{len(documents)}]"
                size += d.ByteSize()
                if size > MAX_INGEST_BYTES:
                    _invalid(context, "documents", f"more than {MAX_INGEST_BYTES >> 20} MiB in one call; "
                                                   f"split them over several calls")
                if not d.id.strip():
                    _invalid(context, f"{field}.id", "must not be empty")
                if len(d.id) > MAX_DOCUMENT_ID_CHARS:
                    _invalid(context, f"{field}.id", f"{len(d.id)} characters, at most {MAX_DOCUMENT_ID_CHARS}")
                if d.id in seen:
                    _invalid(context, f"{field}.id", f"{d.id!r} is given twice")
                if not d.text.strip():
                    _invalid(context, f"{field}.text", f"document {d.id!r} has no text")
                seen.add(d.id)
                documents.append(Document(d.id, d.title.strip(), d.text.strip(), d.source or None))
        if not documents:
            _invalid(context, "documents", "none given")
        try:
            report = IngestReport()
            for group in _groups(documents, INGEST_GROUP_CHARS):  # answers in flight go on between the groups
                report.add(self.models.call(self.rag.ingest_documents, group))
        except IngestTooLarge as exc:
            context.abort(grpc.StatusCode.RESOURCE_EXHAUSTED, str(exc))
        except (StoreLocked, StoreError) as exc:
            context.abort(grpc.StatusCode.FAILED_PRECONDITION, str(exc))
        if report.errors:
            _invalid(context, "documents", "; ".join(map(str, report.errors)))
        status = {**{i: pb.INGEST_STATUS_ADDED for i in report.added},
                  **{i: pb.INGEST_STATUS_UPDATED for i in report.updated},
                  **{i: pb.INGEST_STATUS_UNCHANGED for i in report.unchanged}}
        return pb.IngestDocumentsResponse(
            results=[pb.DocumentResult(id=d.id, status=status[d.id]) for d in documents],
            passages=report.passages, prefilled=report.prefilled, tokens=report.tokens, kv_bytes=report.kv_bytes,
            time_ns=_ns(report.seconds))

    def DeleteDocuments(self, request, context):
        if not request.ids:
            _invalid(context, "ids", "none given")
        try:
            return pb.DeleteDocumentsResponse(deleted_ids=self.models.call(self.rag.delete, request.ids))
        except UnknownDocuments as exc:  # checked in the deletion's own transaction: nothing was deleted
            context.abort(grpc.StatusCode.NOT_FOUND, f"ids: {exc}")
        except (StoreLocked, StoreError) as exc:
            context.abort(grpc.StatusCode.FAILED_PRECONDITION, str(exc))

    def ListDocuments(self, request, context):
        if request.page_size > MAX_PAGE_SIZE:
            _invalid(context, "page_size", f"{request.page_size} is out of range 1..{MAX_PAGE_SIZE}")
        after = None
        if request.page_token:
            try:
                after = base64.b64decode(request.page_token, altchars=b"-_", validate=True).decode()
            except (binascii.Error, UnicodeDecodeError, ValueError):
                pass
            if after is None or not after.startswith(PAGE_TOKEN_PREFIX):
                _invalid(context, "page_token", "not a token this server gave out")
            after = after.removeprefix(PAGE_TOKEN_PREFIX)
        documents = self.rag.documents()  # ordered by id
        start = 0 if after is None else next((n for n, d in enumerate(documents) if d["id"] > after), len(documents))
        page = documents[start:start + (request.page_size or DEFAULT_PAGE_SIZE)]
        more = start + len(page) < len(documents)
        token = base64.urlsafe_b64encode((PAGE_TOKEN_PREFIX + page[-1]["id"]).encode()).decode() if more else ""
        return pb.ListDocumentsResponse(
            documents=[pb.DocumentInfo(id=d["id"], title=d["title"] or "", source=d["source"] or "",
                                       passages=d["passages"], tokens=d["tokens"]) for d in page],
            next_page_token=token, total_size=len(documents))


class InfoService(pb_grpc.InfoServicer):
    def __init__(self, rag: RAG, queue: RequestQueue, max_message_bytes: int):
        self.rag, self.queue, self.max_message_bytes = rag, queue, max_message_bytes
        # held here: loading them waits for the engine lock, which a running answer holds
        self.engine, self.embedder = rag.model().engine, rag.embedder()

    def GetInfo(self, request, context):
        rag, engine, embedder = self.rag, self.engine, self.embedder
        stats = rag.stats()
        tiers = []
        for name, tier in stats.get("cache", {}).items():
            lookups = tier["hits"] + tier["misses"]
            tiers.append(pb.CacheTier(name=name, hit_rate=tier["hits"] / lookups if lookups else 0.0, **tier))
        return pb.GetInfoResponse(
            version=_version(),
            model=pb.ModelInfo(path=str(engine.model_path), id=engine.model_id, dtype=str(engine.dtype).split(".")[-1],
                               device=str(engine.device), kv_bytes_per_token=engine.kv_bytes_per_token(),
                               max_positions=engine.config.max_position),
            embedder=pb.EmbedderInfo(name=embedder.name, dim=embedder.dim),
            counts=pb.Counts(**{k: stats[k] for k in ("documents", "passages", "tokens", "chunk_files", "chunk_bytes")}),
            cache_tiers=tiers,
            queue=pb.QueueInfo(max_queue=self.queue.max_queue, waiting=self.queue.waiting, running=self.queue.running,
                               answered=self.queue.served, rejected=self.queue.rejected),
            limits=pb.Limits(max_question_chars=MAX_QUESTION_CHARS, max_top_k=MAX_TOP_K, max_tokens=MAX_TOKENS,
                             max_message_bytes=self.max_message_bytes))


class TokenAuth(grpc.ServerInterceptor):
    """Refuses every call without `authorization: Bearer <token>` metadata, except health checks."""

    def __init__(self, token: str):
        self.expected = f"Bearer {token}".encode()

    def intercept_service(self, continuation, details):
        handler = continuation(details)
        given = dict(details.invocation_metadata or ()).get("authorization", "")
        if handler is None or details.method.startswith(OPEN_METHODS) or \
                hmac.compare_digest(given.encode(), self.expected):
            return handler

        def refuse(request, context):
            context.abort(grpc.StatusCode.UNAUTHENTICATED, "missing or wrong bearer token: send the metadata "
                                                           "'authorization: Bearer <token>'")
        kind = {(False, False): grpc.unary_unary_rpc_method_handler,
                (False, True): grpc.unary_stream_rpc_method_handler,
                (True, False): grpc.stream_unary_rpc_method_handler,
                (True, True): grpc.stream_stream_rpc_method_handler}
        return kind[handler.request_streaming, handler.response_streaming](refuse)


class RAGServer:
    """The services bound to host:port (port 0 picks a free one: see `.port`); start(), then stop(grace).
    Loads the models first, so the first request does not wait for them. Raises PortInUse or OSError when it
    cannot listen."""

    def __init__(self, rag: RAG, host: str = "127.0.0.1", port: int = 50051, max_queue: int = 8,
                 token: str | None = None, tls: tuple[bytes, bytes] | None = None,
                 max_message_bytes: int = MAX_MESSAGE_BYTES):
        check_port(host, port)  # before loading the models
        self.rag, self.queue = rag, RequestQueue(max_queue)
        self.drain = Drain(OPEN_METHODS, counted=tuple(f"/{service}/" for service in SERVICES))
        workers = max_queue + 1 + SPARE_WORKERS
        interceptors = [self.drain] + ([TokenAuth(token)] if token else [])  # a draining server refuses all
        options = [("grpc.max_receive_message_length", max_message_bytes),
                   ("grpc.max_send_message_length", max_message_bytes),
                   ("grpc.so_reuseport", 0)]  # a port in use is an error, not a second server on it
        self.server = grpc.server(ThreadPoolExecutor(workers, thread_name_prefix="cascade-rag-grpc"),
                                  interceptors=interceptors, options=options,
                                  maximum_concurrent_rpcs=workers)
        self.models = ModelThread()
        self.models.call(lambda: (rag.model(), rag.embedder()))  # loaded on the thread that will run them
        pb_grpc.add_AnswerServicer_to_server(AnswerService(rag, self.queue, self.models), self.server)
        pb_grpc.add_DocumentsServicer_to_server(DocumentsService(rag, self.models), self.server)
        pb_grpc.add_InfoServicer_to_server(InfoService(rag, self.queue, max_message_bytes), self.server)
        self.health = health.HealthServicer()
        health_pb2_grpc.add_HealthServicer_to_server(self.health, self.server)
        reflection.enable_server_reflection(SERVICES + [health.SERVICE_NAME, reflection.SERVICE_NAME], self.server)
        self.port = add_port(self.server, host, port, tls)

    def start(self) -> "RAGServer":
        self.server.start()
        for service in ["", *SERVICES]:
            self.health.set(service, health_pb2.HealthCheckResponse.SERVING)
        return self

    def stop(self, grace: float | None = 30.0) -> None:
        """Drains: health turns NOT_SERVING and new calls get UNAVAILABLE, both still answered on the open port,
        while the calls in flight (queued ones included) finish for up to `grace` seconds; then cancels the rest
        and closes the port. `grace` None: cancels at once."""
        began = time.monotonic()
        self.health.enter_graceful_shutdown()
        self.drain.begin()
        idle = grace is not None and self.drain.wait(grace - (time.monotonic() - began))
        self.server.stop(None if grace is None else FLUSH_S if idle else 0).wait()  # closes the port
        self.drain.wait(CANCELLED_S)  # the handlers of cancelled calls still use the model thread on their way out
        self.models.shutdown()


def serve(args) -> int:
    """`cascade-rag serve`: loads the models, serves until SIGTERM or SIGINT, then drains and exits."""
    from .cli import open_rag
    from .cli_error import CLIError
    token = args.token or os.environ.get("CASCADE_RAG_TOKEN") or None
    if bool(args.tls_cert) != bool(args.tls_key):
        raise CLIError("--tls-cert and --tls-key go together")
    tls = (args.tls_cert.read_bytes(), args.tls_key.read_bytes()) if args.tls_cert else None
    if args.host not in ("127.0.0.1", "localhost", "::1") and not token:
        log.warning(f"listening on {args.host} without a token: anyone who can reach it can ingest and delete; "
                    f"set --token or CASCADE_RAG_TOKEN (and --tls-cert/--tls-key)")
    try:
        check_port(args.host, args.port)  # before loading the models: a port in use fails at once
    except PortInUse as exc:
        raise PortInUse(f"{exc}: stop the server on it or choose another --port (0 picks a free one)") from None
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    with open_rag(args) as rag:
        print("cascade-rag: loading the models ...", file=sys.stderr, flush=True)
        server = RAGServer(rag, args.host, args.port, args.max_queue, token, tls).start()
        print(f"cascade-rag: serving on {args.host}:{server.port} (queue {args.max_queue}, "
              f"{'TLS' if tls else 'plaintext'}, {'token' if token else 'no token'})", flush=True)
        stop.wait()
        print(f"cascade-rag: draining (at most {args.drain_seconds:g} s) ...", file=sys.stderr, flush=True)
        server.stop(args.drain_seconds)
    print("cascade-rag: stopped", file=sys.stderr, flush=True)
    return 0
