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
