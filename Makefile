# Two commands set everything up on a fresh machine:
#   make demo   - create .venv if needed, install, run the whole chain on the built-in data
#   make test   - create .venv if needed, install, run the test suite
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
# torch goes in first, pinned: pip then takes the CPU build that lies on this kind of machine
# instead of pulling a multi-GB CUDA build for the unpinned `torch` requirement.
# On a GPU machine: make install GPU=1 (or make test GPU=1): torch's CUDA 12.6 build from the
# PyTorch index, then the package with its `gpu` extra (NVRTC, onnxruntime's CUDA 12 libraries):
# one CUDA 12 stack with DALI cuda120 and CuPy cuda12x.
GPU ?= 0
TORCH_INDEX ?= https://download.pytorch.org/whl/cu126
ifeq ($(GPU),1)
TORCH_SPEC ?= torch==2.13.0+cu126
INSTALL_TORCH = $(BIN)/python -m pip install -q "$(TORCH_SPEC)" --extra-index-url $(TORCH_INDEX)
EXTRAS := test,pretrained,gpu
STAMP := $(VENV)/.installed-gpu
else
TORCH_SPEC ?= torch==2.13.0
INSTALL_TORCH = $(BIN)/python -c "import torch" 2>/dev/null || $(BIN)/python -m pip install -q "$(TORCH_SPEC)"
EXTRAS := test,pretrained
STAMP := $(VENV)/.installed
endif
DEMO_OUT ?= demo-out

.PHONY: demo test install clean

install: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(INSTALL_TORCH)
	$(BIN)/python -m pip install -q -e ".[$(EXTRAS)]"
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/dali-abs demo $(DEMO_OUT)

test: $(STAMP)
	$(BIN)/python -m pytest

clean:
	rm -rf $(VENV) $(DEMO_OUT) build *.egg-info
