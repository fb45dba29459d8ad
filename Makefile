# The two set-up commands from README.md: `make demo` and `make test` (`make lint` is ruff, `make docs` builds the
# documentation site into site/). All work on a fresh machine.
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.neuronforge-installed

.PHONY: install demo test lint docs clean

install: $(STAMP)

# torch first, from the pinned CPU wheel: anything else could let pip pull a CUDA build.
$(STAMP): pyproject.toml
	python3 -m venv $(VENV)
	$(PY) -m pip install --quiet torch==2.13.0
	$(PY) -m pip install --quiet -e ".[dev]"
	touch $(STAMP)

demo: install
	$(VENV)/bin/neuronforge run

test: install
	$(PY) -m pytest

lint: install
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

# --strict: a broken link or anchor, or a docs page missing from mkdocs.yml's nav, fails the build.
docs: install
	NO_MKDOCS_2_WARNING=1 $(VENV)/bin/mkdocs build --strict -d site

clean:
	rm -rf $(VENV) .pytest_cache site
