# Two commands on a fresh machine: `make test` and `make demo` (each sets everything up first).
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
# The CPU build of torch; CUDA machines already have torch and can set TORCH_SPEC= to keep theirs.
TORCH_SPEC ?= torch==2.13.0

.PHONY: setup test demo bench proto clean

setup: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(if $(TORCH_SPEC),$(PY) -m pip install -q $(TORCH_SPEC))
	$(PY) -m pip install -q -e '.[dev]'
	touch $@

test: setup
	$(PY) -m pytest -q -ra

demo: setup
	$(VENV)/bin/cascade-rag demo

bench: setup
	$(VENV)/bin/cascade-rag bench

proto: setup
	$(PY) -m rag.proto_gen.generate

clean:
	rm -rf $(VENV) build *.egg-info
