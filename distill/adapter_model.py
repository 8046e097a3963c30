"""The trained LoRA adapter as an MLflow pyfunc model.

Why pyfunc and not the transformers flavor: that flavor saves a PEFT adapter with a pointer to
the base model that silently breaks when the base is a local directory. Here the
adapter folder is the model's only artifact (`artifacts={"adapter": <dir>}`), and the base
model is recorded in `model_config` (and in the model's metadata, for the UI):

- `base_model`: what the run was given (a hub id, a local path, or `tiny-qwen3[@seed]`, which
  rebuilds deterministically from its seed on any machine);
- `base_model_path`: the local folder the run actually loaded;
- `base_model_seed`: the tiny-qwen3 seed, when the base is tiny-qwen3;
- `base_load_in_4bit`, `base_dtype`: how to load the base;
- `scoring_thinking`, `scoring_batch_size`: how `predict` scores (params `thinking` and
  `batch_size` override them per call);
- `train_backend`: the path that trained it (unsloth, qlora or lora).

`predict` takes a DataFrame of canonical MCQ items (`id, paragraph, question, question_plus,
choices, answer, subject, source`; `choices` a list of strings) and returns one row per item:
`id, subject, pred` (1-based choice with the highest log-likelihood, `distill.scoring`),
`n_choices`, `score_1..score_K` (per-choice log-likelihoods, NaN past an item's own choices)
and, when the input carries gold answers, `gold` and `correct`.

`distill.models.load_student(base, adapter="runs:/<run_id>/adapter")` loads the same adapter
without pyfunc (it finds the folder holding adapter_config.json inside the model).

`log_adapter_model` logs it on the active run (this module is the model-logging edge of the
tracking layer: docs/design.md, "MLflow conventions").
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import mlflow.pyfunc

ARTIFACT_KEY = "adapter"


def base_model_reference(config: dict[str, Any]) -> str:
    """What to load as the base: tiny-qwen3 by name (it rebuilds from its seed), else the local
    folder the run used when this machine has it, else the recorded hub id."""
    from distill.tiny_qwen3 import parse_tiny_name

    name = str(config.get("base_model") or "")
    if parse_tiny_name(name) is not None:
        return name
    path = str(config.get("base_model_path") or "")
    if path and Path(path).is_dir():
        return path
    return name or path


def items_from_frame(frame) -> list:
    """Canonical MCQ items from a predict() input frame; a bad row is an InputError."""
    import math

    from distill.data.schema import item_from_dict

    items = []
    for row_number, record in enumerate(frame.to_dict("records"), start=1):
        data = {}
        for key, value in record.items():
            if hasattr(value, "tolist") and not isinstance(value, str):
                value = value.tolist()
            if isinstance(value, float) and math.isnan(value):
                value = None
            data[key] = value
        items.append(item_from_dict("<predict input>", row_number, data))
    return items


class AdapterModel(mlflow.pyfunc.PythonModel):
    """Base model + LoRA adapter, scoring MCQ items by choice log-likelihood."""

    def load_context(self, context) -> None:
        from distill.models import load_student

        config = dict(context.model_config or {})
        self.config = config
        self.model, self.tokenizer = load_student(
            base_model_reference(config),
            adapter=context.artifacts[ARTIFACT_KEY],
            load_in_4bit=bool(config.get("base_load_in_4bit", False)),
            dtype=str(config.get("base_dtype") or "auto"),
        )

    def predict(self, context, model_input, params: dict[str, Any] | None = None):
        from distill.contracts import predictions_frame
        from distill.data.prompts import parse_thinking
        from distill.scoring import predict as argmax_choices
        from distill.scoring import score_choices

        params = params or {}
        items = items_from_frame(model_input)
        thinking = parse_thinking(params.get("thinking", self.config.get("scoring_thinking", "off")))
        batch_size = int(params.get("batch_size", self.config.get("scoring_batch_size", 8)))
        scores = score_choices(
            self.model, self.tokenizer, items, thinking=thinking, batch_size=batch_size, progress=False
        )
        frame = predictions_frame(items, scores, argmax_choices(scores))
        if all(item.answer is None for item in items):  # unlabelled input: nothing to compare with
            frame = frame.drop(columns=["gold", "correct"])
        return frame


def log_adapter_model(adapter_dir: Path, model_config: dict[str, Any], name: str = "adapter"):
    """Log `adapter_dir` as an `AdapterModel` named `name` on the active run; MLflow's ModelInfo.

    `model_config` is described in the module docstring; pyfunc also logs it as run params, so
    its names must not clash with the config's. The requirements pin the packages that load and
    score the adapter (bitsandbytes when the base loads in 4-bit)."""
    import importlib.metadata as md

    from distill import __version__

    def pinned(package: str) -> str:
        try:
            return f"{package}=={md.version(package)}"
        except md.PackageNotFoundError:
            return package

    requirements = [f"distill=={__version__}"] + [
        pinned(p) for p in ("torch", "transformers", "peft", "mlflow", "pandas", "tokenizers", "safetensors")
    ]
    if model_config.get("base_load_in_4bit"):
        requirements.append(pinned("bitsandbytes"))
    return mlflow.pyfunc.log_model(
        name=name,
        python_model=AdapterModel(),
        artifacts={ARTIFACT_KEY: str(adapter_dir)},
        model_config=model_config,
        metadata={"distill": dict(model_config)},
        pip_requirements=requirements,
    )
