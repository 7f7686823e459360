# Two entry points (see README.md): `make demo` runs the main job end to end on generated
# logs, `make test` runs the test suite. Both create and fill .venv first if needed.

PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
DEMO := demo
# Keras 2 (tf-keras), which TFX 1.16, TF-MOT 0.8 and TF Serving's signatures expect.
export TF_USE_LEGACY_KERAS := 1
# tfx 1.16 declares Requires-Python <3.11 although its whole stack has 3.11 wheels.
export PIP_IGNORE_REQUIRES_PYTHON := 1

.PHONY: install demo test test-fast lint format clean-demo

install: $(VENV)/.installed

$(VENV)/.installed: setup.py pyproject.toml constraints.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade "pip>=24"
	$(BIN)/python -m pip install --quiet -c constraints.txt -e '.[test]'
	touch $@

# Small built-in data: 20k impressions over 4 days (the last one is held out), hashed id
# tables scaled down to match; the mask search may choose only rounds at least 50% sparse.
demo: install
	rm -rf $(DEMO)
	$(BIN)/lt4rec generate --out $(DEMO)/logs --rows 20000 --days 4 --seed 0
	$(BIN)/lt4rec pipeline run --data-root $(DEMO)/logs --pipeline-root $(DEMO)/pipeline \
		--serving-dir $(DEMO)/serving --table-scale 0.05 --min-sparsity 0.5

# Tests run on one worker per core, at most 4 (pytest-xdist; each worker holds TensorFlow and
# its pipelines, 2-4 GB); each module runs on one worker, the modules with e2e tests first
# (tests/conftest.py).
WORKERS ?= $(shell n=$$(nproc 2>/dev/null || echo 2); echo $$(( n < 4 ? n : 4 )))
PYTEST := $(BIN)/python -m pytest -q -n $(WORKERS) --dist loadfile --no-loadscope-reorder

# Everything, as CI runs it: the linter, then every test (whole pipelines, clusters, servers).
test: lint
	$(PYTEST)

# The edit-test loop: unit tests only (no e2e or slow ones), a few minutes.
test-fast: install
	$(PYTEST) -m "not e2e and not slow"

lint: install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

# Rewrites the code in the house style (what `make lint` checks).
format: install
	$(BIN)/ruff check --fix .
	$(BIN)/ruff format .

clean-demo:
	rm -rf $(DEMO)
