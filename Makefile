# `make demo` and `make test` each create .venv and install what they need.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-$(shell cat setup.py | cksum | cut -d' ' -f1)

.PHONY: demo test test-all test-faults bench study venv fixtures clean

$(STAMP): setup.py
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e ".[test]"
	touch $@

venv: $(STAMP)

demo: $(STAMP)
	$(BIN)/t5scale demo

test: $(STAMP)
	$(BIN)/python -m pytest -q tests

# Also the slow tests (compiling large presets ahead of time).
test-all: $(STAMP)
	$(BIN)/python -m pytest -q -m "slow or not slow" tests

# The slow fault-injection cases (20 kill -9 over one run); CI runs them after `make test`.
test-faults: $(STAMP)
	$(BIN)/python -m pytest -q -m "faults and slow" tests/faults

# Benchmarks print ratios measured in one run (t5scale vs transformers/PyTorch, needs the [hf] extra); they run
# one after another: never run two at once, or next to tests, on a small machine. See benchmarks/README.md.
bench: $(STAMP)
	# torch first, pinned: a wheel of this version is at hand on the CPU machines; a bare range pulls a CUDA build.
	$(BIN)/python -c "import torch" 2>/dev/null || $(BIN)/pip install --quiet torch==2.13.0
	$(BIN)/pip install --quiet -e ".[hf]"
	$(BIN)/python benchmarks/run_all.py

# The CPU-scale scaling study (docs/scaling.md): a sweep on the embedded corpus, its table, frontiers, curves and
# fit, in runs/study. Rerunning skips finished runs.
study: $(STAMP)
	$(BIN)/t5scale sweep --gin_file=sweeps/study.gin
	$(BIN)/t5scale pareto runs/study --cost params_non_embedding,flops,step_time
	$(BIN)/t5scale curves runs/study --target_loss 6.0
	$(BIN)/t5scale fit runs/study --x params_non_embedding

# Regenerate the Hugging Face parity fixtures (needs the [hf] extra: torch + transformers).
fixtures: $(STAMP)
	$(BIN)/pip install --quiet -e ".[hf]"
	$(BIN)/python scripts/make_hf_fixtures.py tests/fixtures/hf

clean:
	rm -rf $(VENV) .pytest_cache
