"""Ingestion on Ray (a local cluster of two CPUs started by the command) into a shared store on a real
redis-server: a worker killed with SIGKILL in the middle leaves every committed document whole and nothing else
visible; the re-run ingests only what is missing and reuses the chunks the killed run had written."""
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from cascade_rag.rag.pipeline import RAG
from cascade_rag.rag.redis_location import RedisLocation
from cascade_rag.rag.redis_store import RedisDocumentStore
from tests.helpers import ROOT

pytest.importorskip("ray", reason="Ray is not installed: pip install -e '.[ray]' (make setup installs it)")

WORDS = "harbour lantern keeper granite tide beacon rope ledger signal storm gull anchor mast chart".split()
GROUP = 4  # rag/ray_ingest.py's GROUP_DOCUMENTS: one transaction each


def write_documents(folder: Path, n: int) -> Path:
    folder.mkdir()
    rng = random.Random(11)
    for i in range(n):
        (folder / f"log-{i:02d}.txt").write_text(" ".join(rng.choice(WORDS) for _ in range(150)))
    return folder


def ingest(docs: Path, store: str, model: Path, *ray: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "cascade_rag.rag.cli", "ingest", str(docs), "--store", store,
                             "--model", str(model), "--passage-tokens", "128", "--overlap", "16", "--quiet", *ray],
                            cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def ray_workers() -> list[int]:
    """The processes of the IngestWorker actors (Ray names a worker's process after its actor)."""
    found = []
    for entry in Path("/proc").iterdir():
        try:
            if entry.name.isdigit() and b"ray::IngestWorker" in (entry / "cmdline").read_bytes():
                found.append(int(entry.name))
        except OSError:
            pass
    return found


def test_a_killed_ray_worker_loses_nothing_and_the_rerun_completes(tmp_path, tiny_model, redis_url):
    docs, n = write_documents(tmp_path / "docs", 6 * GROUP), 6 * GROUP
    store = RedisDocumentStore(RedisLocation.parse(redis_url))
    driver = ingest(docs, redis_url, tiny_model, "--ray", "--ray-actors", "2")
    try:
        deadline = time.monotonic() + 240
        while store.counts()["documents"] == 0:  # the first group is committed: the others are under way
            assert driver.poll() is None, driver.communicate()[1][-3000:]
            assert time.monotonic() < deadline
            time.sleep(0.02)
        workers = ray_workers()
        assert len(workers) == 2, workers
        os.kill(workers[0], signal.SIGKILL)
        _, err = driver.communicate(timeout=120)
    finally:
        if driver.poll() is None:
            driver.kill()
    assert driver.returncode == 1 and "an ingestion worker died" in err and "run the same command again" in err, err
    committed = store.counts()["documents"]
    assert 0 < committed < n and committed % GROUP == 0  # whole groups only
    with RAG(redis_url, create=False) as rag:
        assert rag.store.chunk_keys() <= set(rag.chunks.sizes())  # every committed passage has its chunk
        generation, ids, _ = rag.store.vectors()
        assert len(rag.store.passages(ids.tolist())) == len(ids) == rag.stats()["passages"]
    rerun = ingest(docs, redis_url, tiny_model)  # the same steps in-process: it finds the workers' chunks
    out, err = rerun.communicate(timeout=300)
    assert rerun.returncode == 0, err
    assert f"({n - committed} new, 0 updated, {committed} unchanged)" in out, out
    with RAG(redis_url, create=False) as rag:
        assert rag.check() == [] and rag.stats()["documents"] == n


def test_a_ray_ingestion_checks_the_limits_before_it_writes_anything(tmp_path, tiny_model, redis_url):
    """The limits of the in-process ingestion, on the passages the actors make: refused naming the document and
    the flag, with nothing written (no row, no chunk, no manifest)."""
    from cascade_rag.rag.cli_options import read_inputs
    from cascade_rag.rag.ingest import Fields
    from cascade_rag.rag.ingest_limits import IngestLimits, LimitExceeded
    from cascade_rag.rag.options import RAGOptions
    from cascade_rag.rag.ray_ingest import ingest_with_ray
    from cascade_rag.rag.redis_backend import RedisChunkBackend
    docs = write_documents(tmp_path / "docs", 3)
    options = RAGOptions(model=tiny_model, passage_tokens=128, overlap=16,
                         ingest_limits=IngestLimits(max_document_passages=1))
    with pytest.raises(LimitExceeded, match=r"document 'log-00.txt' would make \d+ passages.*--max-document-passages"):
        ingest_with_ray(redis_url, read_inputs([docs], Fields()), options, None, actors=1, collection="logs")
    location = RedisLocation.parse(redis_url)
    store = RedisDocumentStore(location)
    assert store.counts() == {"documents": 0, "passages": 0, "tokens": 0} and store.manifest() is None
    assert RedisChunkBackend(location).sizes() == {} and not store.is_writer


def test_an_all_or_nothing_ray_ingestion_into_a_collection(tmp_path, tiny_model, redis_url, capsys):
    """`--collection logs --all-or-nothing` on Ray: a worker killed in the middle commits nothing; the re-run
    (in-process) fills the collection alone, its chunks keyed in it."""
    from cascade_rag.rag.cli import main as cli_main
    from cascade_rag.rag.redis_backend import RedisChunkBackend
    docs, n = write_documents(tmp_path / "docs", 4 * GROUP), 4 * GROUP
    location = RedisLocation.parse(redis_url)
    store, blobs = RedisDocumentStore(location), RedisChunkBackend(location)
    driver = ingest(docs, redis_url, tiny_model, "--ray", "--ray-actors", "2", "--collection", "logs",
                    "--all-or-nothing")
    try:
        deadline = time.monotonic() + 240
        while len(blobs.sizes()) < 2 * GROUP:  # groups are built, none committed
            assert driver.poll() is None, driver.communicate()[1][-3000:]
            assert time.monotonic() < deadline
            time.sleep(0.02)
        os.kill(ray_workers()[0], signal.SIGKILL)
        _, err = driver.communicate(timeout=120)
    finally:
        if driver.poll() is None:
            driver.kill()
    assert driver.returncode == 1 and "0 documents were committed" in err, err
    assert store.counts() == {"documents": 0, "passages": 0, "tokens": 0}
    rerun = ingest(docs, redis_url, tiny_model, "--collection", "logs", "--all-or-nothing")
    out, err = rerun.communicate(timeout=300)
    assert rerun.returncode == 0 and f"({n} new, 0 updated, 0 unchanged)" in out, err
    assert store.counts(frozenset(["logs"]))["documents"] == n
    assert store.counts(frozenset(["default"]))["documents"] == 0
    with RAG(redis_url, model=tiny_model, create=False) as rag:
        assert rag.check() == []
        passages = rag.store.passages(rag.store.passage_ids("logs").tolist())
        assert {p.chunk_key for p in passages.values()} == {rag.provider.key(p.token_ids, "logs")
                                                            for p in passages.values()}
    capsys.readouterr()
    assert cli_main(["list", "--store", redis_url, "--collection", "logs"]) == 0
    assert capsys.readouterr().out.count("\n") == n
