"""The tracking layer: every MLflow call the stages make goes through here.

Stages are data in, data out; what they record (params, metrics, tags, artifacts, dataset
inputs, the resolved config) they hand to these functions, so the conventions (where runs go,
secrets kept out, one digest per dataset, params `mlflow run` already logged) live in one place.
Model logging (`distill.adapter_model`) and the prompt registry (`distill.prompt_registry`) are
the two other modules that talk to MLflow; see docs/design.md, "MLflow conventions".

What a user sees in the MLflow UI is decided here too (section "What the UI shows"): parameter
values (`param_text`, `config_params`: named defaults instead of empty values, one number
format, paths as tags), run and model names (`short_number`), descriptions with links to the
runs used and made (`describe_run`, `run_link`), experiment descriptions (`configure`), and
dataset lineage (`log_dataset`, `record_output`, `dataset_source`: one digest function, one
context per kind of dataset, sources that are `runs:/` URIs or the user's own files).

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
    """MLFLOW_TRACKING_URI when set (a tracking server), else the local `sqlite:///mlflow.db`.

    Also keeps MLflow's own chatter out of a stage's console (`quiet_mlflow`)."""
    import mlflow

    quiet_mlflow()
    if not os.environ.get("MLFLOW_TRACKING_URI"):
        mlflow.set_tracking_uri(DEFAULT_TRACKING_URI)


def quiet_mlflow() -> None:
    """No artifact-download progress bars (MLflow draws one for every model or artifact it
    fetches) and no INFO lines from MLflow's loggers in a stage's output; a user who wants them
    sets MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR=true. The stages' own progress bars (training,
    scoring) stay: they are tqdm bars of distill's, not MLflow's."""
    import logging

    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    if logging.getLogger("mlflow").level in (logging.NOTSET, logging.INFO, logging.DEBUG):
        logging.getLogger("mlflow").setLevel(logging.WARNING)


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
        if os.environ.get("MLFLOW_EXPERIMENT_ID"):
            describe_experiment(os.environ["MLFLOW_EXPERIMENT_ID"], experiment_note(name))
        return name
    describe_experiment(mlflow.set_experiment(name).experiment_id, experiment_note(name))
    return name


def experiment_note(name: str) -> str:
    """An experiment's description: which stages log there by default, and what each does."""
    from distill.stages import STAGES

    stages = [s for s in STAGES.values() if s.experiment == name]
    if not stages:
        return f"Runs of distill (experiment {name})."
    lines = [f"Runs of distill's {', '.join(s.name for s in stages)} stage{'s' if len(stages) > 1 else ''}:", ""]
    lines += [f"- **{s.name}**: {s.summary}" for s in stages]
    lines += [
        "",
        "Each run's description is its summary, with links to the runs it used and made; "
        "per-subject results are the run's `subjects` table.",
    ]
    return "\n".join(lines)


def describe_experiment(experiment_id: str, text: str) -> None:
    """Set an experiment's description (the UI's "Description") unless it already has one: a
    description the user wrote stays."""
    from mlflow.exceptions import MlflowException

    store = client()
    try:
        current = store.get_experiment(experiment_id).tags.get(NOTE_TAG)
        if not current:
            store.set_experiment_tag(experiment_id, NOTE_TAG, redact(text))
    except MlflowException:  # a store that cannot tag experiments: the runs still work
        pass


SYSTEM_METRICS_INTERVAL_S = 5.0
"""Seconds between system-metric samples (CPU, memory, GPU) of a train or sweep run: MLflow's
default of 10 s leaves a run shorter than that with none (its monitor drops the sample it was
collecting when the run ends). MLFLOW_SYSTEM_METRICS_SAMPLING_INTERVAL, when set, wins."""


