# The README's commands. Each installs what it needs into ./.venv on first use.
VENV ?= .venv
PY := $(VENV)/bin/python
# One torch thread per process: with 2 cores, over-subscription makes tests many times slower.
export OMP_NUM_THREADS ?= 1
export TOKENIZERS_PARALLELISM ?= false

.PHONY: test demo install lint

$(VENV)/.installed: setup.py requirements.txt
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	# Pin torch: on a CPU machine 2.13.0 resolves to the CPU build; unpinned it pulls a multi-GB CUDA build.
	$(PY) -m pip install --quiet torch==2.13.0 -e '.[test,eval]'
	touch $@

install: $(VENV)/.installed

test: $(VENV)/.installed
	$(PY) -m pytest -q tests

lint: $(VENV)/.installed
	$(VENV)/bin/ruff format --check . && $(VENV)/bin/ruff check .
