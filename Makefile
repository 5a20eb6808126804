# cxr-anomaly: the two commands of the README, plus helpers.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
DATA ?= $(or $(CXR_ANOMALY_DATA),../shared/data/nih1000)
DEMO_OUT ?= runs/demo

.PHONY: demo test bench setup browser clean

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install --quiet --upgrade pip
	$(VENV)/bin/pip install --quiet torch==2.13.0
	$(VENV)/bin/pip install --quiet -e '.[dev]'
	touch $@

setup: $(VENV)/.installed

# Train on NIH1000's normals, evaluate on a patient-disjoint test split, write the report.
demo: setup
	$(PY) -m cxr_anomaly.demo --data $(DATA) --out $(DEMO_OUT)

# tests/test_web.py drives Debian's Chromium through Playwright (no `playwright install` download).
browser:
	@if [ ! -x /usr/bin/chromium ]; then apt-get update && apt-get install -y chromium; fi

test: setup browser
	$(PY) -m pytest -q --timeout=900

bench: setup
	$(PY) -m benchmarks.run

clean:
	rm -rf $(VENV) runs .pytest_cache
