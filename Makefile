# One command runs the demo (`make demo`), one runs the tests (`make test`); both build .venv first.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed
OUT    ?= out

.PHONY: setup demo test lint bench clean

setup: $(STAMP)

$(STAMP): requirements.txt requirements-anatomy.txt core/pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q -r requirements.txt
	$(PY) -m pip install -q --no-deps -r requirements-anatomy.txt
	$(PY) -m pip install -q --no-deps -e core
	touch $(STAMP)

demo: setup
	$(VENV)/bin/qmricore demo --out $(OUT)/demo

test: setup
	$(PY) -m pytest -q

lint: setup
	$(VENV)/bin/ruff check --config core/pyproject.toml core bench Testing Scripts QMRICommon/QMRICommonLib QMRISynth/QMRISynthLib QMRISegment/QMRISegmentLib

bench: setup
	$(PY) bench/bench_simulate.py

clean:
	rm -rf $(VENV) $(OUT)
