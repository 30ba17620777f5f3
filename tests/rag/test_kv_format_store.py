"""The KV format as a store concern: chosen at the first ingestion, recorded in the manifest, adopted by later
processes; a process started with another format is refused (FAILED_PRECONDITION over gRPC, naming both)."""
import json
import re
import shutil
import time
from dataclasses import replace
from pathlib import Path

import grpc
import pytest

from cascade_rag.engine.chunk_format import decode, encode
from cascade_rag.engine.file_io import FileSource
from cascade_rag.engine.kv_chunk import KVChunkError
from cascade_rag.rag.client import Client
from cascade_rag.rag.local_backend import LocalDirectoryBackend
from cascade_rag.rag.manifest import KVFormatMismatch
from cascade_rag.rag.pipeline import RAG
from cascade_rag.rag.server import RAGServer

CORPUS = [{"id": "varn", "title": "Varn lighthouse", "text": "The lighthouse of Varn was built in 1841 by the engineer "
                                                             "Ada Ilse. Its secret code is 4417."},
          {"id": "bees", "title": "Honey bees", "text": "A honey bee colony has one queen and thousands of workers."}]


@pytest.fixture(scope="module")
def int4_dir(tmp_path_factory, tiny_model):
    data = tmp_path_factory.mktemp("int4")
    with RAG(data, model=tiny_model, kv_format="int4", passage_tokens=48, overlap=8) as rag:
        report = rag.ingest(documents=CORPUS)
        assert report.kv_bytes == report.tokens * rag.model().engine.kv_bytes_per_token()
    return data


def test_the_format_is_recorded_and_adopted(int4_dir, tiny_model):
    manifest = json.loads((int4_dir / "manifest.json").read_text())
    assert manifest["kv_format"] == "int4"
    files = list((int4_dir / "chunks").glob("*.safetensors"))
    assert files and all(decode(f.read_bytes(), manifest["fingerprint"]).kv_format == "int4" for f in files)
    with RAG(int4_dir, model=tiny_model) as rag:  # no format given: the data directory's
        assert rag.options.kv_format == "int4"
        answer = rag.ask("Who built the lighthouse of Varn?", top_k=2).result()
        assert answer.tiers == {"disk": 2} and not answer.warnings and answer.token_ids
        assert rag.ask("Who built the lighthouse of Varn?", top_k=2).result().tiers == {"cpu": 2}


def test_another_format_is_refused_naming_both(int4_dir, tiny_model):
    with RAG(int4_dir, model=tiny_model, kv_format="fp8") as rag:
        message = r"holds KV chunks in format int4, this process was started with --kv-format fp8"
        with pytest.raises(KVFormatMismatch, match=message):
            rag.ask("Who built the lighthouse?")
        with pytest.raises(KVFormatMismatch, match=message):
            rag.ingest(documents=[{"id": "new", "title": "New", "text": "Something new."}])
        assert len(rag.documents()) == 2 and rag.check() == []  # nothing changed
        server = RAGServer(rag, "127.0.0.1", 0, max_queue=1).start()  # it starts, and refuses what needs chunks
        try:
            with Client(f"127.0.0.1:{server.port}") as client:
                for call in (lambda: list(client.query("Who built the lighthouse?", max_tokens=2)),
                             lambda: client.ingest([{"id": "new", "title": "New", "text": "Something new."}])):
                    with pytest.raises(grpc.RpcError) as error:
                        call()
                    assert error.value.code() == grpc.StatusCode.FAILED_PRECONDITION
                    assert "format int4" in error.value.details() and "--kv-format fp8" in error.value.details()
                assert client.retrieve("Who built the lighthouse?", top_k=1).passages[0].document_id == "varn"
        finally:
            server.stop(1)
    with pytest.raises(ValueError, match="unknown KV format 'int2'"):
        RAG(int4_dir, model=tiny_model, kv_format="int2")


