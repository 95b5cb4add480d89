# Two commands on a fresh machine:  `make demo` (the main job: chunk_text) and `make test` (the test suite).
# Both create .venv on first use. TORCH pins the CPU build available on our CI machines; any torch >= 2.5 works,
# e.g. `make test TORCH=torch` on a CUDA machine.
PYTHON ?= python3
TORCH ?= torch==2.13.0
VENV := .venv
BIN := $(VENV)/bin

.PHONY: demo demo-train chromium cxx test lint bench bench-peer clean

$(BIN)/hnet: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet "$(TORCH)"
	$(BIN)/pip install --quiet -e ".[test]"
	touch $(BIN)/hnet

# The main job: chunk the bundled samples (English prose, Python source, Chinese) with the bundled model, print the
# chunks and write the HTML view of the English one (every stage's boundaries and the chunks) to chunks.html.
SAMPLES := src/dynamic_chunker/samples
demo: $(BIN)/hnet
	for sample in english.txt python.py chinese.txt; do \
		echo "=== $$sample"; $(BIN)/hnet chunk $(SAMPLES)/$$sample --chunk-size 200 || exit 1; done
	$(BIN)/hnet chunk $(SAMPLES)/english.txt --chunk-size 200 --format html --out chunks.html
	@echo "wrote chunks.html"

# Training demo: check parity with the official implementation, build the English corpus from Debian packages,
# train the tiny 1-stage H-Net for DEMO_MINUTES on this machine, then sample from it.
DEMO_MINUTES ?= 5
demo-train: $(BIN)/hnet
	$(BIN)/hnet verify tests/fixtures/official/tiny_1stage tests/fixtures/official/tiny_2stage
	$(BIN)/hnet data prepare english
	$(BIN)/hnet train configs/tiny_1stage.yaml --max-minutes $(DEMO_MINUTES) --out runs/demo --overwrite
	$(BIN)/hnet generate --model runs/demo --prompt "The kernel" --max-bytes 200 --seed 0

# Headless Chromium for the HTML view's test (Debian packages), installed only if missing, with a CJK font so that
# the Chinese sample's view shows characters instead of empty boxes.
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)
chromium:
	@(command -v chromium >/dev/null 2>&1 || command -v chromium-browser >/dev/null 2>&1) && \
		fc-list :lang=zh 2>/dev/null | grep -q . || \
		($(SUDO) apt-get update && $(SUDO) apt-get install -y chromium fonts-wqy-zenhei)

# A C++ compiler for torch.compile on CPU (compiled training blocks, compiled chunkers), installed only if missing.
cxx:
	@(command -v c++ >/dev/null 2>&1 || command -v g++ >/dev/null 2>&1 || command -v clang++ >/dev/null 2>&1) || \
		($(SUDO) apt-get update && $(SUDO) apt-get install -y g++)

test: $(BIN)/hnet chromium cxx
	$(BIN)/ruff check src tests benchmarks
	$(BIN)/python -m pytest

bench: $(BIN)/hnet
	$(BIN)/python -m benchmarks.train_throughput

# Against the pure-PyTorch peer package on PyPI; it is installed only into its own venv, never into .venv.
PEER ?= h-net-dynamic-chunking==0.5.19
PEER_VENV := .venv-peer
$(PEER_VENV)/peer-installed: pyproject.toml
	$(PYTHON) -m venv $(PEER_VENV)
	$(PEER_VENV)/bin/pip install --quiet "$(TORCH)"
	$(PEER_VENV)/bin/pip install --quiet -e .
	$(PEER_VENV)/bin/pip install --quiet "$(PEER)"
	touch $@

bench-peer: $(PEER_VENV)/peer-installed
	$(PEER_VENV)/bin/python -m benchmarks.peer

clean:
	rm -rf $(VENV) build src/*.egg-info .pytest_cache .ruff_cache
