"""An ingestion's cost known before it starts: the estimate line, the refusal beyond --max-disk or the free disk
space (over gRPC too), the bar counted in tokens that moves while a document is embedded, skipped files named."""
import logging
import re
import subprocess
import sys
from pathlib import Path

import grpc
import pytest

from cascade_rag.rag import ingest_cost
from cascade_rag.rag.client import Client
from cascade_rag.rag.ingest import read_paths, skipped_message
from cascade_rag.rag.ingest_cost import IngestEstimate, IngestTooLarge, format_size, parse_size
from cascade_rag.rag.ingest_progress import IngestProgress
from cascade_rag.rag.pipeline import RAG
from cascade_rag.rag.server import RAGServer
from tests.helpers import ROOT

SENTENCES = ["The ferry to Varn leaves at {0} o'clock from pier {0}.", "Lighthouse {0} was painted red in 18{0}.",
             "Bees of hive {0} flew {0} kilometres on the first warm day."]
LINE = re.compile(r"ingesting (\d+) documents?: ([\d,]+) passages, ([\d,]+) tokens, ~([\d.,]+) (B|KiB|MiB|GiB) of KV "
                  r"chunks, ~\d+ (s|min|h) \(estimated from the first batch\)")


def cli(*args):
    return subprocess.run([sys.executable, "-m", "cascade_rag.rag.cli", *map(str, args)], cwd=ROOT,
                          capture_output=True, text=True, timeout=300)


def one_error(result) -> str:
    errors = [line for line in result.stderr.splitlines() if line.startswith("cascade-rag: error:")]
    assert result.returncode == 1 and len(errors) == 1 and "Traceback" not in result.stderr, result.stderr
    return errors[0]


def chunk_bytes(data: Path) -> int:
    return sum(p.stat().st_size for p in (data / "chunks").glob("*.safetensors"))


def test_sizes_parse_in_binary_and_decimal_units_and_bad_ones_are_named():
    assert parse_size("2048") == 2048 and parse_size("500M") == 500 << 20 and parse_size("2g") == 2 << 30
    assert parse_size("1.5GiB") == 3 << 29 and parse_size(" 300 MB ") == 300_000_000 and parse_size("1k") == 1024
    for bad in ("2X", "", "-1G", "G", "1.2.3M", "1e3"):
        with pytest.raises(ValueError, match=f"{re.escape(repr(bad))} is not a size"):
            parse_size(bad)
    assert [format_size(n) for n in (812, 1536, 134.2 * 2**20, 55 << 30)] == ["812 B", "1.5 KiB", "134.2 MiB",
                                                                                "55.0 GiB"]


def test_the_estimate_line_and_time():
    estimate = IngestEstimate(documents=1, passages=5299, tokens=1_356_544, new_chunks=5299, new_tokens=1_356_544,
                              chunk_bytes=55 << 30, row_bytes=1 << 20)
    assert estimate.line() == "ingesting 1 document: 5,299 passages, 1,356,544 tokens, ~55.0 GiB of KV chunks"
    assert estimate.time(0.35e-3, 10e-3) == pytest.approx(1_356_544 * 10.35e-3)
    assert estimate.line().endswith("of KV chunks, ~3.9 h (estimated from the first batch)")
    estimate = IngestEstimate(3, 12, 3071, 0, 0, 0, 9000)
    assert estimate.line() == ("ingesting 3 documents: 12 passages, 3,071 tokens, no new KV chunks (all stored or "
                               "repeated)")


