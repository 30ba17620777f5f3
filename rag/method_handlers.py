"""gRPC method handlers made over again by the server's interceptors: the behavior of a handler, and a handler of
the same kind (unary or streaming each way) running another behavior."""
import grpc

_MAKE = {(False, False): grpc.unary_unary_rpc_method_handler, (False, True): grpc.unary_stream_rpc_method_handler,
         (True, False): grpc.stream_unary_rpc_method_handler, (True, True): grpc.stream_stream_rpc_method_handler}


def behavior_of(handler: grpc.RpcMethodHandler):
    return {(False, False): handler.unary_unary, (False, True): handler.unary_stream,
            (True, False): handler.stream_unary, (True, True): handler.stream_stream}[
        handler.request_streaming, handler.response_streaming]


def handler_like(handler: grpc.RpcMethodHandler, behavior, codecs: bool = True,
                 request_deserializer=None) -> grpc.RpcMethodHandler:
    """A handler of the same kind as `handler` running `behavior`: with its (de)serializers if `codecs` (the request
    deserializer replaced by `request_deserializer` when given), else on raw bytes (for a refusal)."""
    make = _MAKE[handler.request_streaming, handler.response_streaming]
    if not codecs:
        return make(behavior)
    return make(behavior, request_deserializer=request_deserializer or handler.request_deserializer,
                response_serializer=handler.response_serializer)
