# Two commands do all set-up on a fresh clone (Python >= 3.10 and git are all it needs):
#   make run    create .venv, install pgolf, then `dvc repro` the default (offline) pipeline
#   make test   the same set-up plus dev dependencies, then the test suite
#
# torch is installed first and pinned (TORCH_VERSION): on a machine without CUDA pass the CPU
# wheel index of your choice as TORCH_INDEX=... to avoid the multi-GB CUDA build; pgolf's own
# `torch>=2.4` requirement is then already satisfied and pulls nothing more.

PYTHON ?= python3
VENV ?= .venv
TORCH_VERSION ?= 2.13.0
TORCH_INDEX ?=
BIN := $(CURDIR)/$(VENV)/bin
STAMP := $(VENV)/.pgolf-installed
STAMP_DEV := $(VENV)/.pgolf-installed-dev

export PATH := $(BIN):$(PATH)
export DVC_NO_ANALYTICS := 1
export PYTHONDONTWRITEBYTECODE := 1

.PHONY: run test install install-dev bench clean-data

run: $(STAMP)
	dvc repro

test: $(STAMP_DEV)
	python -m pytest

install: $(STAMP)
install-dev: $(STAMP_DEV)

$(VENV)/bin/python:
	@$(PYTHON) -c 'import sys; sys.exit(0 if sys.version_info >= (3, 10) else "pgolf needs Python >= 3.10")'
	$(PYTHON) -m venv $(VENV)

$(STAMP): pyproject.toml | $(VENV)/bin/python
	@if $(BIN)/python -c 'import torch' 2>/dev/null; then \
	  echo "torch already installed: $$($(BIN)/python -c 'import torch; print(torch.__version__)')"; \
	else \
	  $(BIN)/python -m pip install $(if $(TORCH_INDEX),--index-url $(TORCH_INDEX)) "torch==$(TORCH_VERSION)"; \
	fi
	$(BIN)/python -m pip install -e .
	$(BIN)/pgolf plots template
	@touch $@

$(STAMP_DEV): $(STAMP)
	$(BIN)/python -m pip install -e ".[dev]"
	@touch $@

bench: $(STAMP_DEV)
	@for b in bench/*.py; do echo "== $$b"; python $$b || exit 1; done

clean-data:
	rm -rf data metrics/*.json dvclive
