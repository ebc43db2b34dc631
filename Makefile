# `make demo` and `make test` each create .venv on first use: torch from the pinned wheels, every
# other package at the tested versions of .ci/constraints.txt (`make constraints` rewrites it).
VENV  ?= .venv
PY    := $(VENV)/bin/python
TORCH ?= torch==2.14.1 torchvision==0.29.1
export HF_HUB_OFFLINE ?= 1

.PHONY: demo test lint format bench clean constraints

$(VENV)/.installed: pyproject.toml .ci/constraints.txt
	python3 -m venv $(VENV)
	$(PY) -m pip install -q -c .ci/constraints.txt --upgrade pip
	$(PY) -m pip install -q $(TORCH)
	$(PY) -m pip install -q -c .ci/constraints.txt -e '.[test]'
	touch $@

demo: $(VENV)/.installed
	$(VENV)/bin/nbtl-search demo

test: lint
	$(PY) -m pytest

lint: $(VENV)/.installed
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/ruff check .

format: $(VENV)/.installed
	$(VENV)/bin/ruff format .
	$(VENV)/bin/ruff check --fix .

bench: $(VENV)/.installed
	$(PY) bench/cpu.py

constraints: $(VENV)/.installed
	{ sed -n '1,3p' .ci/constraints.txt; $(PY) -m pip freeze --all --exclude-editable | \
	  grep -viE '^(torch|torchvision|triton|nvidia-|cuda-|setuptools|wheel)(=|-)'; } > .ci/constraints.tmp
	mv .ci/constraints.tmp .ci/constraints.txt

clean:
	rm -rf $(VENV) nbtl.db nbtl-logs nbtl-final report.html