def test_estimate_matches_the_bytes_written_and_the_bar_counts_tokens_while_embedding(
        tmp_path, tiny_model, monkeypatch, capsys, caplog):
    folder = tmp_path / "in"
    (folder / "img").mkdir(parents=True)
    (folder / "img" / "logo.png").write_bytes(b"\x89PNG")
    long = " ".join(s.format(i) for i in range(20) for s in SENTENCES)  # one document of several slices
    (folder / "long.txt").write_text(long)
    (folder / "short.md").write_text("# Kites\n\nBox kites were invented by Lawrence Hargrave in 1893.")
    events = []
    advance = IngestProgress._advance
    monkeypatch.setattr(IngestProgress, "_advance",
                        lambda self, n: (advance(self, n), events.append(("bar", self.bar.n if self.bar else 0))))
    caplog.set_level(logging.WARNING)
    with RAG(tmp_path / "data", model=tiny_model, passage_tokens=32, overlap=4, embed_slice=3) as rag:
        encode = rag.embedder().encode
        monkeypatch.setattr(rag.embedder(), "encode",
                            lambda texts: (events.append(("embed", len(texts))), encode(texts))[1])
        report = rag.ingest([folder], progress=True)
        kv_per_token = rag.model().engine.kv_bytes_per_token()
    estimate, err = report.estimate, capsys.readouterr().err
    assert sorted(report.added) == ["long.txt", "short.md"] and not report.errors
    assert (estimate.documents, estimate.passages, estimate.tokens) == (2, report.passages, report.tokens)
    assert estimate.new_chunks == report.prefilled == report.passages > 2 * 3
    written = chunk_bytes(tmp_path / "data")
    assert written > report.tokens * kv_per_token and abs(estimate.chunk_bytes - written) < 0.02 * written
    # one line before the bar, in tokens; the bar's total is the tokens, reached at the end
    line = LINE.search(err)
    assert line and line.group(1) == "2" and line.group(3) == f"{report.tokens:,}", err
    assert err.index(line.group(0)) < err.index("ingesting ", line.end())
    assert f"{report.tokens:,}/{report.tokens:,} tokens" in err
    embeds = [i for i, (kind, _) in enumerate(events) if kind == "embed"]
    assert len(embeds) > 3
    moved = [n for kind, n in events[:embeds[-1]] if kind == "bar"]
    assert moved and moved[-1] > 0, events  # it moved before the last slice was embedded
    assert events[-1] == ("bar", report.tokens)
    # the file of another type in the folder is named, not an error
    assert report.skipped == [str(folder / "img" / "logo.png")]
    assert any("skipped 1 file" in r.message and "logo.png" in r.message for r in caplog.records)
    assert "1 files skipped" in report.summary()


def test_max_disk_below_the_estimate_refuses_with_both_sizes_and_writes_nothing(tmp_path, tiny_model):
    data = tmp_path / "data"
    error = one_error(cli("ingest", ROOT / "samples" / "docs", "--data-dir", data, "--model", tiny_model, "--quiet",
                          "--max-disk", "10K"))
    assert re.search(r"needs about [\d.]+ KiB of disk \(3 documents, .* more than the limit of 10\.0 KiB "
                     r"\(--max-disk\); nothing was ingested", error), error
    assert not list((data / "chunks").iterdir()) and not (data / "manifest.json").exists()
    with RAG(data, model=tiny_model) as rag:
        assert rag.documents() == []
    assert "--max-disk: '2X' is not a size" in one_error(cli("ingest", ROOT / "samples" / "docs", "--data-dir", data,
                                                             "--max-disk", "2X"))


def test_beyond_the_free_disk_space_is_refused_by_the_api_and_over_grpc(tmp_path, tiny_model, monkeypatch):
    monkeypatch.setattr(ingest_cost, "free_bytes", lambda directory: 4096)
    documents = [{"id": "varn", "title": "Varn", "text": "The lighthouse of Varn was built in 1841."}]
    with RAG(tmp_path, model=tiny_model) as rag:
        with pytest.raises(IngestTooLarge, match=r"needs about .* but only 4\.0 KiB are free on the filesystem of"):
            rag.ingest(documents=documents, max_disk_bytes=1 << 30)
        server = RAGServer(rag, "127.0.0.1", 0).start()
        try:
            with Client(f"127.0.0.1:{server.port}") as client, pytest.raises(grpc.RpcError) as raised:
                client.ingest(documents)
        finally:
            server.stop(1)
        assert raised.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert "only 4.0 KiB are free" in raised.value.details()
        assert rag.documents() == [] and not list((tmp_path / "chunks").iterdir())


def test_skipped_files_are_collected_and_named_in_one_line(tmp_path):
    for name in ("a.txt", "b.odt", "sub/c.docx", ".DS_Store"):
        (tmp_path / name).parent.mkdir(exist_ok=True)
        (tmp_path / name).write_text("words")
    skipped = []
    assert [d.id for d in read_paths([tmp_path], skipped=skipped)] == ["a.txt"]
    assert skipped == [str(tmp_path / n) for n in (".DS_Store", "b.odt", "sub/c.docx")]
    assert skipped_message([f"f{i}.bin" for i in range(12)], shown=10).endswith("f9.bin and 2 more")


@pytest.mark.slow
def test_the_embedded_model_estimate_line_and_chunk_bytes(tmp_path):
    data = tmp_path / "data"
    result = cli("ingest", ROOT / "samples" / "docs", "--data-dir", data)
    assert result.returncode == 0, result.stderr
    line = LINE.search(result.stderr)
    assert line and line.group(1) == "3", result.stderr
    tokens = int(line.group(3).replace(",", ""))
    assert f"{tokens} tokens, KV" in result.stdout
    estimated = float(line.group(4).replace(",", "")) * 1024 ** ["B", "KiB", "MiB", "GiB"].index(line.group(5))
    assert abs(estimated - chunk_bytes(data)) < 0.01 * chunk_bytes(data)
