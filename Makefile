# Two commands on a fresh machine: `make demo` and `make test`. Both bootstrap .venv.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
BUF_VERSION := 1.75.0
BUF := .tools/node_modules/.bin/buf
PROTOS := $(shell find proto -name '*.proto')

.PHONY: install demo test test-slow lint-proto proto bench clean

install: $(STAMP)

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	# The CPU wheel first, so nothing below resolves torch to a multi-GB CUDA build.
	$(PY) -m pip install -q torch==2.13.0
	# The Spark extra too: the suite checks the Spark engine against polars (tests/evaluators/spark).
	$(PY) -m pip install -q -e '.[dev,spark]'
	touch $@

$(BUF):
	npm install --silent --no-audit --no-fund --prefix .tools @bufbuild/buf@$(BUF_VERSION)

lint-proto: $(BUF)
	$(BUF) lint
	$(BUF) format -d --exit-code

# Regenerate the committed Python stubs (tests/test_generated_stubs.py fails when they are stale).
proto: $(STAMP)
	$(PY) -m grpc_tools.protoc -Iproto --python_out=. --pyi_out=. --grpc_python_out=. $(PROTOS)

demo: $(STAMP)
	$(VENV)/bin/recsys-rl demo

test: $(STAMP) lint-proto
	$(VENV)/bin/ruff check -q .
	$(PY) -m pytest -q

test-slow: $(STAMP)
	$(PY) -m pytest -q -m slow

bench: $(STAMP)
	$(PY) -m bench.run

clean:
	rm -rf $(VENV) .tools
