"""The RAG pipeline end to end: ingestion, updates, deletion, retrieval, answers, crash safety and bad inputs."""
import io
import json
import os
import subprocess
import sys

import pytest

from cascade_rag.engine import SamplingParams
from cascade_rag.engine.chunk_format import load_file
from cascade_rag.rag.chunking import split_passages
from cascade_rag.rag.document_store import StoreLocked, UnknownDocuments
from cascade_rag.rag.evaluate import evaluate, exact_match, select_corpus, table, token_f1
from cascade_rag.rag.pipeline import RAG
from cascade_rag.rag.store import Store
from tests.helpers import ROOT


PLANTED = {"id": "varn", "title": "Varn lighthouse",
           "text": "The lighthouse of Varn was built in 1841 by the engineer Ada Ilse. Its lamp can be seen 40 km "
                   "away. The secret code of the Varn lighthouse is 4417."}
CORPUS = [
    {"id": "bread", "title": "Sourdough", "text": "Sourdough bread rises with a starter of flour and water that "
                                                  "holds wild yeast and lactic acid bacteria."},
    {"id": "bees", "title": "Honey bees", "text": "A honey bee colony has one queen, thousands of female workers "
                                                  "and, in summer, a few hundred male drones."},
    {"id": "rail", "title": "Night trains", "text": "Night trains carry sleeping cars so travellers can cover long "
                                                    "distances while they sleep.\n\nMany routes were revived "
                                                    "after 2020."},
    PLANTED,
]
QUICK = SamplingParams(max_new_tokens=12)


@pytest.fixture(scope="module")
def rag(tmp_path_factory):
    with RAG(tmp_path_factory.mktemp("data"), passage_tokens=64, overlap=8) as rag:
        yield rag


def test_ingest_is_idempotent_and_consistent(rag):
    report = rag.ingest(documents=CORPUS)
    assert sorted(report.added) == sorted(d["id"] for d in CORPUS) and not report.errors
    assert report.passages == rag.stats()["passages"] >= len(CORPUS) and report.prefilled == report.passages
    assert report.kv_bytes == report.tokens * rag.model().engine.kv_bytes_per_token()
    assert rag.check() == []
    again = rag.ingest(documents=CORPUS)
    assert sorted(again.unchanged) == sorted(d["id"] for d in CORPUS) and again.passages == again.prefilled == 0


def test_planted_passage_is_retrieved_and_answered_in_every_mode(rag):
    rag.ingest(documents=CORPUS)
    sources = rag.retrieve("What is the secret code of the Varn lighthouse?", top_k=2)
    assert sources[0].doc_id == "varn" and sources[0].title == "Varn lighthouse" and sources[0].score > 0.5
    for mode in ("cached", "full", "blend"):
        stream = rag.ask("What is the secret code of the Varn lighthouse?", top_k=2, mode=mode,
                         params=SamplingParams(max_new_tokens=40, stop=("4417",)))
        deltas = list(stream)
        answer = stream.answer
        assert "".join(deltas) == answer.text and "4417" in rag.model().engine.tokenizer.decode(answer.token_ids), answer.text
        assert [s.doc_id for s in answer.sources][0] == "varn" and answer.ttft_s > 0 and answer.first_token_s > 0
        assert sum(answer.tiers.values()) == (0 if mode == "full" else 2)
    again = rag.ask("What is the secret code of the Varn lighthouse?", top_k=2, params=QUICK).result()
    assert again.tiers == {"cpu": 2}  # now served from memory



def test_eval_compares_every_mode_with_full_token_by_token(rag):
    rag.ingest(documents=CORPUS)
    questions = [{"id": "q1", "question": "What is the secret code of the Varn lighthouse?", "answers": ["4417"],
                  "gold_doc_ids": ["varn"]}]
    summary = evaluate(rag, questions, ["cached", "full", "blend"], 1, SamplingParams(max_new_tokens=4),
                       fidelity_tokens=6, log=io.StringIO())["summary"]
    assert summary["recall_at_1"] == 1.0 and "kl_from_full" not in summary["modes"]["full"]
    for mode in ("cached", "blend"):  # one passage saw exactly level 0 when it was stored: both modes are exact
        assert summary["modes"][mode]["top1_agreement_with_full"] == 1.0, mode
        assert abs(summary["modes"][mode]["kl_from_full"]) < 1e-4, mode
    assert "blend against full, teacher-forced on full's answers: top-1 agreement 1.000" in table(summary)