def start_run(
    run_name: str | None = None,
    nested: bool | None = None,
    tags: dict[str, str] | None = None,
    *,
    system_metrics: bool = False,
):
    """Start (or join, under `mlflow run`) a run.

    `mlflow run` exports MLFLOW_RUN_ID; mlflow.start_run() resumes that run, so the project
    run and the stage's run are one and the same. A parent already active makes this nested.
    `system_metrics`: sample CPU, memory (and GPU) into `system/*` while the run is open
    (train and sweep runs), every SYSTEM_METRICS_INTERVAL_S seconds.
    """
    import mlflow

    if nested is None:
        nested = mlflow.active_run() is not None
    return mlflow.start_run(
        run_name=run_name, nested=nested, tags=tags, log_system_metrics=_system_metrics(system_metrics)
    )


def _system_metrics(wanted: bool) -> bool | None:
    """log_system_metrics for mlflow.start_run: True with the sampling interval set, else None
    (MLflow's own MLFLOW_ENABLE_SYSTEM_METRICS_LOGGING decides)."""
    if not wanted:
        return None
    os.environ.setdefault("MLFLOW_SYSTEM_METRICS_SAMPLING_INTERVAL", str(SYSTEM_METRICS_INTERVAL_S))
    return True


def resume_run(run_id: str, *, system_metrics: bool = False):
    """Reopen an existing run, in its own experiment, to add to it (a context manager like start_run).

    MLflow refuses to resume a run from another experiment than the one set, so that one is set first."""
    import mlflow

    existing = client().get_run(run_id)
    mlflow.set_experiment(experiment_id=existing.info.experiment_id)
    return mlflow.start_run(run_id=run_id, log_system_metrics=_system_metrics(system_metrics))


def end_run(status: str = "FINISHED") -> None:
    """End the active run with this status (FINISHED, FAILED or KILLED)."""
    import mlflow

    mlflow.end_run(status=status)


def redact(text: str) -> str:
    """Replace the value of any secret environment variable found in `text`."""
    for name in SECRET_ENV_VARS:
        secret = os.environ.get(name)
        if secret and len(secret) >= 6:
            text = text.replace(secret, f"<{name}>")
    return text


def log_params(params: dict[str, Any]) -> None:
    """Log a config's params on the active run, living with those `mlflow run` already logged.

    `mlflow run` logs the MLproject parameters itself, as the command line had them, and MLflow
    refuses to change a logged param. So a param already there with the same meaning is skipped
    (`same_param`: 3 and 3.0, true and True, '' and a named default, a path and its file name),
    and one the config resolved to something else (`n_pairs=all` that trained 59 pairs) goes in
    as `resolved.<name>`. Values are written by `param_text`.
    """
    import mlflow

    active = mlflow.active_run()
    logged = dict(mlflow.MlflowClient().get_run(active.info.run_id).data.params) if active else {}
    fresh: dict[str, Any] = {}
    for key, value in params.items():
        text = param_text(value)[:6000]  # MLflow's limit on a param value
        if key not in logged:
            fresh[key] = text
        elif not same_param(logged[key], text):
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


