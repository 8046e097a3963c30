# distill: one venv with everything, CPU or GPU.
PYTHON ?= python3.11
VENV ?= .venv
BIN := $(VENV)/bin
TORCH_SPEC ?= torch==2.13.0
EXTRAS ?= dev
PYTEST_ARGS ?=
# Written by `setup`; `demo`, `lint` and `test` set up first when it is missing or older than the
# package's requirements, so each works from a fresh clone.
SETUP_STAMP := $(VENV)/.distill-setup

.PHONY: setup demo demo-example lint format generate test bench clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

# torch first (its CPU wheel here, or the CUDA build your index serves), then the package
# pinned by constraints.txt. No torchvision on CPU: it breaks transformers' imports.
setup: $(BIN)/python
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q "$(TORCH_SPEC)"
	$(BIN)/pip install -q -c constraints.txt -e ".[$(EXTRAS)]"
	@$(BIN)/python -c "import torch, transformers, trl, mlflow; print('distill setup ok: torch', torch.__version__, '| transformers', transformers.__version__, '| trl', trl.__version__, '| mlflow', mlflow.__version__)"
	@touch $(SETUP_STAMP)

$(SETUP_STAMP): pyproject.toml constraints.txt
	$(MAKE) setup

# The whole method, offline, on the synthetic known-truth world (distill/world): the student is
# built here once, mine finds its defect, augment and train fix it, register registers it.
demo: $(SETUP_STAMP)
	$(BIN)/python -m distill world data --out outputs/world
	PATH=$(abspath $(BIN)):$$PATH $(BIN)/mlflow run . -e pipeline --env-manager local \
		--experiment-name distill-synthetic-world -P config=distill/world/demo.yaml

# The pipeline on the bundled example data (hand-written seeds and recorded teacher, tiny-qwen3).
demo-example: $(SETUP_STAMP)
	PATH=$(abspath $(BIN)):$$PATH $(BIN)/mlflow run . -e pipeline --env-manager local --experiment-name distill-pipeline

# ruff (configured in pyproject.toml) and the generated files (MLproject, README tables).
lint: $(SETUP_STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/python -m distill generate --check

format: $(SETUP_STAMP)
	$(BIN)/ruff check --fix .
	$(BIN)/ruff format .

# MLproject and the README's parameter tables, from the stage registry and config dataclasses.
generate: $(SETUP_STAMP)
	$(BIN)/python -m distill generate

test: lint
	$(BIN)/python -m pytest $(PYTEST_ARGS)

bench: $(SETUP_STAMP)
	$(BIN)/python benchmarks/eval_throughput.py
	$(BIN)/python benchmarks/teacher_throughput.py

clean:
	rm -rf $(VENV) mlruns mlflow.db optuna.db outputs
