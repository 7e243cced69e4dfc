# The README's commands. `make run` and `make test` each set everything up on a fresh machine first.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
PORT   ?= 7860

.PHONY: setup run test lint format eval train load bench chroma browser strace clean

$(STAMP): pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	# torch first and pinned: this version resolves to the local CPU build, a bare `torch` to a CUDA one.
	$(BIN)/pip install --quiet torch==2.13.0
	$(BIN)/pip install --quiet -c constraints.txt -e ".[dev]"
	touch $(STAMP)

setup: $(STAMP)

run: setup  ## build the index if it is missing, then serve the web chat on http://127.0.0.1:7860
	$(BIN)/rag serve --port $(PORT)

test: setup lint browser strace  ## lint, type-check and run the whole test suite
	$(BIN)/pytest

browser:  ## Debian's chromium for the browser tests (Playwright drives it; it downloads nothing)
	@[ -x /usr/bin/chromium ] || { \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	    apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q chromium; \
	  else echo "Browser tests need Debian's chromium: sudo apt-get install chromium"; fi; }

strace:  ## Debian's strace for tests/test_offline.py (it watches every connection at the OS level)
	@command -v strace >/dev/null || { \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	    apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q strace; \
	  else echo "The offline test needs Debian's strace: sudo apt-get install strace"; fi; }

lint: setup
	$(BIN)/ruff check rag tests evals app.py
	$(BIN)/ruff format --check rag tests evals app.py
	$(BIN)/mypy rag app.py tests evals

format: setup
	$(BIN)/ruff format rag tests evals app.py
	$(BIN)/ruff check --fix rag tests evals app.py

clean:
	rm -rf .rag_index .pytest_cache .mypy_cache .ruff_cache build *.egg-info

eval: setup  ## every question set (shipped, reworded, ../shared/data/wiki-squad2, EVAL_ARGS="--set N=Q:C"), ours beside the LangChain peer, with risk-coverage curves
	$(BIN)/python -m evals.run $(EVAL_ARGS)

train: setup  ## fine-tune the answer reranker on ../shared/data/squad11-train, then fit its confidence (~40 min on 2 cores)
	$(BIN)/python -m evals.train_reranker $(TRAIN_ARGS)
	$(BIN)/python -m evals.fit_confidence

load: setup  ## 20 concurrent chat sessions x 10 questions against a local `rag serve` (loopback only)
	$(BIN)/python -m evals.load

CHROMA_PORT ?= 8000
chroma: setup  ## a Chroma server on 127.0.0.1 (use it with RAG_CHROMA_URL=http://127.0.0.1:$(CHROMA_PORT))
	$(BIN)/chroma run --path .chroma-server --host 127.0.0.1 --port $(CHROMA_PORT)

bench: setup  ## speed, memory and hit@5 at 5 / 300 / 3,000 articles, ours beside the LangChain peer
	$(BIN)/python -m evals.bench $(BENCH_ARGS)
