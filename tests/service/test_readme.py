"""Every code block of README.md runs: the Python ones as they are, the serving one with a scratch data
directory and a free port, the Compose one through the Compose binary, the quick start through make."""
import os
import re
import socket
import subprocess
import sys
from pathlib import Path

import pytest
from cascade_rag.engine import DEFAULT_MODE
from tests.helpers import ROOT

BIN = Path(sys.executable).parent


def blocks(language: str) -> list[str]:
    return re.findall(rf"^```{language}\n(.*?)^```", (ROOT / "README.md").read_text(), flags=re.M | re.S)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_readme_has_the_blocks_these_tests_run():
    bash = blocks("bash")
    assert len(blocks("python")) == 2 and len(bash) == 3  # the engine API, the engine options
    assert bash[0].splitlines() == ["make demo   # sets everything up, then runs the demo on the embedded models",
                                    "make test   # sets everything up, then runs the test suite"]


@pytest.mark.slow
@pytest.mark.parametrize("index", range(len(blocks("python"))))
def test_python_block_runs(index, tmp_path):
    result = subprocess.run([sys.executable, "-c", blocks("python")[index]], cwd=tmp_path, capture_output=True,
                            text=True, timeout=600, env={**os.environ, "HF_HUB_OFFLINE": "1"})
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.strip(), "the snippet printed nothing"


@pytest.mark.slow
def test_serving_block_runs(tmp_path):
    port = free_port()
    script = blocks("bash")[1].replace("./cascade-data", str(tmp_path / "data")).replace("50051", str(port))
    script = script.replace("samples/docs", str(ROOT / "samples" / "docs"))
    # the block leaves the server running; here it is stopped at the end
    script = "set -euo pipefail\ntrap 'kill %1 2>/dev/null || true' EXIT\n" + script
    result = subprocess.run(["bash", "-c", script], cwd=tmp_path, capture_output=True, text=True, timeout=900,
                            env={**os.environ, "PATH": f"{BIN}:{os.environ['PATH']}"})
    assert result.returncode == 0, result.stderr[-3000:]
    assert "3 documents ingested" in result.stdout
    assert "1. company.md  [Brightwater Ferries]" in result.stdout and f"Timings ({DEFAULT_MODE})" in result.stdout
    assert [line.split("\t")[0] for line in result.stdout.splitlines() if "\t" in line] == \
        ["company.md", "policies.txt", "routes.md"]


def test_compose_block_is_what_the_compose_file_defines():
    """No Docker engine here: the services and profile the block names are checked with the Compose binary
    (tests/service/test_compose.py validates the file itself)."""
    block = blocks("bash")[2].strip()
    assert block == "docker compose up -d && docker compose --profile ingest run --rm ingest"
    compose = ROOT / "docker-compose.yml"
    text = compose.read_text()
    assert "\n  server:\n" in text and "\n  ingest:\n" in text and 'profiles: ["ingest"]' in text


def test_quick_start_targets_install_from_the_lock():
    """`make test` is what CI runs (.ci/run); the demo itself runs in tests/service/test_cli.py. Here: both targets set
    up from the lock and then run what the README says."""
    assert "make test" in (ROOT / ".ci" / "run").read_text()
    env = {k: v for k, v in os.environ.items() if k not in ("MAKEFLAGS", "MAKELEVEL", "MFLAGS")}  # under make test
    result = subprocess.run(["make", "--no-print-directory", "-n", "-B", "demo", "test", "PYTHON=python3"], cwd=ROOT,
                            capture_output=True, text=True, timeout=60, env=env)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert any("pip install -q -r requirements.lock" in line for line in lines)
    assert any("pip install -q --no-deps --index-url https://download.pytorch.org/whl/cpu 'torch==2.13.0+cpu'" in line
               for line in lines)
    assert lines[-2:] == [".venv/bin/cascade-rag demo", ".venv/bin/python -m pytest -q -ra"]


def test_node_client_readme_matches_the_client():
    """examples/node-client/README.md's commands are what the client's header and the suite's node test run."""
    readme = (ROOT / "examples" / "node-client" / "README.md").read_text()
    commands = re.findall(r"^```bash\n(.*?)^```", readme, flags=re.M | re.S)[0].splitlines()
    assert [c.split("#")[0].strip() for c in commands] == \
        ["cd examples/node-client", "npm install", "node client.js --server 127.0.0.1:50051"]
    usage = (ROOT / "examples" / "node-client" / "client.js").read_text().splitlines()[1]
    assert "node client.js [--server 127.0.0.1:50051] [--token TOKEN] [--tls-ca ca.pem] [--proto-dir ../../proto]" \
        in usage
    ignored = subprocess.run(["git", "check-ignore", "examples/node-client/package-lock.json",
                              "examples/node-client/node_modules/x"], cwd=ROOT, capture_output=True, text=True)
    assert ignored.stdout.split() == ["examples/node-client/package-lock.json", "examples/node-client/node_modules/x"]
