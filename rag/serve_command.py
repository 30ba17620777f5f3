"""`cascade-rag serve`: loads the models, serves until SIGTERM or SIGINT, then drains and exits."""
import logging
import os
import signal
import sys
import threading

from .cli_error import CLIError
from .cli_options import ingest_limits, open_rag
from .listen import PortInUse, check_port
from .server import RAGServer

log = logging.getLogger("cascade_rag")


def serve(args) -> int:
    token = args.token or os.environ.get("CASCADE_RAG_TOKEN") or None
    if args.token:
        log.warning("--token shows in the process list (`ps`) to every user of this machine; prefer the "
                    "CASCADE_RAG_TOKEN environment variable")
    limits = ingest_limits(args)
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
    with open_rag(args, ingest_limits=limits) as rag:
        print("cascade-rag: loading the models ...", file=sys.stderr, flush=True)
        server = RAGServer(rag, args.host, args.port, args.max_queue, token, tls).start()
        print(f"cascade-rag: serving on {args.host}:{server.port} (queue {args.max_queue}, "
              f"{'TLS' if tls else 'plaintext'}, {'token' if token else 'no token'})", flush=True)
        stop.wait()
        print(f"cascade-rag: draining (at most {args.drain_seconds:g} s) ...", file=sys.stderr, flush=True)
        server.stop(args.drain_seconds)
    print("cascade-rag: stopped", file=sys.stderr, flush=True)
    return 0
