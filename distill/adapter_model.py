"""The trained LoRA adapter as an MLflow pyfunc model, logged from code.

Why pyfunc and not the transformers flavor: that flavor saves a PEFT adapter with a pointer to
the base model that silently breaks when the base is a local directory. Here the model's
artifacts are the adapter folder (`adapter`) and a small JSON file (`distill_model`) saying how
to load the base:

- `base_model`: what the run was given, as given (a hub id, a directory the user chose, or
  `tiny-qwen3[@seed]`, which rebuilds deterministically from its seed on any machine); never a
  resolved cache folder, which would point into one machine's ~/.cache or DISTILL_HOME;
- `base_model_path`: the absolute form of that directory, only when the user gave one;
- `base_model_seed`: the tiny-qwen3 seed, when the base is tiny-qwen3;
- `base_load_in_4bit`, `base_dtype`: how to load the base;
- `scoring_thinking`, `scoring_batch_size`: how `predict` scores (params `thinking` and
  `batch_size` override them per call; the signature declares both with these defaults);
- `train_backend`: the path that trained it (unsloth, qlora or lora).

The same values are the model's metadata (`distill`), for the UI. They are deliberately not
MLflow's `model_config`: pyfunc logs that as run parameters, which would duplicate the run's own
(`student`/`base_model`, `backend`/`train_backend`) and put paths among them.

The model is logged "from code" (`distill/adapter_model_code.py` calls `mlflow.models.set_model`),
so nothing is pickled. `predict` takes a DataFrame of canonical MCQ items (`id, paragraph,
question, question_plus, choices, answer, subject, source`; `choices` a list of strings;
`answer` optional: an int, a digit string or missing) and returns one row per item: `id,
subject, pred` (1-based choice with the highest log-likelihood, `distill.scoring`),
`n_choices`, `score_1..score_K` (per-choice log-likelihoods, NaN past an item's own choices)
and, when the input carries gold answers, `gold` and `correct`. The model carries that
signature and an input example; MLflow checks the example by loading and scoring it while
logging, so a model that would not load is known at once.

`distill.models.load_student(base, adapter="runs:/<run_id>/adapter")` loads the same adapter
without pyfunc (it finds the folder holding adapter_config.json inside the model).

`log_adapter_model` logs it on the active run (this module is the model-logging edge of the
tracking layer: docs/design.md, "MLflow conventions").
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import tempfile
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import mlflow.pyfunc
import pandas as pd

ARTIFACT_KEY = "adapter"
CONFIG_KEY = "distill_model"
"""The artifact holding the model's config (a JSON file), read by `load_context`."""
CODE_FILE = Path(__file__).with_name("adapter_model_code.py")

INPUT_COLUMNS = ("id", "paragraph", "question", "question_plus", "choices", "answer", "subject", "source")
_REQUIRED_INPUTS = ("id", "question", "choices")

_PROGRESS_BAR_ENV = "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR"

_MODEL_NAME_FORBIDDEN = re.compile(r"[/:.%\"']")
"""What MLflow refuses in a logged model's name (`_validate_logged_model_name`)."""

EXAMPLE_ITEM = {
    "id": "example-1",
    "paragraph": "",
    "question": "훈민정음을 창제한 조선의 왕은?",
    "question_plus": "",
    "choices": ["태조", "세종", "정조", "고종"],
    "answer": 2,
    "subject": "korean_history",
    "source": "example",
}
"""The input example when the caller gives none: one item in the canonical form."""


def base_model_reference(config: dict[str, Any]) -> str:
    """What to load as the base: tiny-qwen3 or world-student by name (each rebuilds from its
    seed), else the local folder the run used when this machine has it, else the recorded hub id."""
    from distill.models import built_here

    name = str(config.get("base_model") or "")
    if built_here(name):
        return name
    path = str(config.get("base_model_path") or "")
    if path and Path(path).is_dir():
        return path
    return name or path


def recorded_config(model_config: Mapping[str, Any]) -> dict[str, Any]:
    """`model_config` as the model records it: the base as the user named it.

    A caller's `base_model_path` is dropped (for tiny-qwen3 or a hub id it is a cache folder on
    this machine); it is recorded again only as the absolute form of a directory the user gave."""
    from distill.models import built_here

    config = dict(model_config)
    config.pop("base_model_path", None)
    name = str(config.get("base_model") or "").strip()
    if not name:
        raise ValueError("model_config needs base_model: the model id or directory the run was given")
    config["base_model"] = name
    if not built_here(name):
        local = Path(name).expanduser()
        if local.is_dir():
            config["base_model_path"] = str(local.resolve())
    return config


def logged_model_name(text: str) -> str:
    """`text` as a valid MLflow logged-model name: `/ : . % " '` become `_`, spaces `-`.

    A name such as `orpo λ=0.13 r=8` becomes `orpo-λ=0_13-r=8`."""
    name = _MODEL_NAME_FORBIDDEN.sub("_", "-".join(str(text).split()))
    return name[:250] or "adapter"


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


def example_frame(items: Sequence[Any] | None = None) -> pd.DataFrame:
    """An input example: canonical items (MCQItem or dicts) as the DataFrame `predict` takes."""
    rows = [EXAMPLE_ITEM] if not items else [i.to_dict() if hasattr(i, "to_dict") else dict(i) for i in items]
    frame = pd.DataFrame([{column: row.get(column) for column in INPUT_COLUMNS} for row in rows])
    for column in ("paragraph", "question_plus", "subject", "source"):
        frame[column] = frame[column].fillna("").astype(str)
    frame["choices"] = [list(choices) for choices in frame["choices"]]
    if frame["answer"].isna().all():  # unlabelled items: leave the optional column out
        frame = frame.drop(columns=["answer"])
    return frame


