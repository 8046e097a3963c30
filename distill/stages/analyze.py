"""The `analyze` stage: error analysis of logged evaluate or train runs.

`run(cfg)` finds the predictions tables a run logged (`*predictions*.parquet`, as the evaluate
and train stages write them), picks the baseline (another run's, or the base model's: inside
the same run, or in the base run a train run links to with `distill.base_run.eval`), and hands
both to `distill.error_analysis.log_error_analysis`: confusion per
subject, items fixed and broken, answer-position bias, as tables and one plotly page under
`errors/`. Steps: resolve the predictions → open the run (a new one, or the analysed run
itself with `log_to_run`) → analyse and log → print a summary.
"""

from __future__ import annotations

import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from distill import tracking
from distill.cli import unset_field
from distill.error_analysis import ARTIFACT_DIR, ErrorAnalysis, log_error_analysis, summary_text
from distill.errors import ConfigError


@dataclass
class AnalyzeConfig:
    """Error analysis of logged evaluate or train runs: confusion, fixed/broken items, position bias."""

    run_id: str | None = unset_field(
        "none",
        "Run to analyse (required): an evaluate run, or a train or register run (its base model's predictions are those of the base run it links to).",
    )
    baseline_run: str | None = unset_field(
        "auto",
        "Optional run whose predictions are the baseline (fixed/broken are relative to it). auto: the base model's predictions of run_id (its own, or its base run's), if it has them.",
    )
    predictions_artifact: str | None = unset_field(
        "auto",
        "Artifact path of the predictions parquet in run_id; auto: found automatically (the one predictions.parquet, or the non-base one of two).",
    )
    baseline_artifact: str | None = unset_field(
        "auto",
        "Artifact path of the baseline predictions parquet (in baseline_run, or in run_id when baseline_run is empty); auto: found automatically.",
    )
    log_to_run: bool = field(default=False, metadata={"help": "Log into run_id itself instead of a new run."})
    experiment: str | None = unset_field("auto", "MLflow experiment of the new run. auto: distill-eval.")
    output_dir: str = field(
        default="outputs/analyze",
        metadata={
            "help": "Local folder for the tables and charts (one sub-folder per run; also logged as artifacts)."
        },
    )

    def __post_init__(self) -> None:
        from distill.cli import NONE_WORDS

        for name in ("run_id", "baseline_run", "predictions_artifact", "baseline_artifact", "experiment"):
            value = getattr(self, name)
            if isinstance(value, str) and value.strip().lower() in NONE_WORDS | {"auto"}:
                setattr(self, name, None)
        self.run_id = (self.run_id or "").strip()
        if not self.run_id:
            raise ConfigError("analyze needs --run_id (an evaluate or train run)")


@dataclass
class AnalyzeOutputs:
    run_id: str
    """The run the analysis was logged to."""
    analysis: ErrorAnalysis
    output_dir: Path


@dataclass
class Predictions:
    """The tables to compare: `base` alone (one model), or `base` against `new`."""

    base: Any
    """DataFrame of the baseline (or of the only model)."""
    base_label: str
    new: Any | None
    """DataFrame of the model being judged; None when the run has one model's predictions only."""
    new_label: str


# --------------------------------------------------------------------------------------------
# Finding the predictions in logged runs


def prediction_artifacts(run_id: str) -> list[str]:
    """Every `*predictions*.parquet` artifact of a run (paths relative to its artifact root)."""
    client = tracking.client()
    found, folders = [], [None]
    while folders:
        folder = folders.pop()
        for info in client.list_artifacts(run_id, folder):
            if info.is_dir:
                folders.append(info.path)
            elif info.path.endswith(".parquet") and "prediction" in Path(info.path).name:
                found.append(info.path)
    return sorted(found)


def split_base_and_main(paths: list[str]) -> tuple[str | None, str | None]:
    """(base, main) among a run's prediction artifacts: 'base' in the path marks the base model's.

    One artifact: it is the main one. Two, one of them marked base: (that, the other).
    Anything else is ambiguous: (None, None).
    """
    if len(paths) == 1:
        return None, paths[0]
    base = [p for p in paths if "base" in p.lower()]
    main = [p for p in paths if "base" not in p.lower()]
    if len(paths) == 2 and len(base) == 1 and len(main) == 1:
        return base[0], main[0]
    return None, None


def _download_parquet(run_id: str, artifact_path: str):
    import pandas as pd

    local = tracking.find_artifact(run_id, artifact_path, dst_path=tempfile.mkdtemp(prefix="distill-analyze-"))
    if local is None:
        raise ConfigError(f"run {run_id} has no artifact {artifact_path}")
    return pd.read_parquet(local)


def _check_run(run_id: str) -> None:
    if tracking.find_run(run_id) is None:
        raise ConfigError(f"{run_id!r} is not a run in the tracking store {tracking.tracking_uri()}")


