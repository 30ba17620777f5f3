"""`cascade-rag serve`: loads the models, serves until SIGTERM or SIGINT, then drains and exits."""
import json
import logging
import os
import signal
import threading

from .cli_error import CLIError
from .cli_options import ingest_limits, open_rag
from .listen import PortInUse, check_port
from .log_format import configure
from .server import RAGServer
from .token_scopes import TokenScopes

log = logging.getLogger("cascade_rag")


def serve(args) -> int:
    configure(args.log_format)
    token = args.token or os.environ.get("CASCADE_RAG_TOKEN") or None
    tokens = TokenScopes.of(token_file=args.token_file) if args.token_file else None  # ValueError names the file
    if args.token:
        log.warning("--token shows in the process list (`ps`) to every user of this machine; prefer the "
                    "CASCADE_RAG_TOKEN environment variable")
    limits = ingest_limits(args)
    if bool(args.tls_cert) != bool(args.tls_key):
        raise CLIError("--tls-cert and --tls-key go together")
    tls = (args.tls_cert.read_bytes(), args.tls_key.read_bytes()) if args.tls_cert else None
    if args.host not in ("127.0.0.1", "localhost", "::1") and not (token or tokens):
        log.warning(f"listening on {args.host} without a token: anyone who can reach it can ingest and delete; "
                    f"set --token or CASCADE_RAG_TOKEN (and --tls-cert/--tls-key)")
    if tls and args.http_port is not None:
        raise CLIError("--http-port serves plaintext: put a TLS proxy in front of it, or leave out "
                       "--tls-cert/--tls-key")
    for option, port in (("--port", args.port), ("--http-port", args.http_port), ("--metrics-port", args.metrics_port)):
        try:
            if port is not None:
                check_port(args.host, port)  # before loading the models: a port in use fails at once
        except PortInUse as exc:
            raise PortInUse(f"{exc}: stop the server on it or choose another {option} (0 picks a free one)") from None
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    with open_rag(args, ingest_limits=limits) as rag:
        log.info("loading the models ...")
        server = RAGServer(rag, args.host, args.port, args.max_queue, token, tls, metrics_port=args.metrics_port,
                           tokens=tokens, http_port=args.http_port).start()
        announce(args, server, tls, bool(token or tokens))
        # Python runs a signal's handler in the main thread, and the kernel may deliver the signal to another one:
        # a wait without a timeout would then sleep through it. Short waits let the main thread run the handler.
        while not stop.wait(0.2):
            pass
        log.info(f"draining (at most {args.drain_seconds:g} s) ...")
        server.stop(args.drain_seconds)
    log.info("stopped")
    return 0


def announce(args, server: RAGServer, tls, auth: bool) -> None:
    """One line on stdout once the server listens: its ports (clients and tests read them from it)."""
    ports = {"grpc_port": server.port, "http_port": server.http_port, "metrics_port": server.metrics_port}
    if args.log_format == "json":
        print(json.dumps({"message": f"serving on {args.host}:{server.port}", "host": args.host, **ports,
                          "queue": args.max_queue, "tls": bool(tls), "token": auth}), flush=True)
        return
    extra = f", HTTP on port {server.http_port}" if server.http_port is not None else ""
    extra += f", metrics on port {server.metrics_port}" if server.metrics_port is not None else ""
    print(f"cascade-rag: serving on {args.host}:{server.port} (queue {args.max_queue}, "
          f"{'TLS' if tls else 'plaintext'}, {'token' if auth else 'no token'}{extra})", flush=True)
