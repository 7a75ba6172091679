# The two commands of the README: `make book` and `make test`. Both set themselves up from scratch.
SHELL := /bin/bash
.SHELLFLAGS := -eu -o pipefail -c
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.companion-installed

.PHONY: book test setup models lint lock clean

# A fresh venv, the locked book stack, and the package (editable). Redone when the lock or pyproject change.
$(STAMP): requirements.lock pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --disable-pip-version-check --upgrade pip
	$(PY) -m pip install -q --disable-pip-version-check -r requirements.lock
	$(PY) -m pip install -q --disable-pip-version-check --no-deps -e .
	@touch $@

setup: $(STAMP)

# Executes every chapter (papermill; only those whose source, package or lock changed), writes the
# run-times and reproduction-report pages, and renders the HTML with jupyter-book (warnings are errors).
book: $(STAMP)
	$(PY) scripts/build_book.py

# 1. The book in quick mode (papermill executes each chapter once), for the browser tests.
# 2. The Colab path (scripts/colab_env.py): the package pip-installed from a git+file:// clone into a fresh
#    venv with the extras each chapter's Colab cell names; each chapter alone in an empty folder, executed
#    again there in quick mode under nbval (lax: the checks are asserts and recorded claims).
# 3. The package tests and the browser tests (tests/book/test_browser.py: every page of the book in
#    headless Chromium with no network; without Chromium they are skipped and the summary says why).
test: $(STAMP)
	$(PY) scripts/build_book.py --quick
	$(PY) scripts/colab_env.py build/colab
	$(PY) -m pytest tests -p no:cacheprovider

models: $(STAMP)
	$(PY) -m companion.lab.train all --out models

lint: $(STAMP)
	$(VENV)/bin/ruff check src tests benchmarks scripts
	$(VENV)/bin/ruff format --check src tests benchmarks scripts

# Re-pin the book environment from the current venv (after a deliberate upgrade).
lock: $(STAMP)
	{ echo "# The book's pinned environment (Python 3.11, CPU). Regenerate with: make lock"; \
	  echo "# torch==2.13.0 resolves to the CPU wheel here; on CUDA machines pip picks the matching build."; \
	  $(PY) -m pip freeze --exclude-editable | sed 's/^torch==\([0-9.]*\)+cpu/torch==\1/'; } > requirements.lock

clean:
	rm -rf _build build book/chapters book/runtimes.md book/report.md
