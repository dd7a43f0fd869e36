# The two README commands: `make demo` and `make test`. Both create .venv on first use.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: venv demo test test-all lint bench clean

venv: $(STAMP)

$(STAMP): pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	# torch==2.13.0 first and alone: it is the CPU build; a looser spec could pull a multi-GB CUDA build.
	$(BIN)/python -m pip install -q -c constraints.txt torch==2.13.0
	$(BIN)/python -m pip install -q -c constraints.txt -e '.[cpu,export,test]'
	# Reference implementations for the parity tests, loaded by file path (they would import torchvision).
	$(BIN)/python -m pip install -q -c constraints.txt --no-deps open_clip_torch openai-clip
	# Triton's model-config schema for the repository test (its gRPC client stack is not needed to check configs).
	$(BIN)/python -m pip install -q -c constraints.txt --no-deps tritonclient
	touch $(STAMP)

demo: venv
	$(BIN)/edgeclip demo

test: venv
	$(BIN)/python -m pytest -q

test-all: venv
	$(BIN)/python -m pytest -q -m ''

lint: venv
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy

clean:
	rm -rf $(VENV) build *.egg-info
