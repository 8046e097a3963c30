"""The `eda` stage: where training data (seeds, pairs) sits relative to evaluation items.

`run(cfg)` loads every set as points (distill.eda.points), embeds all texts in one fitted space
(distill.eda.embed), draws a 2-D map (distill.eda.project), measures for each evaluation item
how many of its nearest neighbours are training points (distill.eda.overlap), and logs to
MLflow (experiment `distill-eda`):
- metrics `eda/mean_train_neighbour_share`, `eda/dominated_share`,
  `eda/median_nearest_train_distance`, `eda/expected_train_share`, `eda/n`, each overall
  (micro: pooled over all evaluation items) and per evaluation set (`.../<set>`);
- `eda/map.html` (scatter, colour by set, symbol by subject, hover shows the text) and
  `eda/overlap.html` (share bars, nearest-distance histogram);
- `eda/overlap.json` (an MLflow table) and `eda/overlap.parquet`: one row per evaluation item
  with its neighbour share and nearest training item; `eda/points.parquet`: every point with
  its map coordinates;
- the sets as MLflow dataset inputs (contexts seeds, training, eval; each digest the one every
  run shows for that content: `tracking.rows_digest` of the items or of the pairs as read), the
  params and the resolved config (`config.yaml`), and the summary as the run's description.
Steps: `load_sets` → `measure` (before the run opens) → `log_measurement`, `write_and_log_files`.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from distill import tracking
from distill.cli import unset_field
from distill.eda.points import PointSet
from distill.errors import ConfigError, InputError

ARTIFACT_DIR = "eda"
OFF = "off"
"""The value of `seeds` or `pairs` that leaves that set out of the run."""
SPEC_FORMATS = ("auto", "competition", "kice", "kmmlu", "jsonl")


@dataclass
class EdaConfig:
    """Embedding map of seeds, training pairs and evaluation items, and how much they overlap."""

    seeds: str | None = unset_field(
        "bundled",
        "Seed items (training side). bundled: the bundled seeds (distill/resources/seeds.jsonl); 'off': none.",
    )
    seeds_format: str = field(
        default="auto",
        metadata={
            "help": "Format of seeds: auto, a shipped format (competition, kice, kmmlu, jsonl, csat_qa, haerae) or a format spec file (.yaml)."
        },
    )
    pairs: str | None = unset_field(
        "bundled",
        "Preference pairs (training side): a .jsonl file, a folder with pairs.jsonl, or an MLflow URI (runs:/<id>/pairs). bundled: the bundled example pairs; 'off': none. The text of a pair is its problem (or its prompt when it has none).",
    )
    eval_sets: list[str] = unset_field(
        "bundled",
        "Evaluation sets, path[@format],path[@format],... as evaluate's datasets (format auto, a shipped format such as competition, kice, kmmlu, jsonl, or a format spec .yaml), e.g. a.json@kice,b.csv@competition. Each set is named after its file. bundled: the bundled eval sample.",
        default=[],
    )
    subject_map: str | None = unset_field(
        "none", "Optional file mapping item ids or categories to subjects (applied to seeds and evaluation sets)."
    )
    embedder: str = field(
        default="tfidf-svd",
        metadata={
            "help": "tfidf-svd (character 2-4-gram TF-IDF + truncated SVD, offline) or sentence-transformers:<local model path>. Fitted on all sets together, so distances are comparable."
        },
    )
    dimensions: int = field(
        default=96, metadata={"help": "SVD components of the tfidf-svd embedder (capped by the number of texts)."}
    )
    projection: str = field(
        default="umap",
        metadata={
            "help": "2-D map: umap (fixed random_state; PCA with a logged reason when there are too few points) or pca."
        },
    )
    k: int = field(
        default=10,
        metadata={
            "help": "Neighbours per evaluation item for the training-neighbour share (cosine, among training points and the item's own set)."
        },
    )
    experiment: str | None = unset_field("auto", "MLflow experiment. auto: distill-eda.")
    seed: int = field(default=0, metadata={"help": "Seed of the SVD and of UMAP."})
    output_dir: str = field(
        default="outputs/eda",
        metadata={
            "help": "Local folder for the figures and tables (one sub-folder per run; also logged as artifacts)."
        },
    )

    def __post_init__(self) -> None:
        from distill.cli import NONE_WORDS

        for name in ("seeds", "pairs", "subject_map", "experiment"):
            value = getattr(self, name)
            if isinstance(value, str) and value.strip().lower() in NONE_WORDS | {"bundled", "auto"}:
                setattr(self, name, None)
        if isinstance(self.eval_sets, str):
            self.eval_sets = [part.strip() for part in self.eval_sets.split(",") if part.strip()]
        self.eval_sets = [s for s in self.eval_sets or [] if str(s).strip().lower() != "bundled"]
        if self.k < 1:
            raise ConfigError(f"k must be at least 1, got {self.k}")
        if self.projection not in ("umap", "pca"):
            raise ConfigError(f"projection must be 'umap' or 'pca', got {self.projection!r}")
        from distill.data.loaders import is_known_format

        if not is_known_format(self.seeds_format):
            raise ConfigError(
                f"seeds_format must be one of {', '.join(SPEC_FORMATS)}, a shipped spec or a spec .yaml, "
                f"got {self.seeds_format!r}"
            )
        if self.eval_sets:
            eval_sets_of(self)  # a malformed list fails here, before anything runs


@dataclass
class EdaOutputs:
    run_id: str
    metrics: dict[str, float]
    overlap: Any
    """DataFrame, one row per evaluation item (see `distill.eda.overlap.overlap_table`)."""
    points: Any
    """DataFrame, one row per point: set, role, id, subject, text, x, y."""
    projection: str
    fallback_reason: str | None
    output_dir: Path


@dataclass(frozen=True)
class DataSet(PointSet):
    """A set on the map and the digest its dataset input carries."""

    digest: str = ""
    """`tracking.rows_digest` of the set's content (items as `MCQItem.to_dict()`, pairs as read):
    the digest every run that logs this content shows."""


# --------------------------------------------------------------------------------------------
# Config syntax


def eval_sets_of(cfg: EdaConfig) -> list[Any]:
    """The evaluation sets (`distill.evaluation.NamedSet`), named after their files; "seeds" and
    "pairs" stay the training sets' names (an evaluation file seeds.jsonl becomes seeds-2)."""
    from distill.evaluation import parse_sets

    return parse_sets(",".join(cfg.eval_sets) or "bundled", field="eval_sets", reserved=("seeds", "pairs"))