def log_metrics(
    metrics: Mapping[str, float], step: int | None = None, *, model_id: str | None = None, dataset: Any = None
) -> None:
    """Numbers on the active run (bools and ints as floats; anything else is a programming error).

    `model_id` (a logged model's id) and `dataset` (what `log_dataset` returned) link the metrics
    to that model and that dataset: the model's page then lists them, and the datasets it was
    evaluated on."""
    import mlflow

    if metrics:
        mlflow.log_metrics({k: float(v) for k, v in metrics.items()}, step=step, model_id=model_id, dataset=dataset)


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

    Every stage that logs a dataset uses this (through `log_dataset`, `record_output`), so the
    same content has the same digest in the run that produced it and in every run that reads
    it. Rows are what the file holds: the JSON objects of a .jsonl file as read, MCQ items as
    `MCQItem.to_dict()`."""
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
    rows: Any = None,
    targets: str | None = None,
    tags: Mapping[str, str] | None = None,
):
    """A pandas frame as a dataset input of the active run; the MLflow dataset (for `log_metrics`).

    `source` is where the data can be found again (`dataset_source`): a `runs:/` URI of the
    producing run or the user's own file, never a temporary copy. `context` is one of
    DATASET_CONTEXTS (how the run used it). The digest is `rows_digest(rows)` (or the one given,
    computed the same way); the frame is only what the UI previews. Only inputs are logged here:
    what a run writes is an artifact (`record_output`)."""
    import warnings

    import mlflow

    if digest is None:
        digest = rows_digest(rows if rows is not None else frame.to_dict("records"))
    with warnings.catch_warnings():
        # Local paths "can be interpreted in multiple ways" (all of them local); the integer-schema
        # hint is about model signatures; pandas warns about MLflow's own keyword use.
        warnings.filterwarnings("ignore", message="The specified dataset source can be interpreted")
        warnings.filterwarnings("ignore", message="Hint: Inferred schema contains integer")
        warnings.filterwarnings("ignore", category=FutureWarning)
        warnings.filterwarnings("ignore", category=DeprecationWarning)
        dataset = mlflow.data.from_pandas(
            frame, source=_dataset_source_object(dataset_source(source)), name=name, digest=digest, targets=targets
        )
        mlflow.log_input(dataset, context=context, tags=dict(tags) if tags else None)
    return dataset


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


# --------------------------------------------------------------------------------------------
# What the UI shows: parameter values, names, descriptions and links, dataset lineage.

NOTE_TAG = "mlflow.note.content"
"""The tag MLflow shows as a run's (or an experiment's) description; markdown."""
NOTE_LIMIT = 7500
"""Characters of a description kept (MLflow caps a tag value at 8000)."""
UNSET = "unset"
"""Field metadata: the word that names a field's unset value (None) in params, MLproject and on
the command line ("all" pairs, the "bundled" data, "auto", ...); "none" when a field has none."""
UNSET_WORD = "none"
LOCATION_FIELDS = frozenset({"experiment", "output_dir", "cache_path", "storage"})
"""Config fields that say where a run reads or writes its own files, never what it computes: tags
(`distill.<name>`), not params, so the "diff only" view shows what differs in the results."""
PATH_TAG = "distill.path."
"""`distill.path.<field>`: the full local path a field named (its param holds the file name)."""
OUTPUT_TAG = "distill.output."
"""`distill.output.<kind>` = the `runs:/` URI of what a run wrote, `.digest` its `rows_digest`,
`.rows` its size: the producer's side of a dataset a later run logs as an input."""
BASE_RUN_TAG = "distill.base_run."
"""`distill.base_run.<context>`: the run holding the base model's figures on that split
(`distill.eval_cache`), which train, register and evaluate runs link to instead of repeating them."""
DATASET_CONTEXTS = ("seeds", "hard_negatives", "training", "dev", "eval")
"""One context per kind of dataset a run reads: mine's items (seeds), augment's input
(hard_negatives), the pairs trained on (training), the dev split, the test split (eval)."""
_URI_SCHEME = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*:/")


def short_number(value: float | int, digits: int = 2) -> str:
    """A number for a name: `digits` significant digits, small ones as 1.6e-4 (0.12520 -> 0.13,
    0.00016 -> 1.6e-4, 16 -> 16)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return str(value)
    if isinstance(value, int) or float(value).is_integer() and abs(value) < 1e6:
        return str(int(value))
    if value != 0 and abs(value) < 1e-2:
        mantissa, exponent = f"{value:.{digits - 1}e}".split("e")
        return f"{mantissa.rstrip('0').rstrip('.')}e{int(exponent)}"
    return f"{value:.{digits}g}"


def round_significant(value: float, digits: int = 4) -> float:
    """`value` rounded to `digits` significant digits (0.12520653814999466 -> 0.1252)."""
    import math

    if value == 0 or not math.isfinite(value):
        return value
    return round(value, digits - 1 - math.floor(math.log10(abs(value))))


def param_text(value: Any, unset: str = UNSET_WORD) -> str:
    """A value as a param: bools as true/false, numbers in one form (3 and 3.0 are both `3`, a
    float in its shortest exact form), lists comma-separated, None (and an empty list) as the
    field's unset word."""
    if value is None or (isinstance(value, (list, tuple)) and not value):
        return unset
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        return str(int(value)) if value.is_integer() and abs(value) < 1e15 else repr(value)
    if isinstance(value, (list, tuple)):
        return ",".join(param_text(v) for v in value)
    return str(value)


