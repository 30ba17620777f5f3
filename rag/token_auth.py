"""TokenAuth: a bearer token required of every call but health checks."""
import hmac

import grpc

from .method_handlers import handler_like

REFUSAL = "missing or wrong bearer token: send the metadata 'authorization: Bearer <token>' (once)"


class TokenAuth(grpc.ServerInterceptor):
    """Refuses every call without `authorization: Bearer <token>` metadata, except those under `open_methods`. The
    scheme is matched without regard to case (RFC 7235), the token exactly and in constant time; a call with more
    than one `authorization` header is refused, whichever of them holds the token."""

    def __init__(self, token: str, open_methods: str):
        self.expected, self.open_methods = token.encode(), open_methods

    def accepts(self, metadata) -> bool:
        given = [value for key, value in metadata or () if key.lower() == "authorization"]
        if len(given) != 1 or not isinstance(given[0], str):
            return False
        scheme, _, credentials = given[0].strip().partition(" ")
        return scheme.lower() == "bearer" and hmac.compare_digest(credentials.strip().encode(), self.expected)

    def intercept_service(self, continuation, details):
        handler = continuation(details)
        if handler is None or details.method.startswith(self.open_methods) or \
                self.accepts(details.invocation_metadata):
            return handler

        def refuse(request, context):
            context.abort(grpc.StatusCode.UNAUTHENTICATED, REFUSAL)
        return handler_like(handler, refuse, codecs=False)
