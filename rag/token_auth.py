"""TokenAuth: a bearer token required of every call but health checks."""
import grpc

from .method_handlers import handler_like
from .token_scopes import TokenScopes, authorization_of

REFUSAL = "missing or wrong bearer token: send the metadata 'authorization: Bearer <token>' (once)"


class TokenAuth(grpc.ServerInterceptor):
    """Refuses every call without `authorization: Bearer <token>` metadata of one of the tokens, except those under
    `open_methods`; a call with more than one `authorization` header is refused, whichever of them holds the token.
    Which collections a token may use is checked by the services (PERMISSION_DENIED)."""

    def __init__(self, tokens: TokenScopes, open_methods: str):
        self.tokens, self.open_methods = tokens, open_methods

    def accepts(self, metadata) -> bool:
        return self.tokens.collections(authorization_of(metadata)) is not None

    def intercept_service(self, continuation, details):
        handler = continuation(details)
        if handler is None or details.method.startswith(self.open_methods) or \
                self.accepts(details.invocation_metadata):
            return handler

        def refuse(request, context):
            context.abort(grpc.StatusCode.UNAUTHENTICATED, REFUSAL)
        return handler_like(handler, refuse, codecs=False)