def same_param(before: str, text: str) -> bool:
    """Whether a logged param and a new value mean the same (see `log_params`)."""
    if before == text:
        return True
    if before in ("", "''", '""'):
        return text in ("", UNSET_WORD, "all", "bundled", "auto")
    try:
        return float(before) == float(text)
    except ValueError:
        pass
    words = {"true": "true", "false": "false", "yes": "true", "no": "false", "on": "true", "off": "false"}
    if before.lower() in words and text.lower() in words:
        return words[before.lower()] == words[text.lower()]
    return is_local_path(before) and Path(before).name == text


def is_local_path(text: Any) -> bool:
    """Whether a value names a file or folder on this machine (not a URI, not a hub id)."""
    if not isinstance(text, str) or not text.strip() or _URI_SCHEME.match(text) or "\n" in text:
        return False
    if text.startswith(("/", "~", "./", "../")):
        return True
    try:
        return os.sep in text and Path(text).exists()
    except OSError:
        return False


def config_params(config: Any, **effective: Any) -> tuple[dict[str, str], dict[str, str]]:
    """(params, tags) of a config (a dataclass, or a mapping of values).

    - anything whose name looks like a credential is left out of both;
    - LOCATION_FIELDS go to tags `distill.<name>`;
    - a local path goes to the tag `distill.path.<name>`, its param is the file's name;
    - unset values are the field's `unset` word (metadata), else "none"; numbers and bools as
      `param_text` writes them;
    - `effective` replaces a field's value with what the run actually used (`n_pairs=59`), or
      adds a param."""
    import dataclasses

    if dataclasses.is_dataclass(config):
        fields = [f for f in dataclasses.fields(config) if f.init]
        values = {f.name: getattr(config, f.name) for f in fields}
        unset = {f.name: f.metadata.get(UNSET, UNSET_WORD) for f in fields}
    else:
        values, unset = dict(config), {}
    values.update(effective)
    params: dict[str, str] = {}
    tags: dict[str, str] = {}
    for key, value in values.items():
        if _SECRET_NAME.search(key) or isinstance(value, Mapping):
            continue
        if key in LOCATION_FIELDS:
            if value is not None:
                tags[f"distill.{key}"] = str(value)
            continue
        if is_local_path(value):
            tags[PATH_TAG + key] = str(Path(value).expanduser().resolve())
            params[key] = Path(value).name or str(value)
            continue
        params[key] = param_text(value, unset.get(key, UNSET_WORD))
    return params, tags


def log_config_params(config: Any, **effective: Any) -> None:
    """`config_params` of a config on the active run: params (`log_params`) and path tags."""
    params, tags = config_params(config, **effective)
    log_params(params)
    set_tags(tags)


def run_param(run: Any, name: str, default: str | None = None) -> str | None:
    """A param of a logged run as the run used it: `resolved.<name>` when the run logged one."""
    params = run.data.params
    return params.get(f"resolved.{name}", params.get(name, default))


def run_url(run_id: str, experiment_id: str | None = None) -> str:
    """The UI's address of a run, relative to the MLflow UI's root (what a description links to)."""
    if experiment_id is None:
        found = find_run(run_id)
        experiment_id = found.info.experiment_id if found is not None else "0"
    return f"#/experiments/{experiment_id}/runs/{run_id}"


