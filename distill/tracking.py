"""MLflow at the edges: where runs go, and the few conventions every stage shares.

Default store is MLflow's local SQLite (`sqlite:///mlflow.db`, artifacts in `./mlruns`);
`MLFLOW_TRACKING_URI` points every stage at a tracking server instead, with no code change.
"""

from __future__ import annotations

import os
import re
import sys
from typing import Any

DEFAULT_TRACKING_URI = "sqlite:///mlflow.db"

EXPERIMENTS = {
    "mine": "distill-mine",
    "augment": "distill-augment",
    "train": "distill-train",
    "evaluate": "distill-eval",
    "sweep": "distill-sweep",
    "register": "distill-train",
    "pipeline": "distill-pipeline",
    "eda": "distill-eda",
}

SECRET_ENV_VARS = ("GEMINI_API_KEY", "GOOGLE_API_KEY", "OPENAI_API_KEY")

# A parameter whose name looks like a credential is never logged. "max_new_tokens" is a
# count, not a credential: only a name ending in "token" (hf_token, auth_token) matches.
_SECRET_NAME = re.compile(r"(api_?key|secret|password|passwd|credential|(^|_)token$)", re.IGNORECASE)


def use_store() -> None:
    """MLFLOW_TRACKING_URI when set (a tracking server), else the local `sqlite:///mlflow.db`."""
    import mlflow

    if not os.environ.get("MLFLOW_TRACKING_URI"):
        mlflow.set_tracking_uri(DEFAULT_TRACKING_URI)


def configure(experiment: str | None, stage: str) -> str:
    """Point MLflow at the configured store and experiment; return the experiment name.

    - Under `mlflow run` (MLFLOW_RUN_ID set, no run open yet) the run already exists in the
      experiment `mlflow run --experiment-name` chose, and MLflow refuses to join it from
      another one: the experiment is left alone.
    - Inside an open parent run (pipeline, sweep) children stay in the parent's experiment.
    - Otherwise the stage's own experiment (`distill-<stage>`), or `experiment` if given.
    """
    import mlflow

    use_store()
    name = experiment or EXPERIMENTS[stage]
    if mlflow.active_run() is not None:
        return name
    if os.environ.get("MLFLOW_RUN_ID"):
        if experiment:
            print(
                f"note: under `mlflow run` the run's experiment comes from --experiment-name; "
                f"experiment={experiment!r} is not applied",
                file=sys.stderr,
            )
        return name
    mlflow.set_experiment(name)
    return name


def start_run(run_name: str | None = None, nested: bool | None = None, tags: dict[str, str] | None = None):
    """Start (or join, under `mlflow run`) a run.

    `mlflow run` exports MLFLOW_RUN_ID; mlflow.start_run() resumes that run, so the project
    run and the stage's run are one and the same. A parent already active makes this nested.
    """
    import mlflow

    if nested is None:
        nested = mlflow.active_run() is not None
    return mlflow.start_run(run_name=run_name, nested=nested, tags=tags)


def safe_params(config: Any) -> dict[str, Any]:
    """A config's fields as MLflow params, with anything that looks like a secret removed."""
    import dataclasses

    params = dataclasses.asdict(config) if dataclasses.is_dataclass(config) else dict(config)
    clean: dict[str, Any] = {}
    for key, value in params.items():
        if _SECRET_NAME.search(key):
            continue
        if isinstance(value, (list, tuple)):
            value = ",".join(map(str, value))
        clean[key] = "" if value is None else value
    return clean


def redact(text: str) -> str:
    """Replace the value of any secret environment variable found in `text`."""
    for name in SECRET_ENV_VARS:
        secret = os.environ.get(name)
        if secret and len(secret) >= 6:
            text = text.replace(secret, f"<{name}>")
    return text


def log_params(params: dict[str, Any]) -> None:
    """Log a config's params on the active run, living with those `mlflow run` already logged.

    `mlflow run` logs the MLproject parameters itself, as the command line had them (an empty
    value arrives as the two characters `''`), and MLflow refuses to change a logged param. So a
    param already there with the same meaning is skipped, and one the config resolved to
    something else (the empty `dataset` that means the bundled sample) goes in as
    `resolved.<name>`.
    """
    import mlflow

    active = mlflow.active_run()
    logged = dict(mlflow.MlflowClient().get_run(active.info.run_id).data.params) if active else {}
    fresh: dict[str, Any] = {}
    for key, value in params.items():
        text = str(value)[:6000]  # MLflow's limit on a param value
        if key not in logged:
            fresh[key] = text
            continue
        before = logged[key]
        if before in ("''", '""'):
            before = ""
        if before != text:
            fresh[f"resolved.{key}"] = text
    if fresh:
        mlflow.log_params(fresh)