def test_update_replaces_passages_vectors_and_chunks(rag):
    rag.ingest(documents=CORPUS)
    before = set(rag.chunks.sizes())
    changed = dict(CORPUS[1], text="A honey bee colony is led by a queen. Bumblebees nest in the ground.")
    report = rag.ingest(documents=[changed])
    assert report.updated == ["bees"] and report.passages == 1
    after = set(rag.chunks.sizes())
    assert len(after - before) == 1 and len(before - after) == 1 and rag.check() == []
    assert "Bumblebees" in rag.retrieve("Where do bumblebees nest?", top_k=1)[0].text


def test_delete_removes_everything_of_the_document(rag):
    rag.ingest(documents=CORPUS)
    files = len(rag.chunks.sizes())
    with pytest.raises(UnknownDocuments, match="no such documents: 'no-such-id'; nothing was deleted"):
        rag.delete(["rail", "no-such-id"])
    assert "rail" in {d["id"] for d in rag.documents()} and len(rag.chunks.sizes()) == files
    assert rag.delete(["rail"]) == ["rail"]
    assert "rail" not in {d["id"] for d in rag.documents()} and rag.check() == []
    assert len(rag.chunks.sizes()) < files
    assert all(s.doc_id != "rail" for s in rag.retrieve("night trains sleeping cars", top_k=4))
    rag.ingest(documents=CORPUS)  # back for the other tests


@pytest.mark.parametrize("mode", ["cached", "blend"])  # `blend` meets the corrupt layer before its recompute
def test_corrupt_and_missing_chunks_are_recomputed(rag, caplog, mode):
    rag.ingest(documents=CORPUS)
    [source] = rag.retrieve("What is the secret code of the Varn lighthouse?", top_k=1)
    [passage] = rag.store.passages([source.passage_id]).values()
    path = rag.chunks.backend.path(passage.chunk_key)
    data = bytearray(path.read_bytes())
    data[-100] ^= 0xFF
    path.write_bytes(bytes(data))
    rag.model().tiers.discard(passage.chunk_key)
    answer = rag.ask("What is the secret code of the Varn lighthouse?", top_k=1, mode=mode, params=QUICK).result()
    assert answer.tiers == {"recomputed": 1} and "checksum" in answer.warnings[0]
    assert "checksum" in caplog.text
    load_file(path, rag.model().fingerprint)  # stored again, whole
    path.unlink()
    rag.model().tiers.discard(passage.chunk_key)
    answer = rag.ask("What is the secret code of the Varn lighthouse?", top_k=1, mode=mode, params=QUICK).result()
    assert answer.tiers == {"recomputed": 1} and "missing" in answer.warnings[0] and path.exists()


def test_bad_inputs_are_reported_and_the_rest_ingested(rag, tmp_path):
    (tmp_path / "good.md").write_text("# Kites\n\nBox kites were invented by Lawrence Hargrave in 1893.")
    (tmp_path / "empty.txt").write_text("  \n")
    (tmp_path / "binary.txt").write_bytes(b"\xff\xfe\x00bad")
    (tmp_path / "broken.pdf").write_bytes(b"%PDF")
    (tmp_path / "skipped.odt").write_bytes(b"not ours")
    (tmp_path / "records.jsonl").write_text('{"id": "r1", "title": "Owls", "text": "Owls hunt at night."}\n'
                                            '{"id": "r2", "text": \n{"title": "no id", "text": "x"}\n')
    report = rag.ingest([tmp_path, tmp_path / "missing.txt"])
    errors = [str(e) for e in report.errors]
    assert sorted(report.added) == ["good.md", "r1"], errors
    assert any("empty.txt" in e and "empty text" in e for e in errors)
    assert any("binary.txt" in e and "cannot read" in e for e in errors)
    assert any(e.startswith(f"{tmp_path / 'records.jsonl'}:2: invalid JSON") for e in errors)
    assert any(":3: missing document id" in e for e in errors)
    assert any("missing.txt" in e and "no such file" in e for e in errors)
    assert any("broken.pdf" in e and "cannot read this PDF" in e for e in errors)
    assert len(errors) == 6 and report.skipped == [str(tmp_path / "skipped.odt")]  # the .odt is not ours to read
    assert {d["id"]: d["title"] for d in rag.documents()}["good.md"] == "Kites"
    rag.delete(["good.md", "r1"])


