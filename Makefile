# Every target that needs Python creates .venv first when it is missing.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed-stamp
# `make demo` installs only what scripts/demo.py runs (the programs and the webhook), not the dev
# tools and test servers: a newcomer sees the demo in a minute, not after the whole dev extra.
# tests/test_make_targets.py checks the demo's imports against this.
DEMO_EXTRAS := webhook
DEMO_STAMP  := $(VENV)/.demo-stamp

.PHONY: venv test test-busy lint unit demo bench e2e-kind clean

venv: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[webhook,dev]'
	touch $(STAMP)

lint: venv
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/mypy
	$(VENV)/bin/lint-imports

unit: venv
	scripts/ensure-tools.sh
	$(PY) -m pytest

test: lint unit

$(DEMO_STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[$(DEMO_EXTRAS)]'
	touch $(DEMO_STAMP)

demo: $(DEMO_STAMP)
	$(PY) scripts/demo.py

# make test on a busy machine: two CPU hogs (stress-ng --cpu 2, else two Python loops) run
# beside it and are stopped afterwards, pass or fail. BUSY_CPUS=N changes how many.
test-busy: venv
	PYTHON=$(PYTHON) sh scripts/busy.sh $(MAKE) test

bench: venv
	$(PY) bench/fetch.py
	$(PY) bench/footprint.py
	$(PY) bench/webhook.py

# Needs Docker, kind and kubectl: builds both images, deploys the kind overlay into a throwaway
# cluster (E2E_KIND_KEEP=1 keeps it) and runs tests/e2e; without Docker or kind they skip.
e2e-kind: venv
	$(PY) -m pytest tests/e2e -m e2e -v

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache build *.egg-info