def test_a_block_found_corrupt_while_streamed_is_recomputed(int4_dir, tiny_model, tmp_path):
    """The question's prefill starts while the chunks arrive block by block; a block failing its checksum fails
    that attempt, and the answer is made over the chunk recomputed (with a warning), which is stored again."""
    data = tmp_path / "copy"
    shutil.copytree(int4_dir, data)
    with RAG(data, model=tiny_model) as rag:
        [passage] = [p for p in rag.retrieve("Who built the lighthouse of Varn?", top_k=1)]
        key = rag.store.chunk_keys()
        files = sorted((data / "chunks").glob("*.safetensors"))
        for f in files:
            corrupt = bytearray(f.read_bytes())
            corrupt[-3] ^= 0x40  # the file's last tensor, in its last layer
            f.write_bytes(bytes(corrupt))
        answer = rag.ask("Who built the lighthouse of Varn?", top_k=2).result()
        assert any(re.search(r"checksum mismatch in block \d+ \(layers 0-1\); recomputing it", w)
                   for w in answer.warnings), answer.warnings
        assert answer.tiers == {"recomputed": 2} and answer.token_ids
        assert rag.check() == [] and len(key) == len(list((data / "chunks").glob("*.safetensors")))
        again = rag.ask("Who built the lighthouse of Varn?", top_k=2).result()
        assert again.text == answer.text and not again.warnings and passage.doc_id == "varn"


class LateBlocks(FileSource):
    """A chunk file whose blocks (every read past its header) come late, as from a busy disk."""

    def read_into(self, offset: int, out: memoryview) -> None:
        if offset > 0:  # the header is read from byte 0
            time.sleep(0.5)
        super().read_into(offset, out)


class OneLateChunk(LocalDirectoryBackend):
    """The data directory's chunks, one of them read through LateBlocks."""

    def __init__(self, folder: Path, late_key: str):
        super().__init__(folder)
        self.late_key = late_key

    def source(self, key: str) -> FileSource | None:
        source = super().source(key)
        return LateBlocks(source.path) if source is not None and key == self.late_key else source


def test_every_chunk_found_corrupt_is_recomputed_when_one_fails_later(int4_dir, tiny_model, tmp_path):
    """Two corrupt chunks, the second one's blocks read late: the first one's failure stops the attempt, and the
    retry runs over both recomputed (the answer waits for every streamed chunk to settle before it decides which
    failed), not over the second one streamed again."""
    data = tmp_path / "copy"
    shutil.copytree(int4_dir, data)
    for f in (data / "chunks").glob("*.safetensors"):
        corrupt = bytearray(f.read_bytes())
        corrupt[-3] ^= 0x40
        f.write_bytes(bytes(corrupt))
    question = "Who built the lighthouse of Varn?"
    with RAG(data, model=tiny_model) as rag:
        second = rag.retriever.search(question, 2)[1][1].chunk_key  # (source, passage) pairs, as an answer's
    with RAG(data, model=tiny_model, chunk_backend=OneLateChunk(data / "chunks", second)) as rag:
        answer = rag.ask(question, top_k=2).result()
        assert answer.tiers == {"recomputed": 2} and answer.token_ids, answer.warnings


def test_fp8_chunks_of_the_first_layout_are_refused_and_recomputed(tiny_model, tmp_path):
    """fp8 keys first had a scale alone per channel and group; chunks stored so (key parameters [.., 1, D]) are
    refused by their shapes, recomputed with a warning, and stored again in today's layout (a scale and a zero)."""
    data = tmp_path / "fp8"
    with RAG(data, model=tiny_model, kv_format="fp8", passage_tokens=48, overlap=8) as rag:
        rag.ingest(documents=CORPUS)
        fingerprint = rag.model().fingerprint
    files = sorted((data / "chunks").glob("*.safetensors"))
    for f in files:
        chunk = decode(f.read_bytes(), fingerprint)
        assert chunk.keys.params.shape[-2] == 2
        first = replace(chunk, keys=replace(chunk.keys, params=chunk.keys.params[..., :1, :].contiguous()))
        f.write_bytes(encode(first))
        with pytest.raises(KVChunkError, match="holds fp8 keys without their zeros"):
            decode(f.read_bytes(), fingerprint)
    with RAG(data, model=tiny_model) as rag:
        answer = rag.ask("Who built the lighthouse of Varn?", top_k=2).result()
        assert answer.tiers == {"recomputed": 2} and answer.token_ids
        assert all("holds fp8 keys without their zeros" in w and w.endswith("recomputing it")
                   for w in answer.warnings) and len(answer.warnings) == 2, answer.warnings
        assert rag.check() == []
    assert sum(decode(f.read_bytes(), fingerprint).keys.params.shape[-2] == 2 for f in files) == 2
    with RAG(data, model=tiny_model) as rag:
        again = rag.ask("Who built the lighthouse of Varn?", top_k=2).result()
        assert again.tiers == {"disk": 2} and not again.warnings and again.text == answer.text
