"""The tracking layer: every MLflow call the stages make goes through here.

Stages are data in, data out; what they record (params, metrics, tags, artifacts, dataset
inputs, the resolved config) they hand to these functions, so the conventions (where runs go,
secrets kept out, one digest per dataset, params `mlflow run` already logged) live in one place.
Model logging (`distill.adapter_model`) and the prompt registry (`distill.prompt_registry`) are
the two other modules that talk to MLflow; see docs/design.md, "MLflow conventions".

Default store is MLflow's local SQLite (`sqlite:///mlflow.db`, artifacts in `./mlruns`);
`MLFLOW_TRACKING_URI` points every stage at a tracking server instead, with no code change.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import sys
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

DEFAULT_TRACKING_URI = "sqlite:///mlflow.db"


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
    from distill.stages import get

    name = experiment or get(stage).experiment
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


def resume_run(run_id: str):
    """Reopen an existing run, in its own experiment, to add to it (a context manager like start_run).

    MLflow refuses to resume a run from another experiment than the one set, so that one is set first."""
    import mlflow

    existing = client().get_run(run_id)
    mlflow.set_experiment(experiment_id=existing.info.experiment_id)
    return mlflow.start_run(run_id=run_id)


def end_run(status: str = "FINISHED") -> None:
    """End the active run with this status (FINISHED, FAILED or KILLED)."""
    import mlflow

    mlflow.end_run(status=status)


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


# --------------------------------------------------------------------------------------------
# The active run: what a stage records.


def client():
    """An MlflowClient on the configured store (for reading runs and writing to other runs)."""
    import mlflow

    return mlflow.MlflowClient()


def tracking_uri() -> str:
    """The store runs go to (for messages that say where something was looked for)."""
    import mlflow

    return mlflow.get_tracking_uri()


def find_run(run_id: str):
    """The run with this id in the configured store, or None when the store has no such run."""
    from mlflow.exceptions import MlflowException

    try:
        return client().get_run(run_id)
    except MlflowException:
        return None


def register_model(model_uri: str, name: str, tags: Mapping[str, str] | None = None):
    """A new version of registered model `name` (created if new) from `model_uri`; MLflow's ModelVersion."""
    import mlflow

    return mlflow.register_model(model_uri, name, tags=dict(tags or {}))


def register_prompt(name: str, template: Any, *, commit_message: str, tags: Mapping[str, Any]):
    """A new version of prompt `name` in MLflow's prompt registry; MLflow's PromptVersion."""
    import warnings

    import mlflow

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # genai API migration notices
        return mlflow.genai.register_prompt(
            name=name,
            template=template,
            commit_message=commit_message,
            tags={str(k): redact(str(v)) for k, v in tags.items()},
        )


def active_run_id() -> str | None:
    import mlflow

    active = mlflow.active_run()
    return active.info.run_id if active else None


def log_metrics(metrics: Mapping[str, float], step: int | None = None) -> None:
    """Numbers on the active run (bools and ints as floats; anything else is a programming error)."""
    import mlflow

    if metrics:
        mlflow.log_metrics({k: float(v) for k, v in metrics.items()}, step=step)


def set_tags(tags: Mapping[str, Any]) -> None:
    """Tags on the active run; values as text, secrets redacted."""
    import mlflow

    if tags:
        mlflow.set_tags({k: redact(str(v)) for k, v in tags.items()})


def log_artifact(path: str | os.PathLike, artifact_path: str | None = None) -> None:
    import mlflow

    mlflow.log_artifact(str(path), artifact_path)


def log_artifacts(folder: str | os.PathLike, artifact_path: str | None = None) -> None:
    import mlflow

    mlflow.log_artifacts(str(folder), artifact_path)


def log_dict(data: Any, artifact_file: str) -> None:
    import mlflow

    mlflow.log_dict(data, artifact_file)


def log_table(frame: Any, artifact_file: str) -> None:
    """A pandas frame as an MLflow table (shown in the run's Artifacts and the evaluation UI)."""
    import mlflow

    mlflow.log_table(frame, artifact_file)


def log_config(cfg: Any, artifact_file: str = "config.yaml") -> None:
    """The resolved config as a YAML artifact that `--config` reads back to the same run config.

    Fields whose names look like credentials are left out, like params."""
    import dataclasses

    import yaml

    values = {f.name: getattr(cfg, f.name) for f in dataclasses.fields(cfg) if f.init}
    clean = {k: (list(v) if isinstance(v, tuple) else v) for k, v in values.items() if not _SECRET_NAME.search(k)}
    text = yaml.safe_dump(clean, allow_unicode=True, sort_keys=False)
    with tempfile.TemporaryDirectory(prefix="distill-config-") as tmp:
        path = Path(tmp) / Path(artifact_file).name
        path.write_text(redact(text), encoding="utf-8")
        log_artifact(path, str(Path(artifact_file).parent) if Path(artifact_file).parent != Path(".") else None)


def rows_digest(rows: Any) -> str:
    """The one digest of a dataset's content: sha256 over its rows as canonical JSON (16 hex).

    Every stage that logs a dataset uses this, so the same content has the same digest in the
    run that produced it and in every run that reads it."""
    digest = hashlib.sha256()
    for row in rows:
        digest.update(json.dumps(row, sort_keys=True, ensure_ascii=False, default=str).encode("utf-8"))
        digest.update(b"\n")
    return digest.hexdigest()[:16]


def log_dataset(
    frame: Any,
    *,
    name: str,
    source: str,
    context: str,
    digest: str | None = None,
    targets: str | None = None,
    tags: Mapping[str, str] | None = None,
) -> None:
    """A pandas frame as a dataset input of the active run.

    `source` is where the data can be found again: a `runs:/` URI of the producing run or the
    user's own file. `context` says how the run used it (train, dev, eval, seeds, ...); `tags`
    go on the input beside it (e.g. `distill.direction: output` for what the run wrote)."""
    import mlflow

    dataset = mlflow.data.from_pandas(frame, source=source, name=name, digest=digest, targets=targets)
    mlflow.log_input(dataset, context=context, tags=dict(tags) if tags else None)


def download_artifacts(
    *,
    run_id: str | None = None,
    artifact_path: str | None = None,
    artifact_uri: str | None = None,
    dst_path: str | None = None,
) -> str:
    """Fetch a run's artifact (or any artifact URI) to a local path; returns it."""
    import mlflow

    if artifact_uri is not None:
        return mlflow.artifacts.download_artifacts(artifact_uri=artifact_uri, dst_path=dst_path)
    return mlflow.artifacts.download_artifacts(run_id=run_id, artifact_path=artifact_path, dst_path=dst_path)


def find_artifact(run_id: str, artifact_path: str, dst_path: str | None = None) -> str | None:
    """Like download_artifacts, but None when the run has no such artifact (for a clear error upstream)."""
    from mlflow.exceptions import MlflowException

    try:
        return download_artifacts(run_id=run_id, artifact_path=artifact_path, dst_path=dst_path)
    except (MlflowException, OSError):
        return None
