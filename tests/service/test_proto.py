"""The committed gRPC stubs are what grpcio-tools makes of proto/ now."""

from cascade_rag.rag.proto_gen.generate import OUTPUTS, generate
from tests.helpers import ROOT

STUBS = ROOT / "rag" / "proto_gen"


def test_committed_stubs_are_current(tmp_path):
    generate(tmp_path)
    for name in OUTPUTS:
        assert (tmp_path / name).read_text() == (STUBS / name).read_text(), \
            f"rag/proto_gen/{name} is stale: run `make proto` and commit the result"


def test_stubs_import_inside_the_rag_package():
    from cascade_rag.rag.proto_gen import cascade_rag_pb2, cascade_rag_pb2_grpc
    assert cascade_rag_pb2.DESCRIPTOR.package == "cascade_rag.v1"
    assert {"Answer", "Documents", "Info"} <= set(cascade_rag_pb2.DESCRIPTOR.services_by_name)
    assert hasattr(cascade_rag_pb2_grpc, "AnswerStub")
