# atlas — two commands: `make run` and `make test` (both install what they need first).
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed-stamp
HOME_DIR ?= $(HOME)/.atlas

.PHONY: install run test lint bench clean soak chromium

install: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

run: install
	$(BIN)/atlas daemon start --workspace examples/demo --workspace examples/reports

lint: install
	$(BIN)/ruff check src tests bench
	$(BIN)/mypy src

chromium:
	test -x /usr/lib/chromium/chromium || test -x /usr/bin/chromium || (apt-get update -qq && apt-get install -y -qq chromium)

test: lint chromium
	$(BIN)/pytest

bench: install
	bash bench/run.sh

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache .mypy_cache .ruff_cache

soak: install
	$(BIN)/python bench/soak.py --minutes $${SOAK_MINUTES:-10}
