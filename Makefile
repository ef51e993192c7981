# Local development: everything installs into ./.venv.
# The CPU build of torch is installed first (pinned below), so the package's own
# open torch range is already satisfied and no CUDA build is downloaded.
PYTHON ?= python3
VENV ?= .venv
TORCH_SPEC ?= torch==2.13.0
BIN := $(VENV)/bin
# A Label Studio server for the tests of LabelStudioOracle, in its own environment (not a dependency).
LABEL_STUDIO_VENV ?= .venv-label-studio
LABEL_STUDIO_SPEC ?= label-studio==1.23.2

.PHONY: install label-studio bench-label-studio bench-experiment docs docs-serve demo demo-bayesian demo-diversity demo-dynamics bench curves test lint clean

install: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml Makefile
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet "$(TORCH_SPEC)"
	$(BIN)/pip install --quiet -e ".[dev]"
	touch $@

label-studio: $(LABEL_STUDIO_VENV)/.installed

$(LABEL_STUDIO_VENV)/.installed: Makefile
	$(PYTHON) -m venv $(LABEL_STUDIO_VENV)
	$(LABEL_STUDIO_VENV)/bin/pip install --quiet "$(LABEL_STUDIO_SPEC)"
	touch $@

demo: install
	$(BIN)/python examples/digits.py

demo-bayesian: install
	$(BIN)/python examples/digits_bayesian.py

demo-diversity: install
	$(BIN)/python examples/digits_diversity.py

demo-dynamics: install
	$(BIN)/python examples/digits_dynamics.py

bench: install
	$(BIN)/python -m benchmarks

# The whole digits experiment against a plain loop, Lightning alone and baal (installed here without
# its dependencies' pins, for this benchmark only; never a dependency of the package).
bench-experiment: install
	$(BIN)/pip install --quiet --no-deps baal==2.1.0 structlog==26.1.0
	$(BIN)/python -m benchmarks.experiment

curves: install
	$(BIN)/python -m benchmarks.learning_curves

bench-label-studio: install label-studio
	$(BIN)/python -m benchmarks.label_studio_push

test: install label-studio
	$(BIN)/python -m pytest -q
	$(BIN)/ruff check lightning_al examples tests benchmarks docs
	$(MAKE) docs

# The documentation site, built strictly: broken links, missing pages and docstring gaps fail.
docs: install
	NO_MKDOCS_2_WARNING=1 $(BIN)/mkdocs build --strict --quiet

docs-serve: install
	NO_MKDOCS_2_WARNING=1 $(BIN)/mkdocs serve

lint: install
	$(BIN)/ruff check lightning_al examples tests benchmarks docs
	$(BIN)/ruff format --check lightning_al examples tests benchmarks docs

clean:
	rm -rf $(VENV) $(LABEL_STUDIO_VENV) .pytest_cache site