# --------------------------------------------------------------------------------------------
# Steps: load → measure → log


def load_sets(cfg: EdaConfig) -> list[PointSet]:
    """Every set named in `cfg` as points: seeds and pairs (training side), then the evaluation sets.

    Items whose choices repeat a text are kept (the real competition files have such items):
    the map looks at what items say, not whether they can be scored.
    """
    from distill.data.loaders import load_items
    from distill.eda.points import item_points, pair_points
    from distill.evaluation import dataset_digest
    from distill.pairs import load_pairs
    from distill.resources import resource_path

    sets = []
    if (cfg.seeds or "").strip().lower() != OFF:
        seeds_path = cfg.seeds or str(resource_path("seeds.jsonl"))
        items = load_items(seeds_path, cfg.seeds_format, cfg.subject_map, allow_duplicate_choices=True)
        sets.append(DataSet("seeds", "train", item_points(items), seeds_path, "seeds", dataset_digest(items)))
    if (cfg.pairs or "").strip().lower() != OFF:
        pairset = load_pairs(cfg.pairs or str(resource_path("example_pairs.jsonl")))
        sets.append(
            DataSet("pairs", "train", pair_points(pairset), pairset.lineage_source, "training", pairset.digest)
        )
    for named in eval_sets_of(cfg):
        items = load_items(named.path, named.format, cfg.subject_map, allow_duplicate_choices=True)
        if not items:
            raise InputError(named.path, "no items in this evaluation set")
        sets.append(DataSet(named.name, "eval", item_points(items), named.path, "eval", dataset_digest(items)))
    return sets


