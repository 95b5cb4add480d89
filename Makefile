# Two commands on a fresh machine:  `make demo` (the main job) and `make test` (the test suite).
# Both create .venv on first use. TORCH pins the CPU build available on our CI machines; any torch >= 2.5 works,
# e.g. `make test TORCH=torch` on a CUDA machine.
PYTHON ?= python3
TORCH ?= torch==2.13.0
VENV := .venv
BIN := $(VENV)/bin

.PHONY: demo test lint bench clean

$(BIN)/hnet: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet "$(TORCH)"
	$(BIN)/pip install --quiet -e ".[test]"
	touch $(BIN)/hnet

demo: $(BIN)/hnet
	$(BIN)/hnet demo

test: $(BIN)/hnet
	$(BIN)/ruff check src tests benchmarks
	$(BIN)/python -m pytest

bench: $(BIN)/hnet
	$(BIN)/python benchmarks/train_throughput.py

clean:
	rm -rf $(VENV) build src/*.egg-info .pytest_cache .ruff_cache