def model_signature(config: Mapping[str, Any]):
    """Inputs (the MCQ item columns), outputs (the predictions frame) and the scoring params."""
    from mlflow.models import ModelSignature
    from mlflow.types.schema import AnyType, Array, ColSpec, ParamSchema, ParamSpec, Schema

    from distill.data.schema import MAX_CHOICES

    inputs = []
    for column in INPUT_COLUMNS:
        required = column in _REQUIRED_INPUTS
        if column == "choices":
            inputs.append(ColSpec(Array("string"), column, required=required))
        elif column == "answer":
            # An int, a digit string or missing: pandas turns a partly missing int column into
            # floats, which no fixed MLflow type accepts together with ints.
            inputs.append(ColSpec(AnyType(), column, required=False))
        else:
            inputs.append(ColSpec("string", column, required=required))
    outputs = [
        ColSpec("string", "id"),
        ColSpec("string", "subject"),
        ColSpec("long", "gold", required=False),
        ColSpec("long", "pred"),
        ColSpec("boolean", "correct", required=False),
        ColSpec("long", "n_choices"),
    ] + [ColSpec("double", f"score_{k}", required=k <= 2) for k in range(1, MAX_CHOICES + 1)]
    params = ParamSchema(
        [
            ParamSpec("thinking", "string", str(config.get("scoring_thinking") or "off")),
            ParamSpec("batch_size", "long", int(config.get("scoring_batch_size") or 8)),
        ]
    )
    return ModelSignature(inputs=Schema(inputs), outputs=Schema(outputs), params=params)


class AdapterModel(mlflow.pyfunc.PythonModel):
    """Base model + LoRA adapter, scoring MCQ items by choice log-likelihood."""

    def load_context(self, context) -> None:
        from distill.models import load_student

        config: dict[str, Any] = {}
        if CONFIG_KEY in context.artifacts:
            config.update(json.loads(Path(context.artifacts[CONFIG_KEY]).read_text(encoding="utf-8")))
        config.update(context.model_config or {})  # models logged before the config became an artifact
        self.config = config
        self.model, self.tokenizer = load_student(
            base_model_reference(config),
            adapter=context.artifacts[ARTIFACT_KEY],
            load_in_4bit=bool(config.get("base_load_in_4bit", False)),
            dtype=str(config.get("base_dtype") or "auto"),
        )

    def predict(self, context, model_input: pd.DataFrame, params: dict[str, Any] | None = None) -> pd.DataFrame:
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


@contextlib.contextmanager
def _quiet_logging():
    """No noise from MLflow while it logs: no artifact-copy progress bars (MLflow copies the
    adapter through its download code), and not the deprecation warning pandas 3 raises inside
    MLflow's own input-example code (`df.columns == range(...)` in mlflow.models.utils), which
    says nothing about this model."""
    previous = os.environ.get(_PROGRESS_BAR_ENV)
    os.environ[_PROGRESS_BAR_ENV] = "false"
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings(
                "ignore", message="Operation with range is deprecated", category=DeprecationWarning
            )
            yield
    finally:
        if previous is None:
            os.environ.pop(_PROGRESS_BAR_ENV, None)
        else:
            os.environ[_PROGRESS_BAR_ENV] = previous


def log_adapter_model(
    adapter_dir: Path,
    model_config: dict[str, Any],
    name: str = "adapter",
    *,
    input_example: Sequence[Any] | pd.DataFrame | None = None,
    params: Mapping[str, Any] | None = None,
    tags: Mapping[str, Any] | None = None,
):
    """Log `adapter_dir` as an `AdapterModel` on the active run; MLflow's ModelInfo (its
    `model_id` links metrics to the model, its `model_uri` loads it).

    `model_config` is described in the module docstring (`recorded_config` keeps the base as the
    user named it). `name` is made a valid logged-model name (`logged_model_name`).
    `input_example`: canonical items (MCQItem or dicts) or a ready frame; a built-in one-item
    example when None. `params` and `tags` go on the logged model (MLflow adds the run's params).
    The requirements pin the packages that load and score the adapter (bitsandbytes when the
    base loads in 4-bit)."""
    import importlib.metadata as md

    from distill import __version__

    def pinned(package: str) -> str:
        try:
            return f"{package}=={md.version(package)}"
        except md.PackageNotFoundError:
            return package

    config = recorded_config(model_config)
    requirements = [f"distill=={__version__}"] + [
        pinned(p) for p in ("torch", "transformers", "peft", "mlflow", "pandas", "tokenizers", "safetensors")
    ]
    if config.get("base_load_in_4bit"):
        requirements.append(pinned("bitsandbytes"))
    example = input_example if isinstance(input_example, pd.DataFrame) else example_frame(input_example)
    model_tags = {"distill.base_model": config["base_model"], **(tags or {})}
    with tempfile.TemporaryDirectory(prefix="distill-model-") as tmp, _quiet_logging():
        config_file = Path(tmp) / f"{CONFIG_KEY}.json"
        config_file.write_text(json.dumps(config, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
        return mlflow.pyfunc.log_model(
            name=logged_model_name(name),
            python_model=str(CODE_FILE),
            artifacts={ARTIFACT_KEY: str(adapter_dir), CONFIG_KEY: str(config_file)},
            signature=model_signature(config),
            input_example=example,
            metadata={"distill": config},
            pip_requirements=requirements,
            params=dict(params) if params else None,
            tags=model_tags,
        )