@dataclass
class Measurement:
    """Everything computed before the run opens: the points on the map and the overlap figures."""

    points: Any
    """DataFrame: set, role, id, subject, text, x, y."""
    embedder: str
    energy_share: float | None
    """Variance kept by the SVD (tfidf-svd only)."""
    projection: Any
    """distill.eda.project.Projection (method actually used, fallback reason)."""
    table: Any
    summaries: list[dict[str, Any]]
    overall: dict[str, Any]
    metrics: dict[str, float]


def measure(cfg: EdaConfig, sets: list[PointSet]) -> Measurement:
    """Embed every text in one space, map it to 2-D, and measure each evaluation item's neighbours."""
    from distill.eda.embed import make_embedder
    from distill.eda.overlap import overlap_metrics, overlap_table
    from distill.eda.points import points_frame
    from distill.eda.project import project_2d

    points = points_frame([(s.name, s.role, s.points) for s in sets])
    if not (points["role"] == "train").any():
        raise ConfigError("eda needs training points: give seeds or pairs (both are 'off')")
    embedder = make_embedder(cfg.embedder, seed=cfg.seed, n_components=cfg.dimensions)
    vectors = embedder.fit_transform(list(points["text"]))
    projection = project_2d(vectors, cfg.projection, seed=cfg.seed)
    points["x"], points["y"] = projection.coords[:, 0], projection.coords[:, 1]
    table, summaries, overall = overlap_table(points, vectors, cfg.k)
    return Measurement(
        points=points,
        embedder=embedder.name,
        energy_share=getattr(embedder, "energy_share", None),
        projection=projection,
        table=table,
        summaries=summaries,
        overall=overall,
        metrics=overlap_metrics(summaries, overall),
    )


def _log_inputs(sets: list[PointSet]) -> None:
    import pandas as pd

    for s in sets:
        frame = pd.DataFrame(s.points, columns=["id", "subject", "text"])
        digest = getattr(s, "digest", "") or tracking.rows_digest(s.points)
        tracking.log_dataset(frame, name=s.name, source=str(s.source), context=s.context, digest=digest)


def log_measurement(cfg: EdaConfig, sets: list[PointSet], m: Measurement) -> None:
    """Params, config, tags, the sets as dataset inputs and the overlap metrics on the active run."""
    tracking.log_config_params(cfg)
    tracking.log_config(cfg)
    tags = {
        "distill.stage": "eda",
        "eda.embedder": m.embedder,
        "eda.projection": m.projection.method,
        "eda.overall.average": "micro (pooled over all evaluation items)",
        "eda.neighbours": f"k={cfg.k} cosine neighbours among all training points and the item's own evaluation set, itself excluded",
    }
    if m.projection.fallback_reason:
        tags["eda.projection_fallback_reason"] = m.projection.fallback_reason
    if m.energy_share is not None:
        tracking.log_metrics({"eda/svd_energy_share": m.energy_share})
    tracking.set_tags(tags)
    _log_inputs(sets)
    tracking.log_metrics(m.metrics)


