"""Method handlers of grpc's server interceptors: the behaviour a handler runs, and a handler of the same kind
running another behaviour (what an interceptor that wraps or replaces a call returns)."""
import grpc

_MAKE = {(False, False): grpc.unary_unary_rpc_method_handler, (False, True): grpc.unary_stream_rpc_method_handler,
         (True, False): grpc.stream_unary_rpc_method_handler, (True, True): grpc.stream_stream_rpc_method_handler}


def behavior_of(handler):
    """The function a method handler runs: (request or request iterator, context) -> response or responses."""
    return {(False, False): handler.unary_unary, (False, True): handler.unary_stream,
            (True, False): handler.stream_unary, (True, True): handler.stream_stream}[
        handler.request_streaming, handler.response_streaming]


def handler_like(handler, run, codecs: bool):
    """A method handler of the same kind as `handler` running `run`, with its (de)serializers if `codecs`."""
    make = _MAKE[handler.request_streaming, handler.response_streaming]
    if not codecs:
        return make(run)
    return make(run, request_deserializer=handler.request_deserializer,
                response_serializer=handler.response_serializer)
