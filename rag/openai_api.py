"""The OpenAI chat completions API as cascade-rag serves it: the request (OpenAI's fields that apply, and ours,
sent by the OpenAI SDKs as `extra_body`: collection, filter, top_k, mode) and the responses (a completion, or
the chunks of a stream, each carrying our `sources`)."""
import time
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from .answer import Answer, Source

MAX_STOP = 4


class Message(BaseModel):
    model_config = ConfigDict(extra="allow")
    role: str
    content: str | list[dict] | None = None

    def text(self) -> str:
        """The content's text (the text parts of a list of parts, joined)."""
        if isinstance(self.content, list):
            return "\n".join(p.get("text", "") for p in self.content if p.get("type") == "text")
        return self.content or ""


class StreamOptions(BaseModel):
    include_usage: bool = False


class ChatRequest(BaseModel):
    """OpenAI's fields that we do not use (user, metadata, store, ...) are accepted and ignored; those that would
    change the answer and that we cannot honour (n > 1, tools, logprobs) are refused."""
    model_config = ConfigDict(extra="allow")
    model: str
    messages: list[Message] = Field(min_length=1)
    stream: bool = False
    stream_options: StreamOptions | None = None
    max_tokens: int | None = Field(None, ge=0, lt=2**32)
    max_completion_tokens: int | None = Field(None, ge=0, lt=2**32)
    temperature: float | None = None     # None: 0, greedy (as over gRPC)
    top_p: float | None = None
    seed: int | None = Field(None, ge=0, lt=2**64)
    stop: str | list[str] | None = None
    n: int = 1
    tools: list | None = None
    logprobs: bool | None = None
    # ours, in extra_body
    collection: str = ""
    filter: dict | None = None           # Haystack's filter syntax: see filters.MetadataFilter.from_json
    top_k: int = Field(0, ge=0, lt=2**32)
    mode: Literal["cached", "full", "blend"] | None = None  # None: the server's default

    def unsupported(self) -> tuple[str, str] | None:
        """(field, why) of the first field asked for that cannot be honoured."""
        if self.n != 1:
            return "n", "only 1 choice is generated"
        if self.tools:
            return "tools", "tool calls are not supported"
        if self.logprobs:
            return "logprobs", "log probabilities are not returned"
        if isinstance(self.stop, list) and len(self.stop) > MAX_STOP:
            return "stop", f"at most {MAX_STOP} stop strings"
        return None

    def question(self) -> str:
        """The last user message: the question (the others are not used; level 0 is the server's own)."""
        users = [m for m in self.messages if m.role == "user"]
        return users[-1].text() if users else ""

    def stops(self) -> tuple[str, ...]:
        return (self.stop,) if isinstance(self.stop, str) else tuple(self.stop or ())


def source_json(s: Source) -> dict:
    return {"document_id": s.doc_id, "title": s.title, "score": s.score, "passage_id": s.passage_id,
            "text": s.text, "metadata": s.metadata}


def usage(answer: Answer) -> dict:
    completion = len(answer.token_ids)
    return {"prompt_tokens": answer.prompt_tokens, "completion_tokens": completion,
            "total_tokens": answer.prompt_tokens + completion}


class Completion:
    """The responses of one request: its id (from the request id), model and creation time."""

    def __init__(self, request_id: str, model: str):
        self.id, self.model, self.created = f"chatcmpl-{request_id}", model, int(time.time())

    def whole(self, answer: Answer) -> dict:
        return {"id": self.id, "object": "chat.completion", "created": self.created, "model": self.model,
                "choices": [{"index": 0, "message": {"role": "assistant", "content": answer.text},
                             "finish_reason": answer.finish_reason or "stop", "logprobs": None}],
                "usage": usage(answer), "sources": [source_json(s) for s in answer.sources]}

    def chunk(self, delta: dict, finish_reason: str | None = None, **extra) -> dict:
        choices = [{"index": 0, "delta": delta, "finish_reason": finish_reason, "logprobs": None}]
        return {"id": self.id, "object": "chat.completion.chunk", "created": self.created, "model": self.model,
                "choices": choices, **extra}

    def usage_chunk(self, answer: Answer) -> dict:
        return {"id": self.id, "object": "chat.completion.chunk", "created": self.created, "model": self.model,
                "choices": [], "usage": usage(answer)}
