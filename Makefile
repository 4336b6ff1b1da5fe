# Two commands on a fresh machine: `make demo` and `make test`.
# Each bootstraps .venv. torch==2.13.0 is installed first, on its own, because on
# these machines that exact pin resolves to a CPU wheel on disk; an unpinned
# `torch` would pull a multi-gigabyte CUDA build.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.sepconv-installed
TORCH  ?= torch==2.13.0

.PHONY: demo test bench lint venv clean

venv: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q "$(TORCH)"
	$(PY) -m pip install -q -e ".[dev]"
	@$(PY) -c "import torch; assert torch.version.cuda is None, 'a CUDA build of torch was installed: ' + torch.__version__" \
		|| (echo "error: .venv holds a CUDA build of torch; remove .venv and install $(TORCH)" >&2; exit 1)
	touch $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/sepconv demo

test: $(STAMP)
	$(PY) -m ruff check src tests benchmarks
	$(PY) -m pytest -q

bench: $(STAMP)
	$(PY) benchmarks/run_all.py

lint: $(STAMP)
	$(PY) -m ruff check src tests benchmarks
	$(PY) -m ruff format --check src tests benchmarks

clean:
	rm -rf $(VENV) build src/*.egg-info .pytest_cache .hypothesis
