# distill: one venv with everything, CPU or GPU.
PYTHON ?= python3.11
VENV ?= .venv
BIN := $(VENV)/bin
TORCH_SPEC ?= torch==2.13.0
EXTRAS ?= dev
PYTEST_ARGS ?=

.PHONY: setup demo test bench clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

# torch first (its CPU wheel here, or the CUDA build your index serves), then the package
# pinned by constraints.txt. No torchvision on CPU: it breaks transformers' imports.
setup: $(BIN)/python
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q "$(TORCH_SPEC)"
	$(BIN)/pip install -q -c constraints.txt -e ".[$(EXTRAS)]"
	@$(BIN)/python -c "import torch, transformers, trl, mlflow; print('distill setup ok: torch', torch.__version__, '| transformers', transformers.__version__, '| trl', trl.__version__, '| mlflow', mlflow.__version__)"

# The whole method on the embedded default, offline.
demo: setup
	PATH=$(abspath $(BIN)):$$PATH $(BIN)/mlflow run . -e pipeline --env-manager local --experiment-name distill-pipeline

test:
	$(BIN)/python -m pytest $(PYTEST_ARGS)

bench:
	$(BIN)/python benchmarks/eval_throughput.py
	$(BIN)/python benchmarks/teacher_throughput.py

clean:
	rm -rf $(VENV) mlruns mlflow.db optuna.db outputs
