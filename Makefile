# Two commands on a fresh clone: `make demo` and `make test`.
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(VENV)/bin/pip
STAMP := $(VENV)/.installed

.PHONY: demo test lint install chromium clean bench

$(PY):
	python3 -m venv $(VENV)
	$(PIP) install -q --upgrade pip

$(STAMP): $(PY) pyproject.toml
	$(PIP) install -q -e '.[test,ray]'
	touch $(STAMP)

install: $(STAMP)

# Chromium for the sidebar's browser tests: Debian's package, never a downloaded browser build.
chromium:
	@command -v chromium >/dev/null 2>&1 || { apt-get update -q && apt-get install -y -q chromium chromium-driver; }

# Runs the quickstart on an embedded broker, printing each cell's output as it happens.
demo: install
	$(PY) -m gpucell.cli run notebooks/quickstart.ipynb -o $${TMPDIR:-/tmp}/gpucell-quickstart.out.ipynb

# ruff, mypy (scope and strictness in pyproject), the import layering contracts, eslint + prettier.
lint: install
	$(VENV)/bin/ruff check gpucell tests bench scripts
	$(VENV)/bin/mypy
	@if [ -f .importlinter ]; then echo "$(VENV)/bin/lint-imports"; $(VENV)/bin/lint-imports --no-logo; \
	 else echo "lint-imports: no .importlinter yet, skipped"; fi
	@[ -x node_modules/.bin/eslint ] || npm install --no-audit --no-fund
	npm run lint

test: install chromium lint
	$(PY) scripts/gen_protocol.py --check
	$(PY) scripts/gen_settings_doc.py --check
	$(PY) -m pytest -q -p no:cacheprovider tests
	$(PY) bench/run.py --quick --smoke

bench: install
	$(PIP) install -q -e '.[bench]'
	$(PY) bench/run.py --peers --markdown

clean:
	rm -rf $(VENV) node_modules lib gpucell/labextension