def run_link(run_id: str, label: str | None = None, experiment_id: str | None = None) -> str:
    """A markdown link to a run, labelled with its name (or `label`)."""
    found = find_run(run_id) if label is None or experiment_id is None else None
    if found is not None:
        experiment_id = experiment_id or found.info.experiment_id
        label = label or found.info.run_name
    return f"[{label or run_id[:8]}]({run_url(run_id, experiment_id or '0')})"


def model_link(model_id: str, label: str, experiment_id: str) -> str:
    """A markdown link to a logged model's page."""
    return f"[{label}](#/experiments/{experiment_id}/models/{model_id})"


def version_link(name: str, version: str) -> str:
    """A markdown link to a registered model version."""
    return f"[{name} version {version}](#/models/{name}/versions/{version})"


def describe_run(summary: str, links: Mapping[str, str] | None = None, *, run_id: str | None = None) -> None:
    """A run's description: `links` ({what: markdown link}) first, then the one-screen `summary`
    as preformatted text. On the active run, or on `run_id`."""
    lines = [f"- {what}: {link}" for what, link in (links or {}).items() if link]
    text = "\n".join(lines + ([""] if lines else []) + ["```text", summary.strip(), "```"])
    if len(text) > NOTE_LIMIT:
        text = text[: NOTE_LIMIT - 20] + "\n…\n```"
    if run_id is None:
        set_tags({NOTE_TAG: text})
    else:
        client().set_tag(run_id, NOTE_TAG, redact(text))


def artifact_uri(run_id: str, path: str) -> str:
    return f"runs:/{run_id}/{path.strip('/')}"


def run_of_uri(uri: str) -> str | None:
    """The run id a `runs:/<id>/...` URI names (None for anything else)."""
    match = re.match(r"^runs:/([0-9a-f]{32})(/|$)", str(uri or ""))
    return match.group(1) if match else None


def dataset_source(source: str | os.PathLike) -> str:
    """Where a dataset can be found again: an MLflow URI as given (`runs:/<producer>/<path>`),
    else the user's file, absolute. A file inside the system's temporary folder is refused: it
    would be gone when someone follows the link (log the producing run's URI instead)."""
    text = str(source).strip()
    if _URI_SCHEME.match(text) and not text.startswith("file:"):
        return text
    path = Path(text.removeprefix("file://")).expanduser().resolve()
    temp = Path(tempfile.gettempdir()).resolve()
    if (
        path.is_relative_to(temp)
        and path.relative_to(temp).parts[:1]
        and path.relative_to(temp).parts[0].startswith("distill-")
    ):
        raise ValueError(f"dataset source {path} is a temporary copy; log the URI it was downloaded from")
    return str(path)


_SOURCE_CLASS: list[type] = []


def _dataset_source_object(source: str) -> Any:
    """The MLflow DatasetSource of `source`: a local file as MLflow's local source; a `runs:/`,
    `models:/` or other MLflow URI as `MlflowUriSource` (MLflow resolves none of these itself)."""
    if not _URI_SCHEME.match(source) or source.startswith("file:"):
        return source
    if not _SOURCE_CLASS:
        from mlflow.data.dataset_source import DatasetSource
        from mlflow.data.dataset_source_registry import register_dataset_source

        class MlflowUriSource(DatasetSource):
            """A dataset found at an MLflow URI (an artifact of the run that produced it)."""

            def __init__(self, uri: str):
                self.uri = uri

            @staticmethod
            def _get_source_type() -> str:
                return "mlflow_uri"

            def load(self, dst_path: str | None = None) -> str:
                return download_artifacts(artifact_uri=self.uri, dst_path=dst_path)

            @staticmethod
            def _can_resolve(raw_source: Any) -> bool:
                return isinstance(raw_source, str) and raw_source.startswith(
                    ("runs:/", "models:/", "mlflow-artifacts:/")
                )

            @classmethod
            def _resolve(cls, raw_source: Any) -> MlflowUriSource:
                return cls(str(raw_source))

            def to_dict(self) -> dict[str, Any]:
                return {"uri": self.uri}

            @classmethod
            def from_dict(cls, source_dict: dict[Any, Any]) -> MlflowUriSource:
                return cls(source_dict["uri"])

        register_dataset_source(MlflowUriSource)
        _SOURCE_CLASS.append(MlflowUriSource)
    return _SOURCE_CLASS[0](source)


