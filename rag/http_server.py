"""HTTPServer: uvicorn serving an ASGI application on host:port from a thread of its own, on a socket bound here
first (port 0 picks a free port: see `.port`), so that a port in use is our one-line error."""
import socket
import threading
import time

import uvicorn

from .listen import check_port

STARTUP_S = 30.0


class HTTPServer:
    def __init__(self, app, host: str, port: int):
        check_port(host, port)
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        self.socket = socket.socket(family, socket.SOCK_STREAM)
        self.socket.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.socket.bind((host, port))
        self.port = self.socket.getsockname()[1]
        # no logging config or access log of uvicorn's own: the CallObserver writes each call's line
        config = uvicorn.Config(app, log_config=None, access_log=False, lifespan="off", log_level="warning",
                                timeout_graceful_shutdown=1)
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, kwargs={"sockets": [self.socket]},
                                       name="cascade-rag-http", daemon=True)

    def start(self) -> "HTTPServer":
        self.thread.start()
        end = time.monotonic() + STARTUP_S
        while not self.server.started:
            if not self.thread.is_alive() or time.monotonic() > end:
                raise OSError(f"the HTTP server did not start on port {self.port}")
            time.sleep(0.01)
        return self

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(10)
        self.socket.close()
