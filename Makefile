# Two commands on a fresh machine: `make test` and `make demo` (each sets everything up first, from the lock).
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
LATEST := .venv-latest
LOCK := requirements.lock
# torch's build depends on the machine, so it is installed apart from the lock, at an exact version: the CPU
# build from PyTorch's CPU index by default (its dependencies come from the lock). On a CUDA machine
# `make TORCH_SPEC= ...` keeps the installed torch.
TORCH_SPEC ?= torch==2.13.0+cpu
TORCH_INDEX ?= https://download.pytorch.org/whl/cpu
# where `make lock` finds that build of torch to resolve its dependencies (a find-links page or a folder)
TORCH_LINKS ?= https://download.pytorch.org/whl/torch/
# the lock is resolved for the Python of the Dockerfile and CI, with the Triton that torch 2.13.0's CUDA build
# requires, so that one lock serves the CPU and the GPU images
LOCK_PYTHON := 3.11
LOCK_CONSTRAINTS := torch==2.13.0+cpu triton==3.7.1

.PHONY: setup test test-latest demo bench proto lock clean redis-server

setup: $(VENV)/.installed redis-server

# The tests of the shared store start a real redis-server on 127.0.0.1 (tests/redis_server.py). Where it is missing,
# Debian's package is installed when this runs as root with apt-get; elsewhere install it yourself (the tests that
# need it are skipped, saying so).
redis-server:
	@command -v redis-server >/dev/null || { \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends redis-server; \
	  else \
	    echo "warning: redis-server is missing and cannot be installed here (not root, or no apt-get): install it"; \
	  fi; }

$(VENV)/.installed: $(LOCK) pyproject.toml
	$(PYTHON) -c 'import sys; v = "%d.%d" % sys.version_info[:2]; v == "$(LOCK_PYTHON)" or print( \
	  f"warning: $(LOCK) is resolved for Python $(LOCK_PYTHON), this is {v}; if it fails, use make test-latest")'
	$(PYTHON) -m venv $(VENV)
	$(if $(TORCH_SPEC),$(PY) -m pip install -q --no-deps --index-url $(TORCH_INDEX) '$(TORCH_SPEC)')
	$(PY) -m pip install -q -r $(LOCK)
	$(PY) -m pip install -q --no-deps -e .
	touch $@

test: setup
	$(PY) -m pytest -q -ra

# The newest versions pyproject.toml allows (torch as TORCH_SPEC), in a separate environment: drift in a
# dependency shows here before a user meets it.
test-latest:
	rm -rf $(LATEST)
	$(PYTHON) -m venv $(LATEST)
	$(if $(TORCH_SPEC),$(LATEST)/bin/python -m pip install -q --no-deps --index-url $(TORCH_INDEX) '$(TORCH_SPEC)')
	$(LATEST)/bin/python -m pip install -q -e '.[dev]'
	$(LATEST)/bin/python -m pip list --format=freeze > $(LATEST)/versions.txt
	$(LATEST)/bin/python -m pytest -q -ra

demo: setup
	$(VENV)/bin/cascade-rag demo

bench: setup
	$(VENV)/bin/cascade-rag bench

proto: setup
	$(PY) -m cascade_rag.rag.proto_gen.generate

# Regenerates the lock from pyproject.toml (exact versions and hashes of everything but torch).
lock: setup
	@mkdir -p build
	printf '%s\n' $(LOCK_CONSTRAINTS) > build/lock-constraints.txt
	$(VENV)/bin/uv pip compile pyproject.toml --extra dev --generate-hashes --no-emit-package torch \
	  --python-version $(LOCK_PYTHON) --python-platform x86_64-manylinux_2_28 --find-links $(TORCH_LINKS) \
	  -c build/lock-constraints.txt -o $(LOCK)

clean:
	rm -rf $(VENV) $(LATEST) build *.egg-info