def record_output(kind: str, artifact_path: str, rows: Any, *, run_id: str | None = None) -> str:
    """What a run wrote, for the runs that will read it: tags `distill.output.<kind>` (the
    `runs:/` URI of the artifact), `.digest` (`rows_digest(rows)`, the digest a consumer's
    `log_dataset` shows for the same content) and `.rows`. Returns the URI. The artifact itself
    is logged by the caller; outputs are never logged as dataset inputs."""
    rows = list(rows)
    run_id = run_id or active_run_id()
    if run_id is None:
        raise RuntimeError("record_output needs an active run")
    uri = artifact_uri(run_id, artifact_path)
    tags = {
        OUTPUT_TAG + kind: uri,
        f"{OUTPUT_TAG}{kind}.digest": rows_digest(rows),
        f"{OUTPUT_TAG}{kind}.rows": len(rows),
    }
    if run_id == active_run_id():
        set_tags(tags)
    else:
        for key, value in tags.items():
            client().set_tag(run_id, key, str(value))
    return uri


def logged_model_id(uri: str | None) -> str | None:
    """The logged model a model URI names (`models:/m-...`, or `runs:/<run>/<name>`); None when
    it names none (a local folder, a registered model by name)."""
    text = str(uri or "")
    match = re.match(r"^models:/(m-[0-9a-f]{32})/?$", text)
    if match:
        return match.group(1)
    run_id = run_of_uri(text)
    if run_id is None:
        return None
    name = text.split("/", 3)[3].strip("/") if text.count("/") >= 3 else ""
    found = find_run(run_id)
    if found is None or not name:
        return None
    models = client().search_logged_models(
        experiment_ids=[found.info.experiment_id], filter_string=f"source_run_id = '{run_id}'"
    )
    return next((m.model_id for m in models if m.name == name), None)


def find_or_log_run(
    key_tag: str,
    key: str,
    *,
    name: str,
    tags: Mapping[str, Any],
    params: Mapping[str, Any],
    metrics: Mapping[str, float],
    summary: str,
    dataset: Any = None,
    context: str | None = None,
    tables: Mapping[str, Any] | None = None,
    artifacts: Mapping[str, str | os.PathLike] | None = None,
) -> str | None:
    """A finished run, in the active run's experiment, that holds figures many runs refer to (the
    base model's evaluation of one split): the one tagged `key_tag=key` there, else a new one
    logged now (without becoming the active run). Returns its id; None outside a run.

    `dataset` (from `log_dataset`) becomes its input with `context`; `tables` ({artifact file:
    frame}) MLflow tables; `artifacts` ({artifact folder: local file}) plain files."""
    import time

    from mlflow.entities import DatasetInput, InputTag, Metric, Param, RunTag

    active = active_run_id()
    if active is None:
        return None
    store = client()
    experiment_id = store.get_run(active).info.experiment_id
    found = store.search_runs(
        [experiment_id], filter_string=f"tags.`{key_tag}` = '{key}' AND attributes.status = 'FINISHED'", max_results=1
    )
    if found:
        return found[0].info.run_id
    run = store.create_run(
        experiment_id, run_name=name, tags={key_tag: key, **{k: redact(str(v)) for k, v in tags.items()}}
    )
    run_id = run.info.run_id
    now = int(time.time() * 1000)
    store.log_batch(
        run_id,
        metrics=[Metric(k, float(v), now, 0) for k, v in metrics.items()],
        params=[Param(k, param_text(v)) for k, v in params.items()],
        tags=[RunTag(NOTE_TAG, redact(f"```text\n{summary.strip()}\n```"))],
    )
    if dataset is not None and context:
        entity = dataset._to_mlflow_entity() if hasattr(dataset, "_to_mlflow_entity") else dataset
        store.log_inputs(run_id, datasets=[DatasetInput(entity, tags=[InputTag("mlflow.data.context", context)])])
    for artifact_file, frame in (tables or {}).items():
        store.log_table(run_id, frame, artifact_file)
    for folder, path in (artifacts or {}).items():
        store.log_artifact(run_id, str(path), folder)
    store.set_terminated(run_id, "FINISHED")
    return run_id


