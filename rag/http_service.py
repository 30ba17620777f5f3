"""The OpenAI-compatible HTTP endpoint (FastAPI): POST /v1/chat/completions (streamed as server-sent events or
whole), GET /v1/models, GET /health. Questions take the same path as over gRPC (Serving: the queue, the model
thread, the metrics), are checked by the same code (grpc_checks, grpc_scope) and refused with the same status
codes, mapped to HTTP (http_status); the same tokens and collection scopes apply."""
import asyncio
import json
import logging
import threading
import time
from dataclasses import replace

import grpc
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, StreamingResponse

from .drain import Drain
from .filters import MetadataFilter
from .grpc_checks import check_question, sampling
from .grpc_scope import collection_of
from .http_middleware import CallObserver
from .http_status import CallContext, StatusError, refusal
from .openai_api import ChatRequest, Completion, source_json
from .proto_gen import cascade_rag_pb2 as pb
from .serving import Question, ServedAnswer, Serving
from .token_scopes import TokenScopes, authorization_of
from .wire import proto_mode

log = logging.getLogger("cascade_rag")
METHODS = {"/v1/chat/completions": "ChatCompletions", "/v1/models": "Models"}
POLL_S = 0.25  # how often a waiting request checks that its client is still there


class AnswerBridge:
    """Runs a ServedAnswer on a thread of its own (it blocks: in the queue, on the model thread) and hands its
    events to the event loop: ("delta", text), ("end", None), ("error", exception) or, once the client has gone,
    ("gone", None), after which the answer stops within one decode step."""

    def __init__(self, serving: Serving, question: Question, arrived: float):
        self.gone = threading.Event()
        self.served: ServedAnswer = serving.ask(question, lambda: not self.gone.is_set(), arrived)
        self.loop, self.events = asyncio.get_running_loop(), asyncio.Queue()
        threading.Thread(target=self._run, name="cascade-rag-http-answer", daemon=True).start()

    def _run(self) -> None:
        try:
            for delta in self.served:
                self._post("delta", delta)
            self._post("end", None)
        except BaseException as exc:  # handed to the request, which answers with its status
            self._post("error", exc)

    def _post(self, kind: str, value) -> None:
        try:
            self.loop.call_soon_threadsafe(self.events.put_nowait, (kind, value))
        except RuntimeError:  # the event loop is closed: the server is gone
            self.gone.set()

    async def next(self, request: Request) -> tuple[str, object]:
        while True:
            try:
                return await asyncio.wait_for(self.events.get(), POLL_S)
            except asyncio.TimeoutError:
                if await request.is_disconnected():
                    self.gone.set()
                    return "gone", None


