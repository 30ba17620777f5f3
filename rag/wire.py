"""What the gRPC server and client agree on beyond the .proto: the message size limit, and the answer modes by
the engine's names against the proto's enum."""
from .proto_gen import cascade_rag_pb2 as pb

MAX_MESSAGE_BYTES = 16 << 20
MODE_TO_PROTO = {"cached": pb.MODE_CACHED, "full": pb.MODE_FULL, "blend": pb.MODE_BLEND}
# MODE_UNSPECIFIED: None, the server's default (cascade_rag.engine.DEFAULT_MODE)
PROTO_TO_MODE = {**{value: name for name, value in MODE_TO_PROTO.items()}, pb.MODE_UNSPECIFIED: None}


def proto_mode(mode: str | None) -> int:
    """The proto's enum for a mode's name, MODE_UNSPECIFIED for None (the server's default); ValueError naming the
    modes for any other name."""
    if mode is None:
        return pb.MODE_UNSPECIFIED
    if mode not in MODE_TO_PROTO:
        raise ValueError(f"unknown mode {mode!r}; choose one of {', '.join(MODE_TO_PROTO)}, or None for the "
                         "server's default")
    return MODE_TO_PROTO[mode]
