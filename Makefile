# `make demo` and `make test` each create .venv and install what they need.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-$(shell cat setup.py | cksum | cut -d' ' -f1)

.PHONY: demo test test-all test-faults test-slow bench study compress-study venv fixtures clean

$(STAMP): setup.py
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e ".[test]"
	touch $@

venv: $(STAMP)

demo: $(STAMP)
	$(BIN)/t5scale demo

# Two worker processes (pytest-xdist): 19.7 -> about 12 minutes on this 2-core machine (three workers were no
# faster). Each worker starts with half the tests in file order (a module's fixtures are mostly built once) and
# steals from the other when done; the workers share one compilation cache and vocabulary (tests/conftest.py).
# TEST_JOBS=0 runs in this process (to debug with -s, --pdb).
TEST_JOBS ?= 2
XDIST = $(if $(filter 0,$(TEST_JOBS)),,-n $(TEST_JOBS) --dist worksteal)

test: $(STAMP)
	$(BIN)/python -m pytest -q $(XDIST) tests

# Also the slow tests (compiling large presets ahead of time).
test-all: $(STAMP)
	$(BIN)/python -m pytest -q -m "slow or not slow" tests

# The slow fault-injection cases (20 kill -9 over one run).
test-faults: $(STAMP)
	$(BIN)/python -m pytest -q -m "faults and slow" tests/faults

# Every test kept out of the default run (the 20-kill case, large-preset compiles, multi-process and
# gs:// end-to-end runs); CI runs them after `make test`.
test-slow: $(STAMP)
	$(BIN)/python -m pytest -q -m slow tests

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

# Train Large, Then Compress at CPU scale (docs/compression.md): two sizes pretrained for the same wall-clock on the
# embedded corpus, each fine-tuned on embedded_sst2 (dense, and pruned to 75% while fine-tuning), then compressed
# several ways and evaluated on validation (runs/compress-study/{results.csv,accuracy_vs_bytes.png}) and on 512
# training examples (runs/compress-study/train512/). Rerunning skips finished pretraining and fine-tuning; the
# compression and evaluation are redone. Another repeat:
#   make compress-study CS_DIR=runs/compress-study-seed1 CS_SEED=1
CS_DIR = runs/compress-study
CS_SEED = 0
# The sweep names its runs <shape>-time<budget>-seed<k>: keep 150 equal to sweeps/compress_study.gin's time_budget_s.
CS_RUNS = $(addsuffix -time150-seed$(CS_SEED),tiny-nl2-dm128-ff512-kv32 tiny-nl4-dm192-ff768-kv48)
CS_SETTINGS = bits=8 bits=8,groups=attention+mlp bits=4 bits=4,groups=attention+mlp bits=2 \
	bits=8,sparsity=0.5 bits=8,sparsity=0.75 bits=4,sparsity=0.5
compress-study: $(STAMP)
	$(BIN)/t5scale sweep --gin_file=sweeps/compress_study.gin --gin.SWEEP_DIR="'$(CS_DIR)/pretrain'" \
	  --gin.sweep_config.seeds="[$(CS_SEED)]"
	set -e; for run in $(CS_RUNS); do \
	  $(BIN)/t5scale finetune --gin_file=runs/compress_study_finetune.gin --gin.train_config.seed=$(CS_SEED) \
	    --gin.INITIAL_CHECKPOINT_PATH="'$(CS_DIR)/pretrain/$$run'" --gin.MODEL_DIR="'$(CS_DIR)/finetune/$$run'"; \
	  $(BIN)/t5scale finetune --gin_file=runs/compress_study_finetune.gin --gin_file=runs/prune.gin \
	    --gin.train_config.seed=$(CS_SEED) \
	    --gin.PRUNE_SPARSITY=0.75 --gin.PRUNE_END_STEP=100 --gin.PRUNE_EVERY=10 \
	    --gin.INITIAL_CHECKPOINT_PATH="'$(CS_DIR)/pretrain/$$run'" --gin.MODEL_DIR="'$(CS_DIR)/finetune-pruned/$$run'"; \
	done
	$(BIN)/t5scale compress --checkpoint $(addprefix $(CS_DIR)/finetune/,$(CS_RUNS)) --task embedded_sst2 \
	  --output_dir $(CS_DIR)/compress --settings $(CS_SETTINGS)
	$(BIN)/t5scale compress --checkpoint $(addprefix $(CS_DIR)/finetune-pruned/,$(CS_RUNS)) --task embedded_sst2 \
	  --output_dir $(CS_DIR)/compress-pruned --settings bits=8,sparsity=0.75 bits=4,sparsity=0.75
	# The same on the first 512 training examples: seen in fine-tuning, but 7.5x validation's 68 (less noise).
	$(BIN)/t5scale compress --checkpoint $(addprefix $(CS_DIR)/finetune/,$(CS_RUNS)) --task embedded_sst2 \
	  --split train --num_examples 512 --output_dir $(CS_DIR)/compress-train512 --settings $(CS_SETTINGS)
	$(BIN)/t5scale compress --checkpoint $(addprefix $(CS_DIR)/finetune-pruned/,$(CS_RUNS)) --task embedded_sst2 \
	  --split train --num_examples 512 --output_dir $(CS_DIR)/compress-pruned-train512 \
	  --settings bits=8,sparsity=0.75 bits=4,sparsity=0.75
	$(BIN)/python scripts/compress_study.py $(CS_DIR)

# Regenerate the Hugging Face parity fixtures (needs the [hf] extra: torch + transformers).
fixtures: $(STAMP)
	$(BIN)/pip install --quiet -e ".[hf]"
	$(BIN)/python scripts/make_hf_fixtures.py tests/fixtures/hf

clean:
	rm -rf $(VENV) .pytest_cache
