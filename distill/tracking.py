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
