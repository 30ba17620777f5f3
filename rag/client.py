"""The gRPC client of a cascade-rag server (`cascade-rag ask --server`, `cascade-rag health`, the demo)."""
import socket
import sys
import time
from pathlib import Path
from typing import Iterable, Iterator

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from .answer_format import format_sources
from .ingest import Document
from .proto_gen import cascade_rag_pb2 as pb
from .proto_gen import cascade_rag_pb2_grpc as pb_grpc
from .wire import MAX_MESSAGE_BYTES, PROTO_TO_MODE, proto_mode


class Client:
    """A channel to one server or to several replicas of it (`server` "a:50051,b:50051": gRPC's round-robin
    balancing sends each call to the next one that is up; one name that resolves to several addresses, such as a
    scaled Compose service, is balanced the same way)."""

    def __init__(self, server: str, token: str | None = None, tls_ca: Path | str | None = None):
        target, servers = balanced_target(server)
        options = [("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
                   ("grpc.max_send_message_length", MAX_MESSAGE_BYTES), ("grpc.lb_policy_name", "round_robin")]
        if tls_ca:
            if len(servers) > 1:  # the certificates name the hosts, not the addresses they resolved to
                options.append(("grpc.ssl_target_name_override", split_address(servers[0])[0]))
            credentials = grpc.ssl_channel_credentials(root_certificates=Path(tls_ca).read_bytes())
            self.channel = grpc.secure_channel(target, credentials, options)
        else:
            self.channel = grpc.insecure_channel(target, options)
        self.metadata = (("authorization", f"Bearer {token}"),) if token else ()
        self.answer = pb_grpc.AnswerStub(self.channel)
        self.documents = pb_grpc.DocumentsStub(self.channel)
        self.info_stub = pb_grpc.InfoStub(self.channel)
        self.health_stub = health_pb2_grpc.HealthStub(self.channel)

    def query(self, question: str, top_k: int = 0, max_tokens: int = 0, temperature: float = 0.0,
              top_p: float = 0.0, seed: int | None = None, mode: str | None = None, timeout: float | None = None,
              collection: str = "", where: dict[str, str | list[str]] | None = None):
        """The response stream (iterate for QueryResponse messages; .cancel() stops it). `where`: metadata key to
        the value required, or to a list of accepted values (all keys must match); mode None: the server's default
        (wire.proto_mode: ValueError for an unknown one)."""
        request = pb.QueryRequest(question=question, top_k=top_k, max_tokens=max_tokens, temperature=temperature,
                                  top_p=top_p, seed=seed, mode=proto_mode(mode),
                                  collection=collection, filter=metadata_filter(where))
        return self.answer.Query(request, timeout=timeout, metadata=self.metadata)

    def retrieve(self, question: str, top_k: int = 0, timeout: float | None = None, collection: str = "",
                 where: dict[str, str | list[str]] | None = None) -> pb.RetrieveResponse:
        request = pb.RetrieveRequest(question=question, top_k=top_k, collection=collection,
                                     filter=metadata_filter(where))
        return self.answer.Retrieve(request, timeout=timeout, metadata=self.metadata)

    def ingest(self, documents: Iterable[Document | dict], batch_size: int = 32,
               timeout: float | None = None, collection: str = "") -> pb.IngestDocumentsResponse:
        """Streams the documents in batches into the collection; the server answers once all of them are stored."""
        def batches() -> Iterator[pb.IngestDocumentsRequest]:
            batch = []
            for d in documents:
                d = d if isinstance(d, dict) else vars(d)
                batch.append(pb.Document(id=str(d.get("id", "")), title=d.get("title") or "", text=d.get("text") or "",
                                         source=d.get("source") or "", metadata=d.get("metadata") or {}))
                if len(batch) == batch_size:
                    yield pb.IngestDocumentsRequest(documents=batch, collection=collection)
                    batch = []
            if batch:
                yield pb.IngestDocumentsRequest(documents=batch, collection=collection)
        return self.documents.IngestDocuments(batches(), timeout=timeout, metadata=self.metadata)

    def delete(self, ids: list[str], timeout: float | None = None, collection: str = "") -> list[str]:
        return list(self.documents.DeleteDocuments(pb.DeleteDocumentsRequest(ids=ids, collection=collection),
                                                   timeout=timeout, metadata=self.metadata).deleted_ids)

    def list_documents(self, page_size: int = 0, page_token: str = "",
                       collection: str = "") -> pb.ListDocumentsResponse:
        return self.documents.ListDocuments(pb.ListDocumentsRequest(page_size=page_size, page_token=page_token,
                                                                    collection=collection), metadata=self.metadata)

    def info(self) -> pb.GetInfoResponse:
        return self.info_stub.GetInfo(pb.GetInfoRequest(), metadata=self.metadata)

    def health(self, service: str = "", timeout: float | None = 5.0) -> str:
        """SERVING, NOT_SERVING, ... of the service ('' is the whole server)."""
        reply = self.health_stub.Check(health_pb2.HealthCheckRequest(service=service), timeout=timeout)
        return health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status)

    def close(self) -> None:
        self.channel.close()

    def __enter__(self) -> "Client":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def split_address(address: str) -> tuple[str, int]:
    host, _, port = address.strip().rpartition(":")
    if not host or not port.isdigit():
        raise ValueError(f"--server: {address.strip()!r} is not HOST:PORT")
    return host.strip("[]"), int(port)


