# cxr-anomaly: the two commands of the README, plus helpers.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
DATA ?= $(or $(CXR_ANOMALY_DATA),../shared/data)
DEMO_OUT ?= runs/demo

.PHONY: demo test lint bench setup browser pacs-server clean

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install --quiet --upgrade pip
	$(VENV)/bin/pip install --quiet torch==2.13.0
	$(VENV)/bin/pip install --quiet -e '.[dev]'
	touch $@

setup: $(VENV)/.installed

# Fit the default detector on rsna_normal224, test on NIH1000, nih_pneumonia256 and rsna_dev256, write the report.
demo: setup
	$(PY) -m cxr_anomaly.jobs.demo --data $(DATA) --out $(DEMO_OUT)

# The browser for the page test (tests/test_web.py), installed only when asked for: Debian's
# chromium package when run as root, otherwise Playwright's own download into ~/.cache (needs the
# network). `make test` never installs it; without a browser the page test skips and names this.
browser: setup
	@if [ -x /usr/bin/chromium ]; then \
		echo "browser: /usr/bin/chromium is already installed"; \
	elif [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
		apt-get update && apt-get install -y chromium; \
	else \
		echo "browser: not root, so downloading Playwright's own Chromium (needs the network)"; \
		$(PY) -m playwright install chromium || { echo "browser: the download failed; as root, run" \
			"'apt-get install chromium' (Debian) instead, then 'make test'"; exit 1; }; \
	fi

# The PACS for the listener's round-trip tests (tests/test_pacs_listener.py): Debian's Orthanc with
# its DICOMweb plugin, and dicom3tools (dciodvfy) for the results' conformance check. Installed only
# when asked for, and only as root; `make test` never installs them: those tests skip and say so.
pacs-server:
	@if command -v Orthanc >/dev/null && command -v dciodvfy >/dev/null \
		&& [ -e /usr/share/orthanc/plugins/libOrthancDicomWeb.so ]; then \
		echo "pacs-server: Orthanc, its DICOMweb plugin and dciodvfy are already installed"; \
	elif [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
		apt-get update && DEBIAN_FRONTEND=noninteractive apt-get install -y orthanc orthanc-dicomweb dicom3tools dcmtk; \
	else \
		echo "pacs-server: as root, run 'apt-get install orthanc orthanc-dicomweb dicom3tools dcmtk' (Debian)"; exit 1; \
	fi

# Sets up .venv and runs the Python suite; changes nothing outside the checkout.
test: setup
	$(PY) -m pytest -q --timeout=900

# The layers contract of pyproject.toml (docs/architecture.md) and ruff's checks.
lint: setup
	$(VENV)/bin/lint-imports
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

bench: setup
	$(PY) -m benchmarks.run

clean:
	rm -rf $(VENV) runs .pytest_cache
