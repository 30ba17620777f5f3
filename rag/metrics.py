"""ServingMetrics: the server's Prometheus metrics, named and bucketed in the style of vLLM's (`vllm:` becomes
`cascade_rag:`), each labelled by the model, in a registry of the server's own; served in the Prometheus text
format on their own port (prometheus-client's exposition server)."""
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server

from .answer import Answer

PREFIX = "cascade_rag:"
DISK = "disk"
# vLLM's buckets (vllm/v1/metrics/loggers.py): time to first token, inter-token latency, and request times
TTFT_BUCKETS = (0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0, 20.0,
                40.0, 80.0, 160.0, 640.0, 2560.0)
ITL_BUCKETS = (0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0, 20.0, 40.0,
               80.0)
REQUEST_BUCKETS = (0.3, 0.5, 0.8, 1.0, 1.5, 2.0, 2.5, 5.0, 10.0, 15.0, 20.0, 30.0, 40.0, 50.0, 60.0, 120.0, 240.0,
                   480.0, 960.0, 1920.0, 7680.0)


class ServingMetrics:
    """Every metric of one server. `memory_tiers`: the names of the chunk cache's tiers in lookup order (gpu, cpu;
    or cpu alone on a CPU device): a chunk is looked up in each in turn, then in the chunk store (`store_tier`: disk,
    or remote for a store shared by replicas), then recomputed."""

    def __init__(self, model_name: str, memory_tiers: list[str], store_tier: str = DISK):
        self.registry = CollectorRegistry()
        self.model_name, self.tiers = model_name, [*memory_tiers, store_tier]
        model, registry = ["model_name"], self.registry

        def histogram(name, doc, buckets):
            return Histogram(PREFIX + name, doc, model, buckets=buckets, registry=registry).labels(model_name)
        self.ttft = histogram("time_to_first_token_seconds", "From a question's arrival to its first text, queue "
                              "included.", TTFT_BUCKETS)
        self.e2e = histogram("e2e_request_latency_seconds", "From a question's arrival to its last token.",
                             REQUEST_BUCKETS)
        self.queue_time = histogram("request_queue_time_seconds", "Time a question or retrieval waited for the "
                                    "engine.", REQUEST_BUCKETS)
        self.prefill_time = histogram("request_prefill_time_seconds", "Prefill of the question after the stored "
                                      "chunks, and the first token, as the engine measures it.", REQUEST_BUCKETS)
        self.itl = histogram("inter_token_latency_seconds", "Time between consecutive text deltas of an answer.",
                             ITL_BUCKETS)
        self.prompt_tokens = Counter(PREFIX + "prompt_tokens", "Prompt tokens of the answers: level 0, passages and "
                                     "question.", model, registry=registry).labels(model_name)
        self.generation_tokens = Counter(PREFIX + "generation_tokens", "Tokens generated.", model,
                                         registry=registry).labels(model_name)
        self.requests = Counter(PREFIX + "requests", "Calls answered, by method and status (gRPC status code "
                                "names; the HTTP endpoint's statuses mapped to them).", model + ["method", "status"],
                                registry=registry)
        self.lookups = Counter(PREFIX + "chunk_lookups", "Level-1 KV chunks looked up in each tier (gpu, cpu, disk "
                               "or remote) by answers.", model + ["tier"], registry=registry)
        self.hits = Counter(PREFIX + "chunk_hits", "Level-1 KV chunks found in each tier by answers.",
                            model + ["tier"], registry=registry)
        self.queue_size = Gauge(PREFIX + "queue_size", "Requests waiting for the engine.", model, registry=registry)
        self.running = Gauge(PREFIX + "num_requests_running", "Requests holding the engine (0 or 1).", model,
                             registry=registry)
        self.chunk_bytes = Gauge(PREFIX + "chunk_bytes", "Bytes of KV chunks held in each tier (disk or remote: the "
                                 "chunk store).", model + ["tier"], registry=registry)
        for tier in self.tiers:  # present from the first scrape, at zero
            self.lookups.labels(model_name, tier)
            self.hits.labels(model_name, tier)
        self._server = None

    # --- what the serving code reports ------------------------------------------------------------------------
    def watch(self, waiting, running, tier_bytes) -> None:
        """Gauges read at each scrape: waiting() and running() requests, tier_bytes() -> {tier: bytes}."""
        self.queue_size.labels(self.model_name).set_function(waiting)
        self.running.labels(self.model_name).set_function(running)
        for tier in self.tiers:
            self.chunk_bytes.labels(self.model_name, tier).set_function(lambda tier=tier: tier_bytes().get(tier, 0))

    def request(self, method: str, status: str) -> None:
        self.requests.labels(self.model_name, method, status).inc()

    def queued(self, seconds: float) -> None:
        self.queue_time.observe(seconds)

    def first_token(self, seconds: float) -> None:
        self.ttft.observe(seconds)

    def between_tokens(self, seconds: float) -> None:
        self.itl.observe(seconds)

    def answered(self, answer: Answer, e2e_s: float) -> None:
        """An answer generated to its end: its latency, prefill, tokens, and where its chunks were found."""
        self.e2e.observe(e2e_s)
        self.prefill_time.observe(answer.ttft_s)
        self.prompt_tokens.inc(answer.prompt_tokens)
        self.generation_tokens.inc(len(answer.token_ids))
        for served_from, n in answer.tiers.items():
            # looked up in every tier down to the one that held it; a recomputed chunk was looked up in all
            found = self.tiers.index(served_from) if served_from in self.tiers else None
            for tier in self.tiers[:len(self.tiers) if found is None else found + 1]:
                self.lookups.labels(self.model_name, tier).inc(n)
            if found is not None:
                self.hits.labels(self.model_name, served_from).inc(n)

    # --- the exposition port ----------------------------------------------------------------------------------
    def serve(self, host: str, port: int) -> int:
        """Serves /metrics on host:port (0 picks a free port) from a daemon thread; returns the port."""
        self._server, _ = start_http_server(port, host, self.registry)
        return self._server.server_port

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
