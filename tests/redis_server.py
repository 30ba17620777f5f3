"""A real redis-server for the tests: started once per session on 127.0.0.1 on a free port (nothing persisted), and
a flushed database for each test. `make setup` installs the binary (Debian's redis-server) where it is missing."""
import shutil
import socket
import subprocess
import time

import pytest

START_S = 20.0


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory) -> str:
    """redis://127.0.0.1:PORT of a redis-server this session started (skipped where the redis client is missing: a
    machine set up for the GPU tests alone)."""
    redis = pytest.importorskip("redis")
    binary = shutil.which("redis-server")
    if binary is None:
        pytest.skip("redis-server is not installed: `make setup` installs it (apt-get install redis-server)")
    folder, port = tmp_path_factory.mktemp("redis"), free_port()
    log = open(folder / "redis.log", "w")
    server = subprocess.Popen([binary, "--bind", "127.0.0.1", "--port", str(port), "--save", "", "--appendonly", "no",
                               "--dir", str(folder)], stdout=log, stderr=subprocess.STDOUT)
    url = f"redis://127.0.0.1:{port}"
    client, deadline = redis.Redis.from_url(url), time.monotonic() + START_S
    while True:
        try:
            client.ping()
            break
        except redis.ConnectionError:
            if server.poll() is not None or time.monotonic() > deadline:
                server.kill()
                raise RuntimeError(f"redis-server did not start: {(folder / 'redis.log').read_text()[-2000:]}")
            time.sleep(0.05)
    client.close()
    yield url
    server.terminate()
    server.wait(10)
    log.close()


@pytest.fixture
def redis_url(redis_server) -> str:
    """The store URL of database 0 of the session's redis-server, emptied for this test."""
    import redis  # the session's server exists: so does the client
    client = redis.Redis.from_url(redis_server)
    client.flushall()
    client.close()
    return f"{redis_server}/0"
