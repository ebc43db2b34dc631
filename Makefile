# `make demo` and `make test` each create .venv on first use (torch from the pinned wheels).
VENV  ?= .venv
PY    := $(VENV)/bin/python
TORCH ?= torch==2.14.1 torchvision==0.29.1
export HF_HUB_OFFLINE ?= 1

.PHONY: demo test bench clean

$(VENV)/.installed: pyproject.toml
	python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q $(TORCH)
	$(PY) -m pip install -q -e '.[test]'
	touch $@

demo: $(VENV)/.installed
	$(VENV)/bin/nbtl-search demo

test: $(VENV)/.installed
	$(PY) -m pytest

bench: $(VENV)/.installed
	$(PY) bench/cpu.py

clean:
	rm -rf $(VENV) nbtl.db nbtl-logs nbtl-final report.html
