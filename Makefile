# atlas — two commands: `make run` and `make test` (both install what they need first).
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed-stamp
HOME_DIR ?= $(HOME)/.atlas

.PHONY: install run test lint bench clean soak chromium postgres loadgen

install: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

run: install
	$(BIN)/atlas daemon start --workspace examples/demo --workspace examples/reports --workspace examples/knowledge-base

lint: install
	$(BIN)/ruff check src tests bench
	$(BIN)/mypy src

chromium:
	test -x /usr/lib/chromium/chromium || test -x /usr/bin/chromium || (apt-get update -qq && apt-get install -y -qq chromium)

# PostgreSQL 15 binaries for the tests' private servers (tests/pg.py runs initdb/pg_ctl itself, in a temp dir);
# the tests never use a cluster the package may have started on port 5432.
postgres:
	test -x /usr/lib/postgresql/15/bin/postgres || (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql)

# The HTTP load generators of the benches.
loadgen:
	command -v hey >/dev/null 2>&1 && command -v wrk >/dev/null 2>&1 || (apt-get update -qq && apt-get install -y -qq hey wrk)

test: lint chromium postgres
	$(BIN)/pytest

bench: install loadgen
	bash bench/run.sh

# Multi-daemon tests on a 3-node nats-server cluster, long chaos variants included (`make test` runs the short ones).
test-cluster: install
	ATLAS_CLUSTER_LONG=1 $(BIN)/pytest tests/cluster -m "cluster"

# Trigger throughput with 1, 2 and 3 daemons on one cluster, read-model writes to PostgreSQL, then the cascade hop;
# markdown in bench/results/cluster.md.
bench-cluster: install loadgen postgres
	mkdir -p bench/results
	timeout --kill-after=10 900 $(BIN)/python bench/cluster_throughput.py > bench/results/cluster.md; \
		rc=$$?; timeout --kill-after=10 900 $(BIN)/python bench/cluster_throughput.py --postgres --rounds 3 --equal-load 100 \
		>> bench/results/cluster.md || rc=1; \
		timeout --kill-after=10 300 $(BIN)/python bench/pg_upsert.py >> bench/results/cluster.md || rc=1; \
		timeout --kill-after=10 120 $(BIN)/python bench/cascade_hop.py --cascades 300 >> bench/results/cluster.md \
		|| rc=1; cat bench/results/cluster.md; exit $$rc

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache .mypy_cache .ruff_cache

soak: install
	$(BIN)/python bench/soak.py --minutes $${SOAK_MINUTES:-10}
