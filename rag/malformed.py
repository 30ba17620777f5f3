"""Requests that do not decode as their method's message are the client's mistake: INVALID_ARGUMENT naming the
method, where gRPC itself would answer INTERNAL ("Exception deserializing request!")."""
import grpc

from .method_handlers import behavior_of, handler_like


class Undecodable:
    """What the request deserializer gives in place of a message it cannot parse."""

    def __init__(self, reason: str):
        self.reason = reason


class MalformedRequests(grpc.ServerInterceptor):
    """Wraps each handler's request deserializer so that it never raises, and the handler so that an undecodable
    request aborts its call with INVALID_ARGUMENT (for a stream, at the message that does not decode)."""

    def intercept_service(self, continuation, details):
        handler = continuation(details)
        if handler is None or handler.request_deserializer is None:
            return handler
        deserialize, behavior, method = handler.request_deserializer, behavior_of(handler), details.method

        def tolerant(data: bytes):
            try:
                return deserialize(data)
            except Exception as exc:
                return Undecodable(str(exc) or type(exc).__name__)

        def refuse(context, request: Undecodable):
            context.abort(grpc.StatusCode.INVALID_ARGUMENT,
                          f"request: not a valid request message of {method} ({request.reason})")

        if handler.request_streaming:
            def checked(requests, context):
                def each():
                    for request in requests:
                        if isinstance(request, Undecodable):
                            refuse(context, request)
                        yield request
                return behavior(each(), context)
        else:
            def checked(request, context):
                if isinstance(request, Undecodable):
                    refuse(context, request)
                return behavior(request, context)
        return handler_like(handler, checked, request_deserializer=tolerant)
