# fedsilo: two commands do all set-up on a fresh machine: `make demo` and `make test`.
SHELL := /bin/bash
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-$(shell sha256sum pyproject.toml | cut -c1-16)

.PHONY: demo test lint venv clean

venv: $(STAMP)

$(STAMP): pyproject.toml
	@bash scripts/bootstrap_venv.sh "$(VENV)" "$(STAMP)"

demo: $(STAMP)
	$(PY) -m webapp.demo

test: $(STAMP)
	$(PY) -m ruff check .
	$(PY) -m importlinter.cli lint-imports 2>/dev/null || $(VENV)/bin/lint-imports
	bash scripts/run_tests.sh

lint: $(STAMP)
	$(PY) -m ruff check .
	$(VENV)/bin/lint-imports

clean:
	rm -rf $(VENV) demo-output test-output
