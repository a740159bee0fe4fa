# Two commands do all set-up on a fresh machine: `make demo` and `make test`.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: install demo test lint bench clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --upgrade pip

# torch is pinned before the package so a CPU wheel is used (an unpinned torch pulls
# gigabytes of CUDA packages); the package itself declares torch>=2.4.
$(STAMP): $(BIN)/python pyproject.toml
	$(BIN)/pip install torch==2.13.0
	$(BIN)/pip install -e ".[test,cssi]"
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(BIN)/scfm-audit demo --out demo_output

test: $(STAMP)
	$(BIN)/python -m pytest -q

lint: $(STAMP)
	$(BIN)/ruff check src tests benchmarks

bench: $(STAMP)
	$(BIN)/pip install -e ".[bench]"
	$(BIN)/python benchmarks/de_peers.py
	$(BIN)/python benchmarks/coexpression.py
	$(BIN)/python benchmarks/auroc.py
	$(BIN)/python benchmarks/attention_extraction.py
	$(BIN)/python benchmarks/accumulation.py

clean:
	rm -rf $(VENV) demo_output .pytest_cache
