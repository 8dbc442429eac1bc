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

# The whole cappy-mini rebuild on this CPU (hours; every step resumes: rerun after a kill continues).
# Gemma 3 270M answers a seeded sample of 700 free-text pretraining prompts (5 candidates each, about 20 min);
# its candidates join the template pairs with Rouge-L labels.
MINI := runs/mini
cappy-mini: $(STAMP)
	$(BIN)/cappy data prompts configs/mixtures/offline.yaml --out $(MINI)/gen_prompts.jsonl --free-text-only \
		--max-examples 60 --sample 700 --no-progress
	$(BIN)/cappy generate --input $(MINI)/gen_prompts.jsonl --out $(MINI)/gemma_gens.jsonl --backend llamacpp \
		--recipe quick --seed 0 --n-threads 2 --no-progress
	$(BIN)/cappy data build configs/mixtures/offline.yaml --out runs/data/mini --generations $(MINI)/gemma_gens.jsonl \
		--no-progress
	$(BIN)/cappy data split runs/data/mini --out $(MINI) --cap super_glue/boolq=25000 \
		--cap trivia_qa/rc.wikipedia.nocontext=30000 --cap nq_open=25000
	$(BIN)/cappy train configs/pretrain_mini.yaml --train $(MINI)/train.parquet --dev $(MINI)/dev.jsonl \
		--output-dir $(MINI)/run2
	$(BIN)/cappy export $(MINI)/run2/best --out src/cappy/models/cappy-mini --dtype float16 --card docs/cappy-mini.md
