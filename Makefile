# The two commands: `make serve` and `make test`. Everything else supports them.
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-dev

.PHONY: serve test docs bench bench-enumeration lab install sync-check lint clean site-for-tests FORCE

# Create the virtualenv and install the project with its development tools, again only when the
# *content* of pyproject.toml changes (nbdev-export rewrites the file, so its date is no guide).
$(STAMP): FORCE
	@sum=$$(sha256sum pyproject.toml | cut -d' ' -f1); \
	if [ -x $(BIN)/python ] && [ "$$(cat $(STAMP) 2>/dev/null)" = "$$sum" ]; then exit 0; fi; \
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV) || exit 1; \
	echo "installing backend-ref and its development tools into $(VENV)"; \
	$(BIN)/python -m pip install --quiet --upgrade pip && \
	$(BIN)/python -m pip install --quiet -e ".[dev,docs]" && \
	echo "$$sum" > $(STAMP)

FORCE:

# The notebooks and tests check the defaults and the settings they set themselves: BACKEND_REF_*
# variables of the developer's shell (BACKEND_REF_PORT=8766 make serve) must not reach them.
# Only the test-service URLs (BACKEND_REF_TEST_*) and BACKEND_REF_CHROMIUM pass.
CLEAN_ENV := env $(foreach v,$(filter BACKEND_REF_%,$(.VARIABLES)),$(if $(filter BACKEND_REF_TEST_% BACKEND_REF_CHROMIUM,$(v)),,-u $(v)))

install: $(STAMP)

## Serve the articles site at http://127.0.0.1:8000/ and the API at /api (two SQLite databases
## under ./data/); builds the site first if it is missing. The app syncs the site's articles.
serve: $(STAMP)
	@test -f _site/index.html || $(MAKE) docs \
		|| echo "serve: the articles site could not be built (see the error above); serving the API alone"
	$(BIN)/backend-ref serve

## Build the articles site into _site/ (every notebook executed; warnings are errors)
docs: $(STAMP) docs/node_modules/.package-lock.json
	$(CLEAN_ENV) $(BIN)/backend-ref-site build

# Mermaid for the site, from the npm registry (docs/node_modules is not committed)
docs/node_modules/.package-lock.json: docs/package.json docs/package-lock.json
	npm ci --prefix docs --no-audit --no-fund --loglevel=error

## Everything: package in sync with the notebooks, lint, the site, then notebooks and tests
## (browser tests included) in one pytest run
test: $(STAMP) sync-check lint site-for-tests
	$(CLEAN_ENV) $(BIN)/pytest

# The site needs npm (Mermaid comes from the npm registry). Without npm the site's tests are
# skipped with that reason; everything else still runs.
site-for-tests: $(STAMP)
	@if command -v npm >/dev/null 2>&1; then $(MAKE) docs; \
	else echo "test: npm is not installed, so the site is not built and its tests skip"; rm -rf _site; fi

# The package must be exactly what the notebooks export. Compare the tree before and after
# nbdev-clean + nbdev-export; any change means a notebook was edited without re-exporting
# (or backend_ref/ was edited by hand).
sync-check: $(STAMP)
	@if ! git rev-parse --is-inside-work-tree >/dev/null 2>&1; then \
		echo "sync-check: not a git checkout, skipped"; exit 0; fi; \
	before="$$(git status --porcelain --untracked-files=all; git diff)"; \
	$(BIN)/nbdev-clean && $(BIN)/nbdev-export || exit 1; \
	after="$$(git status --porcelain --untracked-files=all; git diff)"; \
	if [ "$$before" != "$$after" ]; then \
		echo "sync-check: nbdev-clean/nbdev-export changed the tree:"; git status --short; \
		echo "backend_ref/ was out of sync with nbs/ (it is re-exported now: review and commit)."; \
		exit 1; fi; \
	echo "sync-check: backend_ref/ matches the notebooks"

lint: $(STAMP)
	$(BIN)/ruff check backend_ref tests nbs bench
	$(BIN)/ruff format --check tests nbs bench  # backend_ref/ is laid out by nbdev-export from nbs/

## Benchmarks: every hot path as a ratio to a bare FastAPI endpoint, on loopback, < 15 minutes.
## Also on PostgreSQL when BACKEND_REF_BENCH_POSTGRES_URL is set (postgres://postgres@127.0.0.1:5432).
## Writes bench/results/<date>.json and .md, and bench/results/latest.md.
bench: $(STAMP)
	@command -v wrk >/dev/null || { apt-get update -qq && apt-get install -y -qq wrk; } \
		|| { echo "bench: wrk is missing; install it (apt-get install wrk)"; exit 1; }
	$(BIN)/python bench/run.py $(BENCH_ARGS)
	$(BIN)/python bench/enumeration.py $(ENUMERATION_ARGS)

## Does the time of an answer tell whether an account exists? Login, forgot-password,
## request-verification and registration, existing vs missing account, one request at a time.
## Writes bench/results/enumeration.json and .md.
bench-enumeration: $(STAMP)
	$(BIN)/python bench/enumeration.py $(ENUMERATION_ARGS)

## Open the notebooks in JupyterLab (installs the optional `lab` extra)
lab: $(STAMP)
	$(BIN)/python -m pip install --quiet -e ".[dev,lab]"
	$(BIN)/jupyter lab nbs

clean:
	rm -rf $(VENV) data .pytest_cache _site build docs/node_modules docs/_mermaid test-artifacts
