# Two commands on a fresh clone: `make demo` and `make test`.
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(VENV)/bin/pip
STAMP := $(VENV)/.installed

.PHONY: demo test install chromium clean bench

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

test: install chromium
	$(PY) scripts/gen_protocol.py --check
	$(PY) scripts/gen_settings_doc.py --check
	$(PY) -m pytest -q -p no:cacheprovider tests
	$(PY) bench/run.py --quick --smoke

bench: install
	$(PIP) install -q -e '.[bench]'
	$(PY) bench/run.py --peers --markdown

clean:
	rm -rf $(VENV) node_modules lib gpucell/labextension