def write_and_log_files(cfg: EdaConfig, m: Measurement, run_dir: Path) -> str:
    """The pages, tables and summary under `run_dir`, logged under `eda/`; returns the summary."""
    from distill.charts import html_page
    from distill.eda.figures import distance_histogram, map_scatter, share_bars
    from distill.io import atomic_path, write_text_atomic

    map_title = f"{m.embedder}, {m.projection.method.upper()} map ({len(m.points)} points)"
    pages = {
        "map.html": html_page([map_scatter(m.points, title=map_title)], title="distill eda: map"),
        "overlap.html": html_page(
            [share_bars(m.summaries), distance_histogram(m.table)], title="distill eda: overlap"
        ),
    }
    for name, text in pages.items():
        write_text_atomic(run_dir / name, text)
    for name, frame in (("overlap.parquet", m.table), ("points.parquet", m.points)):
        with atomic_path(run_dir / name) as tmp:
            frame.to_parquet(tmp, index=False)
    summary = summary_text(
        m.points,
        m.summaries,
        m.overall,
        embedder=m.embedder,
        projection=m.projection.method,
        fallback_reason=m.projection.fallback_reason,
        k=cfg.k,
    )
    write_text_atomic(run_dir / "summary.txt", summary + "\n")
    tracking.log_table(m.table, artifact_file=f"{ARTIFACT_DIR}/overlap.json")
    for name in ("map.html", "overlap.html", "overlap.parquet", "points.parquet", "summary.txt"):
        tracking.log_artifact(run_dir / name, ARTIFACT_DIR)
    return summary


def summary_text(
    points, summaries, overall, *, embedder: str, projection: str, fallback_reason: str | None, k: int
) -> str:
    """The one-screen summary printed at the end of a run."""
    lines = ["eda: where training data sits relative to evaluation items", ""]
    counts = points.groupby(["set", "role"], sort=False).size()
    for (set_name, role), n in counts.items():
        lines.append(f"  {role:5s} {set_name:28s} {n:6d} items")
    lines.append(
        f"  embedder {embedder}; map {projection}" + (f" (fallback: {fallback_reason})" if fallback_reason else "")
    )
    lines.append("")
    header = f"  {'evaluation set':28s} {'n':>5s} {'share':>7s} {'expect':>7s} {'domin.':>7s} {'med.dist':>9s}"
    lines.append(f"  training-neighbour share among k={k} nearest (cosine); dominated = share > 0.5")
    lines.append(header)
    for row in [*summaries, {"eval_set": "(all, micro)", **overall}]:
        lines.append(
            f"  {str(row['eval_set'])[:28]:28s} {int(row['n']):5d} {row['mean_train_neighbour_share']:7.3f} "
            f"{row['expected_train_share']:7.3f} {row['dominated_share']:7.3f} {row['median_nearest_train_distance']:9.3f}"
        )
    return "\n".join(lines)


# --------------------------------------------------------------------------------------------
# The stage


def eda_links(sets: list[PointSet]) -> dict[str, str]:
    """Links to the runs whose outputs the map shows (a set read from a `runs:/` URI)."""
    return {
        f"{s.name} from": tracking.run_link(run_id) for s in sets if (run_id := tracking.run_of_uri(str(s.source)))
    }


def run(cfg: EdaConfig) -> EdaOutputs:
    """Load, embed, map, measure overlap, log figures and tables, print a one-screen summary."""
    started = time.perf_counter()
    tracking.configure(cfg.experiment, "eda")
    sets = load_sets(cfg)
    m = measure(cfg, sets)
    name = f"eda {' + '.join(s.name for s in sets)} · {cfg.embedder} {cfg.projection}"
    with tracking.start_run(run_name=name) as active, tracking.tagging_failure():
        run_id = active.info.run_id
        log_measurement(cfg, sets, m)
        run_dir = Path(cfg.output_dir) / run_id
        summary = write_and_log_files(cfg, m, run_dir)
        wall_s = time.perf_counter() - started
        tracking.log_metrics({"eda/wall_s": wall_s})
        summary += f"\nrun {run_id}  ·  files in {run_dir}  ·  {wall_s:.1f} s"
        tracking.describe_run(summary, eda_links(sets))

    print()
    print(summary)
    return EdaOutputs(
        run_id=run_id,
        metrics=m.metrics,
        overlap=m.table,
        points=m.points,
        projection=m.projection.method,
        fallback_reason=m.projection.fallback_reason,
        output_dir=run_dir,
    )
