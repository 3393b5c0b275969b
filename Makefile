# Quick start: `make run` then `make test` (see README.md).
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: run test bench bench-scale bench-soak fuzz conformance install clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[dev,bench]'
	touch $(STAMP)

install: $(STAMP)

# Install, create the development keys and the demo data once, then serve.
run: $(STAMP)
	$(BIN)/gateway demo setup
	$(BIN)/gateway serve

# Two workers (pytest-xdist), each given a whole test file at a time, so that a file's servers and
# module fixtures stay in one process: most tests wait on a server, a subprocess or the disk (the
# times, one process against two, are in the README's "Tests and benchmarks"). TEST_WORKERS=0 runs
# it in this process alone.
TEST_WORKERS ?= 2
test: $(STAMP)
	$(BIN)/pytest -q -n $(TEST_WORKERS) --dist loadfile

# A longer run of the fuzz suite that `make test` runs briefly (GATEWAY_FUZZ_EXAMPLES per target).
fuzz: $(STAMP)
	GATEWAY_FUZZ_EXAMPLES=$${GATEWAY_FUZZ_EXAMPLES:-2000} $(BIN)/pytest -q tests/integration/test_fuzz.py

# Under 5 minutes once the search's 100,000 DocumentReferences are loaded and the large record built:
# they are kept (var/bench/, and PostgreSQL databases bench_search_100000 and bench_record_1000
# beside GATEWAY_BENCH_POSTGRES_URL's).
bench: $(STAMP)
	$(BIN)/python -m bench

# ITI-67 at 1,000,000 DocumentReferences. Loading both backends together takes about 11 minutes on this
# machine; the databases are kept (var/bench-scale/, and a PostgreSQL database bench_scale_1000000
# beside GATEWAY_BENCH_POSTGRES_URL's), so a later run only measures.
bench-scale: $(STAMP)
	$(BIN)/python -m bench scale

# A sustained load (BENCH_SOAK_SECONDS, default 300, on each backend): whether rate, latency, memory
# and files hold over minutes (bench/soak.py).
bench-soak: $(STAMP)
	$(BIN)/python -m bench soak

# The conformance kit against the gateway `make run` serves (reports in var/conformance/).
GATEWAY_HTTP_PORT ?= 8080
GATEWAY_MLLP_PORT ?= 2575
FHIR_BASE ?= http://127.0.0.1:$(GATEWAY_HTTP_PORT)/fhir
MLLP ?= 127.0.0.1:$(GATEWAY_MLLP_PORT)
conformance: $(STAMP)
	mkdir -p var/conformance
	$(BIN)/gateway-conformance run --fhir-base $(FHIR_BASE) --mllp $(MLLP) --token-command "$(BIN)/gateway token issue" \
	    --junit var/conformance/junit.xml --html var/conformance/report.html --json var/conformance/results.json

clean:
	rm -rf $(VENV) var
