# `make demo` and `make test` create .venv from the repository's own files
# (idempotent: the environment is rebuilt only when requirements change).
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
REQS := setup.py requirements/constraints.txt requirements/runtime.txt \
        requirements/mminstall.txt requirements/tests.txt requirements/demo.txt
PYTEST_ARGS ?=

.PHONY: env demo test benchmark clean

env: $(STAMP)

$(STAMP): $(REQS)
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet -c requirements/constraints.txt \
		"setuptools<82" wheel
	$(PY) -m pip install --quiet -c requirements/constraints.txt \
		-e ".[all]"
	touch $(STAMP)

demo: $(STAMP)
	$(PY) tools/demo.py --work-dir work_dirs/demo

test: $(STAMP)
	$(PY) -m pytest tests $(PYTEST_ARGS)

benchmark: $(STAMP)
	$(PY) tools/benchmarks/benchmark_update.py

clean:
	rm -rf $(VENV) work_dirs .pytest_cache
