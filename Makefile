# Every target does its own set-up: a fresh machine needs only `make demo` or `make test`.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: setup demo test test-slow lint bench clean cappy-mini lock fuzz

EXTRAS := dev,serve,eval,models,llamacpp
# The versions the suite was last green with (`make lock` refreshes them); every install goes through them.
CONSTRAINTS := constraints.txt

$(STAMP): pyproject.toml $(CONSTRAINTS)
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/pip install -c $(CONSTRAINTS) --upgrade pip
	# torch first: pip takes the local CPU wheel; anything else pulls a multi-GB CUDA build.
	$(BIN)/pip install -c $(CONSTRAINTS) torch==2.13.0
	$(BIN)/pip install -c $(CONSTRAINTS) -e '.[$(EXTRAS)]'
	# PromptSource ships the templates.yaml files; its own dependencies are never imported.
	$(BIN)/pip install -c $(CONSTRAINTS) --no-deps --ignore-requires-python promptsource==0.2.3
	touch $(STAMP)

# Refresh constraints.txt: the newest releases pyproject.toml allows, in a scratch venv (llama-cpp-python builds
# from source, ~10 min). Then `make test` on the new pins and commit constraints.txt with the result.
LOCK_VENV := .venv-lock
lock:
	rm -rf $(LOCK_VENV)
	$(PY) -m venv $(LOCK_VENV)
	$(LOCK_VENV)/bin/pip install --upgrade pip
	$(LOCK_VENV)/bin/pip install torch==2.13.0
	$(LOCK_VENV)/bin/pip install -e '.[$(EXTRAS)]'
	$(LOCK_VENV)/bin/pip install --no-deps --ignore-requires-python promptsource==0.2.3
	( echo "# Pinned by \`make lock\` on $$(date -u +%Y-%m-%d) with $$($(LOCK_VENV)/bin/python -V)."; \
	  $(LOCK_VENV)/bin/pip freeze --all --exclude-editable | sed -E 's/^(torch==[^+]*)\+.*/\1/' | LC_ALL=C sort \
	) > $(CONSTRAINTS).tmp
	mv $(CONSTRAINTS).tmp $(CONSTRAINTS)
	rm -rf $(LOCK_VENV)

setup: $(STAMP)

demo: $(STAMP)
	$(BIN)/python -m cappy.demo

test: $(STAMP)
	$(BIN)/python -m pytest -q --timeout 600

test-slow: $(STAMP)
	$(BIN)/python -m pytest -q -m slow --timeout 1800

# Property-based fuzzing of the HTTP API from its OpenAPI schema (schemathesis, 127.0.0.1 only, bounded).
fuzz: $(STAMP)
	$(BIN)/python -m pytest -q -m slow tests/test_serve_fuzz.py --timeout 900

lint: $(STAMP)
	$(BIN)/ruff check src tests benchmarks scripts
	$(BIN)/ruff format --check src tests benchmarks scripts

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
