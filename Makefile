# Every target creates .venv and installs what it needs when missing.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo test test-smoke bench lint fuzz clean

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
	$(BIN)/python -m pytest --durations=30

# The smoke subset (publish -> stored, dedup, dead letter, a join, fan-out, webhook) on Tansu.
test-smoke: $(STAMP)
	SIMPUL_TEST_BROKER=embedded $(BIN)/python -m pytest -m smoke

# Quix Streams runs from its own venv: it pins pydantic below the version the tests run on.
RIVALS := .venv-rivals
$(RIVALS)/.installed: pyproject.toml
	@test -x $(RIVALS)/bin/python || $(PYTHON) -m venv $(RIVALS)
	$(RIVALS)/bin/python -m pip install --quiet --upgrade pip
	$(RIVALS)/bin/python -m pip install --quiet -e '.[rivals]'
	@touch $@

bench: $(STAMP) $(RIVALS)/.installed
	$(BIN)/python -m pip install --quiet -e '.[bench]'
	$(BIN)/python bench/steps.py
	SIMPUL_BENCH_RIVAL_PYTHON=$(CURDIR)/$(RIVALS)/bin/python $(BIN)/python bench/run.py $(BENCH_ARGS)
	$(BIN)/python bench/audit_subject.py --rows 20000000 --people 3000000
	$(BIN)/python bench/store_growth.py --sizes 0,20000000 --events 10000

# Coverage-guided fuzzing (atheris), FUZZ_SECONDS per target; `make test` runs 3 s of each.
FUZZ_SECONDS ?= 60
fuzz: $(STAMP)
	@mkdir -p var/fuzz
	@for target in worker filedrop mapping schema json; do \
		echo "fuzzing $$target for $(FUZZ_SECONDS)s"; \
		$(BIN)/python -m tests.fuzz.targets $$target -max_total_time=$(FUZZ_SECONDS) \
			-artifact_prefix=var/fuzz/$$target- > var/fuzz/$$target.log 2>&1; rc=$$?; \
		grep -v '^INFO: Instrumenting' var/fuzz/$$target.log | tail -3; \
		test $$rc -eq 0 || exit 1; \
	done

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy simpul streams sinks connectors
	$(BIN)/mypy --strict simpul streams

clean:
	rm -rf $(VENV) $(RIVALS) var build *.egg-info
