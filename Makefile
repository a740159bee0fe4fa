# Two commands do all set-up on a fresh machine: `make demo` and `make test`.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: install demo test test-fast lint check-lint check-format check-types bench clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --upgrade pip

# torch is pinned before the package so a CPU wheel is used (an unpinned torch pulls
# gigabytes of CUDA packages); the package itself declares torch>=2.4.
$(STAMP): $(BIN)/python pyproject.toml
	$(BIN)/pip install torch==2.13.0
	$(BIN)/pip install -e ".[test,cssi,dask]"
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(BIN)/scfm-audit demo --out demo_output

# Everything (CI runs this), on all cores; a test file stays on one worker (--dist
# loadfile) so its module fixtures are built once. The 15 slowest tests are printed.
PYTEST_PARALLEL := -n auto --dist loadfile --durations=15

test: $(STAMP)
	$(BIN)/python -m pytest -q $(PYTEST_PARALLEL)

# The edit loop: without the tests marked slow (training, calibration replicates, the
# analysis contract matrix, whole audits run end to end in subprocesses).
test-fast: $(STAMP)
	$(BIN)/python -m pytest -q -m "not slow" $(PYTEST_PARALLEL)

# The static checks: CI runs each after the tests, .pre-commit-config.yaml on every
# commit. `make lint` runs all three, going on past a failing one (-k).
lint:
	$(MAKE) -k check-lint check-format check-types

check-lint: $(STAMP)
	$(BIN)/ruff check src tests benchmarks

check-format: $(STAMP)
	$(BIN)/ruff format --check src tests benchmarks scripts examples

# mypy's files and strictness are configured in pyproject.toml ([tool.mypy])
check-types: $(STAMP)
	$(BIN)/mypy

# Every benchmark of the README's table (several take minutes; differential_expression
# simulates a 300,000-cell screen).
BENCHMARKS := auroc coexpression attention_extraction accumulation head_ablation \
	calibration incremental_value differential_expression de_peers dask_overhead \
	gpu_extraction demo_time
# a benchmark's arguments under make bench: without a GPU the extraction runs its CPU size
BENCH_ARGS_gpu_extraction := $(if $(shell nvidia-smi -L 2>/dev/null),,--small)

# the DE peers (scanpy's, illico, hpdex, crispyx, pdex) are the bench extra
bench: $(STAMP)
	$(BIN)/pip install -e ".[bench]"
	set -e; $(foreach b,$(BENCHMARKS),echo "== benchmarks/$(b).py"; \
		$(BIN)/python benchmarks/$(b).py $(BENCH_ARGS_$(b));)

clean:
	rm -rf $(VENV) demo_output .pytest_cache .mypy_cache
