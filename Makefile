# Two entry points: `make demo` (the main job) and `make test` (the test suite).
# Both create and reuse a virtual environment in .venv. torch is pinned to the CPU
# build first so that nothing pulls CUDA wheels onto a CPU-only machine.
VENV   ?= .venv
PYTHON ?= python3
PY      = $(VENV)/bin/python
STAMP   = $(VENV)/.tdakit-installed
TORCH  ?= torch==2.13.0

.PHONY: demo test lint bench clean browser

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q "$(TORCH)"
	$(PY) -m pip install -q -e ".[test]"
	touch $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/tdakit demo --out tdakit-demo

test: $(STAMP) browser
	$(PY) -m ruff check src tests benchmarks
	$(PY) -m pytest

# Debian's Chromium for the browser test of the reports (best effort: without it that test
# is skipped with its reason printed).
browser:
	@command -v chromium >/dev/null 2>&1 || (command -v apt-get >/dev/null 2>&1 && \
		(apt-get install -y -q chromium >/dev/null 2>&1 || \
		 (apt-get update -q >/dev/null 2>&1 && apt-get install -y -q chromium >/dev/null 2>&1))) \
		|| echo "chromium not installed: tests/test_browser.py will be skipped"

lint: $(STAMP)
	$(PY) -m ruff check src tests benchmarks
	$(PY) -m ruff format --check src tests benchmarks

# Speed and quality measurements (not part of the tests); see docs/benchmarks.md.
bench: $(STAMP)
	$(PY) benchmarks/bench_features.py
	$(PY) benchmarks/bench_influence.py
	$(PY) benchmarks/bench_trak_kfac.py --lds
	$(PY) benchmarks/bench_oracles.py

clean:
	rm -rf $(VENV) tdakit-demo .pytest_cache
