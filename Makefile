# Two entry points for a fresh machine (see README): `make demo` and `make test`.
# Both create the venv inside the repo on first use; later calls reuse it.

PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
# Reinstall when setup.py changes.
STAMP := $(VENV)/.installed-$(shell cat setup.py | cksum | cut -d' ' -f1)

.PHONY: demo test test-slow test-all venv

venv: $(STAMP)

$(STAMP): setup.py
	@echo ">> creating $(VENV) (first run: ~3 min, ~2 GB)"
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	@# The CPU wheel of torch first: a plain `torch` requirement would pull a multi-GB CUDA build.
	$(PY) -m pip install -q torch==2.13.0
	$(PY) -m pip install -q -e ".[test]"
	rm -f $(VENV)/.installed-*
	touch $@

demo: $(STAMP)
	$(PY) scripts/cpu_demo.py

test: $(STAMP)
	$(PY) -m pytest tests

# The tests marked slow (pytest.ini): each launches the trainer several times.
test-slow: $(STAMP)
	$(PY) -m pytest tests -m slow

test-all: $(STAMP)
	$(PY) -m pytest tests -m "slow or not slow"