def http_app(serving: Serving, drain: Drain, tokens: TokenScopes | None, model_name: str):
    """The ASGI application, wrapped in the CallObserver (request ids, drain, log lines, metrics)."""
    app = FastAPI(title="cascade-rag", docs_url=None, redoc_url=None, openapi_url=None)

    @app.exception_handler(StatusError)
    async def status_error(request: Request, exc: StatusError):
        request.state.status = exc.code.name
        return JSONResponse(exc.body(), status_code=exc.http_status)

    @app.exception_handler(RequestValidationError)
    async def malformed(request: Request, exc: RequestValidationError):
        first = exc.errors()[0]
        field = ".".join(str(p) for p in first["loc"] if p != "body") or "body"
        return await status_error(request, StatusError(grpc.StatusCode.INVALID_ARGUMENT, f"{field}: {first['msg']}"))

    def authorized(request: Request) -> CallContext:
        context = CallContext(authorization_of(request.headers.items()))
        if tokens is not None and tokens.collections(context.authorization) is None:
            raise StatusError(grpc.StatusCode.UNAUTHENTICATED, "missing or wrong bearer token: send the header "
                                                               "'Authorization: Bearer <token>' (once)")
        return context

    def question_of(body: ChatRequest, context: CallContext) -> Question:
        if (bad := body.unsupported()) is not None:
            raise StatusError(grpc.StatusCode.INVALID_ARGUMENT, f"{bad[0]}: {bad[1]}")
        if body.model != model_name:
            raise StatusError(grpc.StatusCode.NOT_FOUND, f"model: {body.model!r} is not served here; "
                                                         f"GET /v1/models lists {model_name!r}")
        collection = collection_of(context, tokens, body.collection)
        try:
            where = MetadataFilter.from_json(body.filter)
        except ValueError as exc:
            raise StatusError(grpc.StatusCode.INVALID_ARGUMENT, str(exc)) from None
        text = body.question()
        if not text.strip():
            raise StatusError(grpc.StatusCode.INVALID_ARGUMENT, "messages: no user message with text (the last user "
                                                                "message is the question)")
        request = pb.QueryRequest(question=text, top_k=body.top_k, mode=proto_mode(body.mode),
                                  max_tokens=body.max_completion_tokens or body.max_tokens or 0,
                                  temperature=body.temperature or 0.0, top_p=body.top_p or 0.0, seed=body.seed)
        top_k = check_question(context, text, body.top_k)
        params = replace(sampling(context, request), stop=body.stops())
        return Question(text, top_k, body.mode, params, collection, where)

    @app.get("/health")
    async def health():
        if drain.draining:
            return JSONResponse({"status": "NOT_SERVING"}, status_code=503)
        return {"status": "SERVING"}

    @app.get("/v1/models")
    async def models(request: Request):
        authorized(request)
        return {"object": "list", "data": [{"id": model_name, "object": "model", "created": int(started),
                                            "owned_by": "cascade-rag"}]}

    def ending(event, request: Request, question):
        """For an answer's error event: its refusal raised; for a client gone: the 499 response; else None."""
        if event[0] == "error":
            raise refusal(event[1], question.collection) or event[1]
        if event[0] == "gone":
            request.state.status = "CANCELLED"
            return JSONResponse({}, status_code=499)
        return None

    @app.post("/v1/chat/completions")
    async def chat_completions(body: ChatRequest, request: Request):
        arrived = time.perf_counter()
        question = question_of(body, authorized(request))
        bridge = AnswerBridge(serving, question, arrived)
        first = await bridge.next(request)
        if (ended := ending(first, request, question)) is not None:
            return ended
        completion = Completion(request.state.request_id, model_name)
        if body.stream:
            include_usage = bool(body.stream_options and body.stream_options.include_usage)
            return StreamingResponse(events(request, bridge, first, completion, question, include_usage),
                                     media_type="text/event-stream")
        text, event = "", first
        while event[0] == "delta":
            text += event[1]
            event = await bridge.next(request)
        if (ended := ending(event, request, question)) is not None:
            return ended
        return completion.whole(bridge.served.answer)

    started = time.time()
    return CallObserver(app, drain, serving.metrics, METHODS)


async def events(request: Request, bridge: AnswerBridge, event, completion: Completion, question: Question,
                 include_usage: bool):
    """The server-sent events of a streamed answer: a first chunk with the role and the sources, one chunk a text
    delta, a last one with the finish reason (and one with the usage when asked), then [DONE]."""
    def sse(payload) -> str:
        return f"data: {json.dumps(payload, ensure_ascii=False)}\n\n"
    request.state.status = "CANCELLED"  # until the end is reached
    try:
        sources = [source_json(s) for s in bridge.served.answer.sources]
        yield sse(completion.chunk({"role": "assistant", "content": ""}, sources=sources))
        while event[0] == "delta":
            yield sse(completion.chunk({"content": event[1]}))
            event = await bridge.next(request)
        if event[0] == "error":
            error = refusal(event[1], question.collection)
            if error is None:
                log.exception("the answer failed", exc_info=event[1])
                error = StatusError(grpc.StatusCode.INTERNAL, "the answer failed; see the server's log")
            request.state.status = error.code.name
            yield sse(error.body())
            return
        if event[0] == "gone":
            return
        answer = bridge.served.answer
        yield sse(completion.chunk({}, answer.finish_reason or "stop"))
        if include_usage:
            yield sse(completion.usage_chunk(answer))
        yield "data: [DONE]\n\n"
        request.state.status = "OK"
    finally:
        bridge.gone.set()  # the client left mid-stream (or it ended): stop the answer, free the engine
