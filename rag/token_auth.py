"""TokenAuth: a bearer token required of every call but health checks."""
import hmac

import grpc


class TokenAuth(grpc.ServerInterceptor):
    """Refuses every call without `authorization: Bearer <token>` metadata, except those under `open_methods`."""

    def __init__(self, token: str, open_methods: str):
        self.expected, self.open_methods = f"Bearer {token}".encode(), open_methods

    def intercept_service(self, continuation, details):
        handler = continuation(details)
        given = dict(details.invocation_metadata or ()).get("authorization", "")
        if handler is None or details.method.startswith(self.open_methods) or \
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