# --------------------------------------------------------------------------------------------
# Failing loudly, and resuming: why a run failed, and runs a killed process left RUNNING.

FAILURE_REASON_TAG = "distill.failure_reason"
"""A short tag on a FAILED run saying why (failure_rate, permanent_error, config_error, ...)."""
FAILURE_TAG = "distill.failure"
"""The one-line message of a failed run (a distill error's own text, redacted; never a traceback)."""
PROCESS_TAG = "distill.process"
"""host/pid/start of the process that runs a run: tells a killed run from one still running."""
RESUME_TAG = "distill.resume_key"
"""What a run resumes from (a digest of its response cache's path): runs that share it share work."""
CLOSED_BY_TAG = "distill.closed_by"
"""On a run marked KILLED by a later run: the run that found it dead and resumed its work."""


def failure_tags(exc: BaseException) -> dict[str, str]:
    """The tags that say why a run failed: the reason tag always, the message for a distill error."""
    from distill.errors import DistillError, failure_reason

    tags = {FAILURE_REASON_TAG: failure_reason(exc)}
    if isinstance(exc, DistillError):
        tags[FAILURE_TAG] = redact(str(exc).splitlines()[0] if str(exc) else type(exc).__name__)[:1000]
    return tags


def tagging_failure():
    """A context manager for a stage's body inside its run: an exception leaving it tags the
    active run with why (`failure_tags`) before MLflow marks the run FAILED."""
    import contextlib

    @contextlib.contextmanager
    def manager():
        try:
            yield
        except BaseException as exc:
            try:
                set_tags(failure_tags(exc))
            except Exception:  # the store may be what failed: never mask the real error
                pass
            raise

    return manager()


def process_identity() -> str:
    """host/pid/start of this process (start: clock ticks since boot, where /proc says it)."""
    import socket

    return f"{socket.gethostname()}/{os.getpid()}/{_process_start(os.getpid()) or ''}"