def test_second_writer_gets_a_clear_error(rag, tmp_path):
    holder = subprocess.Popen([sys.executable, "-c", "import sys, time; from cascade_rag.rag.store import Store; "
                               "s = Store(sys.argv[1]); s.lock_for_writing(); print('locked', flush=True); time.sleep(60)",
                               str(tmp_path)], cwd=ROOT, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        with pytest.raises(StoreLocked, match=r"being written by another process \(pid \d+\)"):
            RAG(tmp_path).ingest(documents=CORPUS[:1])
    finally:
        holder.kill()
        holder.wait()


def run_ingest(data_dir, inputs, model, crash_at=None):
    env = dict(os.environ, CASCADE_RAG_CRASH_AT=crash_at or "")
    cmd = [sys.executable, "-m", "cascade_rag.rag.cli", "ingest", str(inputs), "--data-dir", str(data_dir), "--model",
           str(model), "--passage-tokens", "24", "--overlap", "4", "--quiet"]
    return subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)


def test_crash_at_any_point_leaves_a_consistent_store_and_rerun_completes(tmp_path, tiny_model):
    inputs = tmp_path / "corpus.jsonl"
    inputs.write_text("".join(json.dumps(d) + "\n" for d in CORPUS))
    data = tmp_path / "data"
    for crash_at in ("chunk_saved:2", "before_commit:2", "committed:1", "chunk_saved:1"):
        result = run_ingest(data, inputs, tiny_model, crash_at)
        assert result.returncode == 137, result.stderr
        with RAG(data) as rag:
            assert [p for p in rag.check() if "belongs to no passage" not in p] == []
            counts = rag.stats()
            assert counts["passages"] == sum(d["passages"] for d in rag.documents())
    result = run_ingest(data, inputs, tiny_model)
    assert result.returncode == 0, result.stderr
    with RAG(data) as rag:
        assert rag.check() == [] and len(rag.documents()) == len(CORPUS)
        _, ids, vectors = rag.store.vectors()
        assert len(ids) == len(vectors) == rag.stats()["passages"] == rag.stats()["chunk_files"]
    result = run_ingest(data, inputs, tiny_model)
    assert "0 documents ingested (0 new, 0 updated, 4 unchanged)" in result.stdout


def test_hnsw_index_survives_updates_and_deletes(tmp_path, tiny_model):
    with RAG(tmp_path, model=tiny_model, index="hnsw", passage_tokens=24, overlap=4) as rag:
        rag.ingest(documents=CORPUS)
        rag.ingest(documents=[dict(CORPUS[0], text="Rye bread is dense and dark.")])
        rag.delete(["bees"])
        assert rag.check() == [] and rag.retrieve("dense dark rye bread", top_k=1)[0].doc_id == "bread"
    with RAG(tmp_path) as rag:  # a reader: the saved index of the current generation
        assert rag.options.index == "hnsw" and rag.check() == [] and len(rag.documents()) == 3


def test_another_model_is_refused_on_a_data_dir(tmp_path, tiny_model):
    with RAG(tmp_path, model=tiny_model) as rag:
        rag.ingest(documents=CORPUS[:1])
    with pytest.raises(Exception, match="was built with another fingerprint"):
        RAG(tmp_path, dtype="bf16", model=tiny_model).ask("anything?")


