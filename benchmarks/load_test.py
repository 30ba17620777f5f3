"""Load test: N concurrent clients each send R Query requests (the whole repeated --rounds times); every
request must be answered or rejected with RESOURCE_EXHAUSTED. Starts its own `cascade-rag serve` (over a scratch directory with samples/ ingested) unless
--server is given, samples the server's resident memory, and prints a JSON summary.

    python -m cascade_rag.benchmarks.load_test --clients 32 --requests 10 [--server HOST:PORT --server-pid PID]"""
import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from pathlib import Path

import grpc

from cascade_rag.rag.cli_options import SAMPLES
from cascade_rag.rag.client import Client


def rss_bytes(pid: int, field: str = "VmRSS") -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) * 1024
    return 0


class MemorySampler(threading.Thread):
    def __init__(self, pid: int, every_s: float = 0.2):
        super().__init__(daemon=True)
        self.pid, self.every_s, self.samples, self.stopped = pid, every_s, [], threading.Event()

    def run(self):
        while not self.stopped.is_set():
            try:
                self.samples.append(rss_bytes(self.pid))
            except OSError:
                return
            time.sleep(self.every_s)


def start_server(data_dir: str, max_queue: int, extra: list[str]) -> tuple[subprocess.Popen, str]:
    process = subprocess.Popen([sys.executable, "-m", "cascade_rag.rag.cli", "serve", "--data-dir", data_dir,
                                "--port", "0", "--max-queue", str(max_queue), *extra], stdout=subprocess.PIPE, text=True)
    line = process.stdout.readline()
    if "serving on " not in line:
        raise SystemExit(f"the server did not start: {line!r}")
    return process, line.split("serving on ")[1].split()[0]


def run_clients(address: str, token: str | None, clients: int, requests: int, max_tokens: int,
                timeout: float, pause: float) -> tuple[Counter, list[float]]:
    from cascade_rag.rag.ingest import Document, read_paths
    questions = [json.loads(line)["question"] for line in (SAMPLES / "questions.jsonl").read_text().splitlines()
                 if line]
    outcomes, latencies, lock = Counter(), [], threading.Lock()
    start = threading.Barrier(clients)

    def client(n: int) -> None:
        with Client(address, token) as c:
            start.wait()
            for r in range(requests):
                began = time.perf_counter()
                try:
                    result = None
                    for response in c.query(questions[(n + r) % len(questions)], max_tokens=max_tokens,
                                            timeout=timeout):
                        if response.HasField("result"):
                            result = response.result
                    outcome = "OK" if result is not None else "NO_RESULT"
                except grpc.RpcError as exc:
                    outcome = exc.code().name
                with lock:
                    outcomes[outcome] += 1
                    if outcome == "OK":
                        latencies.append(time.perf_counter() - began)
                time.sleep(pause)

    with Client(address, token) as c:
        if not c.list_documents(page_size=1).total_size:
            c.ingest(d for d in read_paths([SAMPLES / "docs"]) if isinstance(d, Document))
    threads = [threading.Thread(target=client, args=(n,)) for n in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return outcomes, latencies


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m cascade_rag.benchmarks.load_test", description=__doc__.split("\n\n")[0])
    p.add_argument("--server", metavar="HOST:PORT", help="a running server (default: start one)")
    p.add_argument("--server-pid", type=int, help="its process id, to sample its memory")
    p.add_argument("--token", default=os.environ.get("CASCADE_RAG_TOKEN"))
    p.add_argument("--clients", type=int, default=32)
    p.add_argument("--requests", type=int, default=10, help="per client, one after the other")
    p.add_argument("--max-tokens", type=int, default=8)
    p.add_argument("--max-queue", type=int, default=8, help="of the server started here")
    p.add_argument("--rounds", type=int, default=1, help="repeat the load against the same server (memory)")
    p.add_argument("--pause", type=float, default=0.0, help="seconds a client waits between its requests")
    p.add_argument("--timeout", type=float, default=900.0, help="client deadline of each request, seconds")
    p.add_argument("--serve-args", default="", help="more `cascade-rag serve` options for the server started here")
    args = p.parse_args(argv)
    process, scratch = None, None
    if args.server:
        address, pid = args.server, args.server_pid
    else:
        scratch = tempfile.TemporaryDirectory(prefix="cascade-rag-load-")
        process, address = start_server(scratch.name, args.max_queue, args.serve_args.split())
        pid = process.pid
    summary = {"clients": args.clients, "requests_per_round": args.clients * args.requests,
               "max_tokens": args.max_tokens, "pause_s": args.pause, "rounds": []}
    for _ in range(args.rounds):
        rss_before = rss_bytes(pid) if pid else 0
        sampler = MemorySampler(pid) if pid else None
        if sampler:
            sampler.start()
        began = time.perf_counter()
        outcomes, latencies = run_clients(address, args.token, args.clients, args.requests, args.max_tokens,
                                          args.timeout, args.pause)
        round_ = {"outcomes": dict(outcomes), "answered": outcomes["OK"], "rejected": outcomes["RESOURCE_EXHAUSTED"],
                  "other": sum(n for k, n in outcomes.items() if k not in ("OK", "RESOURCE_EXHAUSTED")),
                  "seconds": round(time.perf_counter() - began, 1),
                  "answer_latency_s": {"min": round(min(latencies), 2), "max": round(max(latencies), 2),
                                       "mean": round(sum(latencies) / len(latencies), 2)} if latencies else None}
        if sampler:
            sampler.stopped.set()
            sampler.join()
            round_["server_rss_mib"] = {"before": round(rss_before / 2**20),
                                        "max": round(max(sampler.samples) / 2**20),
                                        "after": round(sampler.samples[-1] / 2**20)}
        summary["rounds"].append(round_)
    if pid:
        summary["server_peak_rss_mib"] = round(rss_bytes(pid, "VmHWM") / 2**20)
    if process is not None:
        summary["server_alive_after_load"] = process.poll() is None
        process.send_signal(signal.SIGTERM)
        summary["server_exit_code"] = process.wait(timeout=120)
        scratch.cleanup()
    print(json.dumps(summary, indent=2))
    crashed = process is not None and not summary["server_alive_after_load"]
    return 1 if any(r["other"] for r in summary["rounds"]) or crashed else 0


if __name__ == "__main__":
    sys.exit(main())
