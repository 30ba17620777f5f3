"""Issue 34, finding 6 (and 3 on a real full disk): a server whose data directory is a small tmpfs (its own mount
namespace, `unshare`) answers RESOURCE_EXHAUSTED when the disk fills in the middle of an IngestDocuments call,
commits nothing of it and leaves no temporary file; the commands that only read work on a read-only data
directory."""
import errno
import os
import shlex
import shutil
import signal
import stat
import subprocess
import sys
import time
from pathlib import Path

import grpc
import pytest

from cascade_rag.engine import DEFAULT_MODE
from cascade_rag.rag.client import Client
from cascade_rag.rag.pipeline import RAG
from cascade_rag.rag.proto_gen import cascade_rag_pb2 as pb
from tests.helpers import ROOT

from .server_helpers import rpc_error

ENV = dict(os.environ, CASCADE_RAG_TOKEN="")


def namespaces_work() -> bool:
    if not shutil.which("unshare"):
        return False
    probe = subprocess.run(["unshare", "-rm", "sh", "-c", "mount -t tmpfs -o size=1m tmpfs /mnt 2>/dev/null || "
                            "mount -t tmpfs -o size=1m tmpfs /tmp"], capture_output=True, timeout=30)
    return probe.returncode == 0


needs_namespaces = pytest.mark.skipif(not namespaces_work(), reason="needs unshare -rm and tmpfs mounts")


def documents(n: int, word: str) -> list[dict]:
    return [{"id": f"{word}{i}", "title": f"Log {i}", "text": " ".join(
        f"Line {j} of the {word} {i} log says the tide number {j} is {j * 7}." for j in range(6))} for i in range(n)]


@needs_namespaces
def test_a_disk_that_fills_mid_call_commits_nothing_leaves_no_temporary_file_and_says_so(tmp_path, tiny_model):
    mount = tmp_path / "disk"
    mount.mkdir()
    serve = [sys.executable, "-m", "cascade_rag.rag.cli", "serve", "--data-dir", str(mount / "data"), "--model",
             str(tiny_model), "--port", "0", "--disk-reserve", "0", "--drain-seconds", "1"]
    script = f"mount -t tmpfs -o size=4m tmpfs {mount} && exec " + shlex.join(serve)
    log = open(tmp_path / "server.log", "w")
    process = subprocess.Popen(["unshare", "-rm", "sh", "-c", script], cwd=ROOT, env=ENV, stdout=subprocess.PIPE,
                               stderr=log, text=True)
    try:
        line = process.stdout.readline()
        assert "serving on 127.0.0.1:" in line, (tmp_path / "server.log").read_text()
        disk = Path(f"/proc/{process.pid}/root") / str(mount).lstrip("/")  # the tmpfs, seen from its namespace
        with Client(line.split("serving on ")[1].split()[0]) as client:
            assert client.ingest(documents(1, "first")).passages > 0
            chunks, before = disk / "data" / "chunks", len(list((disk / "data" / "chunks").iterdir()))
            call = client.documents.IngestDocuments.future(iter([pb.IngestDocumentsRequest(
                documents=[pb.Document(**d) for d in documents(24, "full")])]))
            while len(list(chunks.iterdir())) <= before + 1 and not call.done():
                time.sleep(0.001)
            process.send_signal(signal.SIGSTOP)  # the call has written its first chunks: the disk fills now
            try:
                with open(disk / "filler", "wb") as filler:
                    while True:
                        filler.write(b"\0" * 4096)
                        filler.flush()
            except OSError as exc:
                assert exc.errno == errno.ENOSPC
            finally:
                process.send_signal(signal.SIGCONT)
            error = rpc_error(call.result)
            assert error.code() == grpc.StatusCode.RESOURCE_EXHAUSTED, error
            assert "full" in error.details() and "nothing of this" in error.details(), error.details()
            assert [d.id for d in client.list_documents().documents] == ["first0"]
            assert not [p for p in disk.rglob("*") if p.name.endswith(".tmp")]
            (disk / "filler").unlink()
            assert len(client.ingest(documents(24, "full")).results) == 24  # room again: the call goes through
    finally:
        process.terminate()
        process.wait(30)
        log.close()
    assert "Traceback" not in (tmp_path / "server.log").read_text()


def read_only(command: list[str], directory: Path) -> subprocess.CompletedProcess:
    """`command` run with `directory` read-only: a read-only bind mount for root (whom permissions do not stop),
    the write permissions taken away otherwise."""
    if os.geteuid() == 0:
        if not namespaces_work():
            pytest.skip("root needs unshare -rm to make a directory read-only")
        script = f"mount --bind {directory} {directory} && mount -o remount,bind,ro {directory} && exec " + \
            shlex.join(map(str, command))
        return subprocess.run(["unshare", "-rm", "sh", "-c", script], cwd=ROOT, env=ENV, capture_output=True,
                              text=True, timeout=300)
    modes = {p: p.stat().st_mode for p in [directory, *directory.rglob("*")]}
    for path, mode in modes.items():
        path.chmod(mode & ~(stat.S_IWUSR | stat.S_IWGRP | stat.S_IWOTH))
    try:
        return subprocess.run(command, cwd=ROOT, env=ENV, capture_output=True, text=True, timeout=300)
    finally:
        for path, mode in modes.items():
            path.chmod(mode)


def test_ask_and_list_work_on_a_read_only_data_directory(tmp_path, tiny_model):
    data = tmp_path / "data"
    with RAG(data, model=tiny_model, passage_tokens=48, overlap=8) as rag:
        rag.ingest(documents=documents(2, "harbour"))
    cli = [sys.executable, "-m", "cascade_rag.rag.cli"]
    listed = read_only([*cli, "list", "--data-dir", data], data)
    assert listed.returncode == 0 and "harbour0\t" in listed.stdout, listed.stderr
    asked = read_only([*cli, "ask", "What does the harbour log say?", "--data-dir", data, "--model", tiny_model,
                       "--max-tokens", "3", "--top-k", "1"], data)
    assert asked.returncode == 0 and f"Timings ({DEFAULT_MODE})" in asked.stdout, asked.stderr
    assert "chunks from: 1 disk" in asked.stdout and "readonly" not in asked.stderr