def balanced_target(server: str) -> tuple[str, list[str]]:
    """(the channel target, the servers named): one server as it is; several, resolved here to their addresses,
    as one ipv4: (or ipv6:) target that the round-robin policy spreads calls over."""
    servers = [a.strip() for a in server.split(",") if a.strip()]
    if len(servers) <= 1:
        return server, servers
    for family, scheme, form in ((socket.AF_INET, "ipv4", "{}:{}"), (socket.AF_INET6, "ipv6", "[{}]:{}")):
        try:
            addresses = [form.format(info[4][0], port) for host, port in map(split_address, servers)
                         for info in socket.getaddrinfo(host, port, family, socket.SOCK_STREAM)]
        except socket.gaierror:
            continue
        return f"{scheme}:{','.join(dict.fromkeys(addresses))}", servers
    raise ValueError(f"--server: cannot resolve all of {server!r} to addresses of one family")


def metadata_filter(where: dict[str, str | list[str]] | None) -> pb.MetadataFilter:
    """{key: value or [values]} as the proto's filter (the AND of one condition a key)."""
    return pb.MetadataFilter(conditions=[pb.MetadataCondition(key=k, values=[v] if isinstance(v, str) else v)
                                         for k, v in (where or {}).items()])


def print_stream(responses, mode: str | None = None, out=sys.stdout) -> pb.QueryResult | None:
    """Writes the text as it streams, then the sources and timings (labelled with the mode the result reports, else
    `mode`, the one asked); returns the final result."""
    result = None
    for response in responses:
        if response.HasField("result"):
            result = response.result
        else:
            out.write(response.text)
            out.flush()
    if result is None:
        return None
    out.write("\n\n" + format_sources([(s.document_id, s.title, s.score) for s in result.sources]))
    t, tiers = result.timings, result.chunk_tiers
    used = ", ".join(f"{getattr(tiers, n)} {n}" for n in ("gpu", "cpu", "disk", "remote", "recomputed")
                     if getattr(tiers, n))
    label = PROTO_TO_MODE.get(result.mode) or mode or "mode not reported"  # an older server reports none
    out.write(f"Timings ({label}): queue {t.queue_time_ns / 1e6:.0f} ms, retrieval {t.retrieval_time_ns / 1e6:.0f} ms, "
              f"chunks {t.chunks_time_ns / 1e6:.0f} ms, time to first token {t.time_to_first_token_ns / 1e6:.0f} ms "
              f"(prefill {t.prefill_time_ns / 1e6:.0f} ms, {result.usage.prompt_tokens} prompt tokens), "
              f"decode {t.decode_tokens_per_second:.1f} tokens/s, {result.usage.completion_tokens} tokens, "
              f"{pb.FinishReason.Name(result.finish_reason).removeprefix('FINISH_REASON_').lower()}; "
              f"chunks from: {used or 'none'}\n")
    return result


def ask(args) -> int:
    """`cascade-rag ask --server HOST:PORT`."""
    with Client(args.server, args.token, args.tls_ca) as client:
        stream = client.query(args.question, top_k=args.top_k, max_tokens=args.max_tokens,
                              temperature=args.temperature, top_p=args.top_p, seed=args.seed, mode=args.mode,
                              collection=args.collection)
        try:
            print_stream(stream, args.mode)
        except grpc.RpcError as exc:
            print(f"\ncascade-rag: error: {exc.code().name}: {exc.details()}", file=sys.stderr)
            return 1
    return 0


def check_health(args) -> int:
    """`cascade-rag health --server HOST:PORT [--wait S]`: exit status 0 when the server is SERVING; with --wait,
    asks again each second until it is or S seconds have passed."""
    deadline = time.monotonic() + (args.wait or 0)
    while True:
        with Client(args.server, tls_ca=args.tls_ca) as client:  # a new channel: no reconnection back-off
            try:
                status, error = client.health(args.service), None
            except grpc.RpcError as exc:
                status, error = None, f"{exc.code().name}: {exc.details()}"
        if status == "SERVING" or time.monotonic() >= deadline:
            break
        time.sleep(1.0)
    if error:
        print(f"cascade-rag: error: {error}", file=sys.stderr)
        return 1
    print(status)
    return 0 if status == "SERVING" else 1