def _against_baseline_run(cfg: AnalyzeConfig, main_path: str) -> Predictions:
    """The baseline is another run's predictions (its main table, or `baseline_artifact`)."""
    _check_run(cfg.baseline_run)
    baseline_paths = prediction_artifacts(cfg.baseline_run)
    baseline_path = cfg.baseline_artifact or split_base_and_main(baseline_paths)[1]
    if baseline_path is None:
        raise ConfigError(
            f"baseline run {cfg.baseline_run} has prediction artifacts {baseline_paths or 'none'}; pick one with --baseline_artifact"
        )
    base_df = _download_parquet(cfg.baseline_run, baseline_path)
    new_df = _download_parquet(cfg.run_id, main_path)
    return Predictions(base_df, f"baseline {cfg.baseline_run[:8]}", new_df, f"run {cfg.run_id[:8]}")


def resolve_predictions(cfg: AnalyzeConfig) -> Predictions:
    """The tables named (or found) in `cfg`'s runs, labelled for the figures."""
    _check_run(cfg.run_id)
    paths = prediction_artifacts(cfg.run_id)
    base_path, main_path = split_base_and_main(paths)
    if cfg.predictions_artifact:
        main_path = cfg.predictions_artifact
    if main_path is None:
        raise ConfigError(
            f"run {cfg.run_id} has prediction artifacts {paths or 'none'}; pick one with --predictions_artifact"
        )
    if cfg.baseline_run:
        return _against_baseline_run(cfg, main_path)
    short = cfg.run_id[:8]
    base_path = cfg.baseline_artifact or base_path
    main_df = _download_parquet(cfg.run_id, main_path)
    base_run = tracking.find_run(cfg.run_id).data.tags.get(tracking.BASE_RUN_TAG + "eval")
    if base_path is None and base_run and tracking.find_run(base_run) is not None:
        # A train or register run links to the base run that holds the base model's predictions.
        base_df = _download_parquet(base_run, split_base_and_main(prediction_artifacts(base_run))[1] or "")
        return Predictions(base_df, f"base model (run {base_run[:8]})", main_df, f"trained (run {short})")
    if base_path is None:  # one model only: confusion and position bias, no fixed/broken
        return Predictions(main_df, f"run {short}", None, "")
    base_df = _download_parquet(cfg.run_id, base_path)
    return Predictions(base_df, f"base model (run {short})", main_df, f"trained (run {short})")


# --------------------------------------------------------------------------------------------
# The stage


def _open_run(cfg: AnalyzeConfig):
    """The analysed run itself (`log_to_run`), or a new run in the analyze experiment."""
    if cfg.log_to_run:
        return tracking.resume_run(cfg.run_id)
    analysed = tracking.find_run(cfg.run_id)
    return tracking.start_run(run_name=f"analyze {analysed.info.run_name if analysed else cfg.run_id[:8]}")


def _log_run_info(cfg: AnalyzeConfig) -> None:
    if cfg.log_to_run:
        # The analysed run keeps its own params, config.yaml and stage tag: the analyze config
        # goes next to the analysis it produced.
        tracking.log_config(cfg, f"{ARTIFACT_DIR}/analyze_config.yaml")
    else:
        tracking.log_config_params(cfg)
        tracking.log_config(cfg)
        tracking.set_tags({"distill.stage": "analyze"})
    tracking.set_tags({"analyze.run_id": cfg.run_id, "analyze.baseline_run": cfg.baseline_run or "none"})


def run(cfg: AnalyzeConfig) -> AnalyzeOutputs:
    """Load the predictions of the given run(s), log the error analysis, print a summary."""
    started = time.perf_counter()
    if cfg.log_to_run:
        tracking.use_store()  # the analysed run's experiment, whatever it is
    else:
        tracking.configure(cfg.experiment, "analyze")
    predictions = resolve_predictions(cfg)
    with _open_run(cfg) as active:
        target = active.info.run_id
        _log_run_info(cfg)
        out_dir = Path(cfg.output_dir) / target
        analysis = log_error_analysis(
            predictions.base,
            predictions.new,
            base_label=predictions.base_label,
            new_label=predictions.new_label or "new",
            local_dir=out_dir,
        )
        summary = summary_text(analysis)
        if not cfg.log_to_run:  # the analysed run keeps its own description
            links = {"analysed": tracking.run_link(cfg.run_id)}
            if cfg.baseline_run:
                links["baseline"] = tracking.run_link(cfg.baseline_run)
            tracking.describe_run(summary, links)
    print()
    print(summary)
    print(f"logged to run {target}  ·  files in {out_dir}  ·  {time.perf_counter() - started:.1f} s")
    return AnalyzeOutputs(run_id=target, analysis=analysis, output_dir=out_dir)