def _process_start(pid: int) -> str | None:
    """The process's start time and whether it is a zombie, from /proc (None where there is none)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = stat[stat.rindex(")") + 2 :].split()  # after "pid (comm) "
    return None if fields[0] == "Z" else fields[19]


def process_gone(identity: str | None) -> bool:
    """True when the process `identity` names ran on this host and no longer runs; False when
    it runs, or when that cannot be told (another host, no identity)."""
    import socket

    try:
        host, pid_text, start = (identity or "").split("/")
        pid = int(pid_text)
    except ValueError:
        return False
    if host != socket.gethostname():
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        return False  # it exists, under another user
    now = _process_start(pid)
    if Path("/proc").is_dir() and now is None:
        return True  # a zombie: killed, not yet reaped
    return bool(start) and now is not None and now != start  # the pid now belongs to another process


def close_stale_runs(resume_key: str) -> list[Any]:
    """Mark the active run as resuming `resume_key` (with its process identity), and mark KILLED
    every other run that resumes the same thing, is still RUNNING and whose process is gone (it
    was killed before MLflow could hear of it). Returns the runs it closed (MLflow Runs)."""
    import mlflow

    set_tags({RESUME_TAG: resume_key, PROCESS_TAG: process_identity()})
    active = active_run_id()
    stale = mlflow.search_runs(
        search_all_experiments=True,
        filter_string=f"tags.`{RESUME_TAG}` = '{resume_key}' and attributes.status = 'RUNNING'",
        output_format="list",
    )
    closed = []
    for run in stale:
        if run.info.run_id == active or not process_gone(run.data.tags.get(PROCESS_TAG)):
            continue
        client().set_tag(run.info.run_id, CLOSED_BY_TAG, active or "")
        client().set_tag(run.info.run_id, FAILURE_REASON_TAG, "killed")
        client().set_terminated(run.info.run_id, "KILLED")
        closed.append(run)
    return closed


# --------------------------------------------------------------------------------------------
# Traces: spans of LLM calls, in the active run's Traces tab (distill/llm/tracing.py decides what).


def trace_destination() -> tuple[str, str] | None:
    """(run id, experiment id) of the active run, where LLM traces go; None outside a run (then
    nothing is traced: a backend used on its own writes nothing to MLflow)."""
    import mlflow

    active = mlflow.active_run()
    return None if active is None else (active.info.run_id, active.info.experiment_id)


def start_span(
    name: str,
    *,
    destination: tuple[str, str],
    parent: Any = None,
    span_type: str = "UNKNOWN",
    inputs: Any = None,
    attributes: Mapping[str, Any] | None = None,
    start_ns: int | None = None,
):
    """A span started at `start_ns`, under `parent`, or as the root of a new trace linked to the
    run of `destination` (MLflow links a trace to a run by its `mlflow.sourceRun` metadata; it is
    set here explicitly, since the span may be made on a thread that has no active run)."""
    import mlflow
    from mlflow.tracing.constant import TraceMetadataKey

    run_id, experiment_id = destination
    root = parent is None
    return mlflow.start_span_no_context(
        name,
        span_type=span_type,
        parent_span=parent,
        inputs=inputs,
        attributes={k: v for k, v in (attributes or {}).items() if v is not None},
        experiment_id=experiment_id if root else None,
        metadata={TraceMetadataKey.SOURCE_RUN: run_id} if root else None,
        start_time_ns=start_ns,
    )


def end_span(
    span,
    *,
    outputs: Any = None,
    attributes: Mapping[str, Any] | None = None,
    error: str | None = None,
    end_ns: int | None = None,
) -> None:
    """End a span at `end_ns`, OK or (with `error`) ERROR."""
    from mlflow.entities import SpanEvent, SpanStatusCode

    if error:
        span.add_event(SpanEvent("error", attributes={"message": redact(error)}))
    span.end(
        outputs=outputs,
        attributes={k: v for k, v in (attributes or {}).items() if v is not None},
        status=SpanStatusCode.ERROR if error else SpanStatusCode.OK,
        end_time_ns=end_ns,
    )


def token_usage_attribute(input_tokens: int, output_tokens: int) -> dict[str, Any]:
    """The span attribute MLflow reads token counts from (shown per span and summed per trace)."""
    from mlflow.tracing.constant import SpanAttributeKey

    return {
        SpanAttributeKey.CHAT_USAGE: {
            "input_tokens": int(input_tokens),
            "output_tokens": int(output_tokens),
            "total_tokens": int(input_tokens) + int(output_tokens),
        }
    }


def flush_traces() -> None:
    """Write out traces MLflow still holds in memory (it may export them in the background)."""
    import mlflow

    mlflow.flush_trace_async_logging()


def search_traces(run_id: str) -> list[Any]:
    """The traces linked to a run (MLflow Trace objects, spans included)."""
    import mlflow

    flush_traces()
    return mlflow.search_traces(run_id=run_id, return_type="list")
