# perfnet developer commands. `make demo` and `make test` work from a fresh clone:
# both create the virtual environment first when it is missing.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: setup demo test bench lint weights clean

setup: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet torch==2.13.0
	$(BIN)/python -m pip install --quiet -e ".[dev]"
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/perfnet demo --out demo-output

test: $(STAMP)
	$(BIN)/python -m pytest -q -n 2 tests

bench: $(STAMP)
	$(BIN)/python benchmarks/run_all.py

lint: $(STAMP)
	$(BIN)/ruff check src tests benchmarks tools
	$(BIN)/ruff format --check src tests benchmarks tools

# retrain the bundled CT and MR weights from scratch (~5 h on 2 cores: CT 90 min and MR 70 min of training, then the CT scale head ~25 min and each core calibration ~12–25 min; the specialists ct-moving and mr-moving ~35 min each after their primary; see src/perfnet/weights/*.md)
weights: $(STAMP)
	$(BIN)/python tools/train_weights.py ct
	$(BIN)/python tools/train_weights.py ct-moving
	$(BIN)/python tools/train_weights.py mr
	$(BIN)/python tools/train_weights.py mr-moving

clean:
	rm -rf $(VENV) demo-output .pytest_cache .ruff_cache
