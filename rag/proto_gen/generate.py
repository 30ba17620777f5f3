"""Regenerates the Python stubs of proto/cascade_rag/v1/cascade_rag.proto with grpcio-tools:
`python -m cascade_rag.rag.proto_gen.generate [OUT_DIR]` (default: this folder)."""
import sys
import tempfile
from pathlib import Path

PROTO_ROOT = Path(__file__).resolve().parents[2] / "proto"
PROTO = "cascade_rag/v1/cascade_rag.proto"
OUTPUTS = ("cascade_rag_pb2.py", "cascade_rag_pb2.pyi", "cascade_rag_pb2_grpc.py")


def generate(out_dir: Path) -> list[Path]:
    import grpc_tools
    from grpc_tools import protoc
    out_dir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        include = Path(grpc_tools.__file__).parent / "_proto"
        args = ["protoc", f"-I{PROTO_ROOT}", f"-I{include}", f"--python_out={tmp}", f"--pyi_out={tmp}",
                f"--grpc_python_out={tmp}", str(PROTO_ROOT / PROTO)]
        if protoc.main(args) != 0:
            raise RuntimeError(f"protoc failed on {PROTO_ROOT / PROTO}")
        written = []
        for name in OUTPUTS:
            text = (Path(tmp) / Path(PROTO).parent / name).read_text()
            # protoc writes absolute imports (`from cascade_rag.v1 import ...`); the stubs live inside rag/
            text = text.replace("from cascade_rag.v1 import cascade_rag_pb2", "from . import cascade_rag_pb2")
            (out_dir / name).write_text(text)
            written.append(out_dir / name)
    return written


if __name__ == "__main__":
    out = Path(sys.argv[1]) if len(sys.argv) > 1 else Path(__file__).resolve().parent
    for path in generate(out):
        print(f"wrote {path}")