def test_passages_respect_the_size_and_cut_at_sentences(rag):
    tok = rag.model().engine.tokenizer
    count = lambda s: len(tok.encode(s))
    text = ("Short first paragraph.\n\n" + " ".join(f"Sentence number {i} is here." for i in range(40))
            + "\n\n" + "x" * 3000)
    passages = split_passages(text, count, tok.encode, tok.decode, passage_tokens=40, overlap=10)
    assert all(count(p) <= 44 for p in passages) and passages[0].startswith("Short first paragraph.")
    assert all(p.endswith(".") for p in passages[1:5])
    assert passages[2].split(". ")[0] in passages[1]  # overlap repeats the previous passage's last sentence
    with pytest.raises(ValueError):
        split_passages(text, count, tok.encode, tok.decode, passage_tokens=40, overlap=30)


def test_squad_metrics_and_corpus_selection():
    assert exact_match("The Eiffel Tower!", ["eiffel tower"]) == 1.0
    assert token_f1("in the year 1841", ["1841", "year of 1841"]) == pytest.approx(2 / 3)
    assert token_f1("nothing", ["1841"]) == 0.0
    corpus = [{"id": str(i)} for i in range(100)]
    chosen = select_corpus(corpus, [{"gold_doc_ids": ["7"]}], 10, seed=1)
    assert len(chosen) == 11 and {"id": "7"} in chosen and chosen == select_corpus(corpus, [{"gold_doc_ids": ["7"]}],
                                                                                    10, seed=1)


def test_store_refuses_a_second_writer_in_process_terms(tmp_path):
    first, second = Store(tmp_path), Store(tmp_path)
    first.lock_for_writing()
    with pytest.raises(StoreLocked):
        second.lock_for_writing()
    first.close()
    second.lock_for_writing()
    second.close()


@pytest.mark.parametrize("kind", ["flat", "hnsw"])
def test_vector_index_saves_atomically_and_loads_only_its_generation(tmp_path, kind):
    import numpy as np

    from cascade_rag.rag.vector_index import VectorIndex
    vectors = np.random.default_rng(0).standard_normal((50, 16)).astype(np.float32)
    ids = np.arange(100, 150)
    saved = VectorIndex.build(16, kind, 7, ids, vectors)
    path = saved.save(tmp_path)
    VectorIndex.build(16, kind, 8, ids[:3], vectors[:3]).save(tmp_path)  # a newer generation replaces the file
    assert not path.exists() and [p.name for p in tmp_path.iterdir()] == [f"index-{kind}.8.faiss"]
    saved.save(tmp_path)
    loaded = VectorIndex.load(tmp_path, 16, kind, 7)
    assert sorted(loaded.ids()) == list(ids) and loaded.search(vectors[4], 3) == saved.search(vectors[4], 3)
    assert VectorIndex.load(tmp_path, 16, kind, 8) is None and VectorIndex.load(tmp_path, 32, kind, 7) is None
    path.write_bytes(path.read_bytes()[:100])  # truncated: not loaded (the caller rebuilds it from the store)
    assert VectorIndex.load(tmp_path, 16, kind, 7) is None


def test_lexical_index_and_rank_fusion():
    from cascade_rag.rag.lexical_index import LexicalIndex, fuse
    index = LexicalIndex(3, [10, 11, 12], ["Varn lighthouse. The code is 4417.", "Sourdough bread rises.", ""])
    assert index.generation == 3
    assert [pid for pid, _ in index.search("What is the code 4417?", 5)] == [10]
    assert index.search("what is the", 5) == [] and index.search("zebra", 5) == []
    assert LexicalIndex(0, [], []).search("lighthouse", 3) == []
    # 1/(60+1) + 1/(60+2) for 2, only 1/(60+1) for 1 and 3: ties keep first-seen order
    assert fuse([[(1, 0.9), (2, 0.8)], [(3, 7.0), (2, 5.0)]]) == [2, 1, 3]
