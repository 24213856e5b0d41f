# Every target creates .venv and installs what it needs when missing.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo test test-smoke bench lint clean

$(STAMP): pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[test,dev]'
	@touch $(STAMP)

demo: $(STAMP)
	$(BIN)/simpul demo

# SIMPUL_TEST_BROKER chooses the engine: kafka (Apache Kafka, the default) or embedded (Tansu).
# The tests start their own PostgreSQL unless SIMPUL_TEST_PG_URL names one.
SIMPUL_TEST_BROKER ?= kafka
export SIMPUL_TEST_BROKER

test: $(STAMP)
	$(BIN)/simpul schemas check
	$(BIN)/python -m pytest

# The smoke subset (publish -> stored, dedup, dead letter, a join, fan-out, webhook) on Tansu.
test-smoke: $(STAMP)
	SIMPUL_TEST_BROKER=embedded $(BIN)/python -m pytest -m smoke

bench: $(STAMP)
	$(BIN)/python -m pip install --quiet -e '.[bench]'
	$(BIN)/python bench/steps.py
	$(BIN)/python bench/run.py
	$(BIN)/python bench/audit_subject.py

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy simpul streams sinks connectors

clean:
	rm -rf $(VENV) var build *.egg-info
