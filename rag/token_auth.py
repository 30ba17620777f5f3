"""TokenAuth: a bearer token required of every call but health checks."""
import grpc

from .grpc_handlers import handler_like
from .token_scopes import TokenScopes


class TokenAuth(grpc.ServerInterceptor):
    """Refuses every call without `authorization: Bearer <token>` metadata of one of the tokens, except those under
    `open_methods`. Which collections a token may use is checked by the services (PERMISSION_DENIED)."""

    def __init__(self, tokens: TokenScopes, open_methods: str):
        self.tokens, self.open_methods = tokens, open_methods

    def intercept_service(self, continuation, details):
        handler = continuation(details)
        given = dict(details.invocation_metadata or ()).get("authorization", "")
        if handler is None or details.method.startswith(self.open_methods) or \
                self.tokens.collections(given) is not None:
            return handler

        def refuse(request, context):
            context.abort(grpc.StatusCode.UNAUTHENTICATED, "missing or wrong bearer token: send the metadata "
                                                           "'authorization: Bearer <token>'")
        return handler_like(handler, refuse, codecs=False)
