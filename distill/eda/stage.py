"""The `eda` stage: where training data (seeds, pairs) sits relative to evaluation items.

`run(cfg)` loads every set, embeds all texts in one fitted space (distill.eda.embed), draws a
2-D map (distill.eda.project), measures for each evaluation item how many of its nearest
neighbours are training points (distill.eda.overlap), and logs to MLflow (experiment
`distill-eda`):
- metrics `eda/mean_train_neighbour_share`, `eda/dominated_share`,
  `eda/median_nearest_train_distance`, `eda/expected_train_share`, `eda/n`, each overall
  (micro: pooled over all evaluation items) and per evaluation set (`.../<set>`);
- `eda/map.html` (scatter, colour by set, symbol by subject, hover shows the text) and
  `eda/overlap.html` (share bars, nearest-distance histogram);
- `eda/overlap.json` (mlflow.log_table) and `eda/overlap.parquet`: one row per evaluation item
  with its neighbour share and nearest training item; `eda/points.parquet`: every point with
  its map coordinates;
- the sets as MLflow dataset inputs (contexts seeds, training, eval).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from distill.errors import ConfigError, InputError

ARTIFACT_DIR = "eda"
OFF = "off"
"""The value of `seeds` or `pairs` that leaves that set out of the run."""
SPEC_FORMATS = ("auto", "competition", "kice", "kmmlu", "jsonl")


@dataclass
class EdaConfig:
    """Embedding map of seeds, training pairs and evaluation items, and how much they overlap."""

    seeds: str | None = field(default=None, metadata={"help": "Seed items (training side). Empty: the bundled seeds (distill/resources/seeds.jsonl); 'off': none."})
    seeds_format: str = field(default="auto", metadata={"help": "Format of seeds: auto, competition, kice, kmmlu or jsonl."})
    pairs: str | None = field(default=None, metadata={"help": "Preference pairs (training side): a .jsonl file, a folder with pairs.jsonl, or an MLflow URI (runs:/<id>/pairs). Empty: the bundled example pairs; 'off': none. The text of a pair is its problem (or its prompt when it has none)."})
    eval_sets: list[str] = field(default_factory=list, metadata={"help": "Evaluation sets, comma-separated, each 'path' or 'path:format' (format auto, competition, kice, kmmlu or jsonl), e.g. a.json:kice,b.csv:competition. Each set is named after its file. Empty: the bundled eval sample."})
    subject_map: str | None = field(default=None, metadata={"help": "Optional file mapping item ids or categories to subjects (applied to seeds and evaluation sets)."})
    embedder: str = field(default="tfidf-svd", metadata={"help": "tfidf-svd (character 2-4-gram TF-IDF + truncated SVD, offline) or sentence-transformers:<local model path>. Fitted on all sets together, so distances are comparable."})
    dimensions: int = field(default=96, metadata={"help": "SVD components of the tfidf-svd embedder (capped by the number of texts)."})
    projection: str = field(default="umap", metadata={"help": "2-D map: umap (fixed random_state; PCA with a logged reason when there are too few points) or pca."})
    k: int = field(default=10, metadata={"help": "Neighbours per evaluation item for the training-neighbour share (cosine, among training points and the item's own set)."})
    experiment: str | None = field(default=None, metadata={"help": "MLflow experiment (default distill-eda)."})
    seed: int = field(default=0, metadata={"help": "Seed of the SVD and of UMAP."})
    output_dir: str = field(default="outputs/eda", metadata={"help": "Local folder for the figures and tables (one sub-folder per run; also logged as artifacts)."})

    def __post_init__(self) -> None:
        for name in ("seeds", "pairs", "subject_map", "experiment"):
            value = getattr(self, name)
            if isinstance(value, str) and not value.strip():
                setattr(self, name, None)
        if isinstance(self.eval_sets, str):
            self.eval_sets = [part.strip() for part in self.eval_sets.split(",") if part.strip()]
        self.eval_sets = list(self.eval_sets or [])
        if self.k < 1:
            raise ConfigError(f"k must be at least 1, got {self.k}")
        if self.projection not in ("umap", "pca"):
            raise ConfigError(f"projection must be 'umap' or 'pca', got {self.projection!r}")
        if self.seeds_format not in SPEC_FORMATS:
            raise ConfigError(f"seeds_format must be one of {', '.join(SPEC_FORMATS)}, got {self.seeds_format!r}")
        for spec in self.eval_sets:
            parse_dataset_spec(spec)


@dataclass
class EdaOutputs:
    run_id: str
    metrics: dict[str, float]
    overlap: Any
    """DataFrame, one row per evaluation item (see `overlap_table`)."""
    points: Any
    """DataFrame, one row per point: set, role, id, subject, text, x, y."""
    projection: str
    fallback_reason: str | None
    output_dir: Path


# --------------------------------------------------------------------------------------------
# Pure parts


def parse_dataset_spec(spec: str) -> tuple[str, str]:
    """'path' or 'path:format' → (path, format). Only a known format after the last ':' splits,
    so URIs (runs:/...) and paths with colons stay whole."""
    text = str(spec).strip()
    if not text:
        raise ConfigError("empty evaluation set in eval_sets")
    head, sep, tail = text.rpartition(":")
    if sep and head and tail.strip().lower() in SPEC_FORMATS:
        return head.strip(), tail.strip().lower()
    return text, "auto"


def unique_names(names: list[str]) -> list[str]:
    """Names made unique by a numeric suffix (two eval files with one stem stay apart)."""
    seen: dict[str, int] = {}
    out = []
    for name in names:
        count = seen.get(name, 0) + 1
        seen[name] = count
        out.append(name if count == 1 else f"{name}_{count}")
    return out


def points_frame(sets: list[tuple[str, str, list[dict[str, str]]]]):
    """(set name, role, [{id, subject, text}]) → one DataFrame: set, role, id, subject, text."""
    import pandas as pd

    rows = [
        {"set": name, "role": role, "id": str(p["id"]), "subject": str(p["subject"]), "text": p["text"]}
        for name, role, members in sets
        for p in members
    ]
    return pd.DataFrame(rows, columns=["set", "role", "id", "subject", "text"])


def overlap_table(points, vectors, k: int):
    """Per evaluation item: neighbour share, dominated flag, nearest training item and distance.

    Each evaluation set is measured against all training points plus its own items
    (distill.eda.overlap). Returns (table, per-set summary rows, overall summary).
    """
    import numpy as np
    import pandas as pd

    from distill.eda.overlap import DOMINATED_THRESHOLD, expected_train_share, neighbour_overlap, overlap_summary

    train_mask = (points["role"] == "train").to_numpy()
    train_points = points[train_mask].reset_index(drop=True)
    train_vectors = vectors[train_mask]
    if len(train_points) == 0:
        raise ConfigError("eda needs training points: give seeds or pairs (both are 'off')")
    tables, summaries = [], []
    for set_name in dict.fromkeys(points.loc[~train_mask, "set"]):
        mask = ((points["set"] == set_name) & ~pd.Series(train_mask, index=points.index)).to_numpy()
        part = points[mask].reset_index(drop=True)
        result = neighbour_overlap(vectors[mask], train_vectors, k=k)
        nearest = train_points.iloc[result.nearest_train_index].reset_index(drop=True)
        tables.append(pd.DataFrame({
            "eval_set": set_name,
            "eval_id": part["id"],
            "subject": part["subject"],
            "train_neighbour_share": result.train_share,
            "dominated": result.train_share > DOMINATED_THRESHOLD,
            "nearest_train_set": nearest["set"],
            "nearest_train_id": nearest["id"],
            "nearest_train_subject": nearest["subject"],
            "nearest_train_distance": result.nearest_train_distance,
            "eval_text": [_snippet(t) for t in part["text"]],
            "nearest_train_text": [_snippet(t) for t in nearest["text"]],
        }))
        summary = overlap_summary(result.train_share, result.nearest_train_distance)
        summary["expected_train_share"] = expected_train_share(len(train_points), len(part))
        summaries.append({"eval_set": set_name, "k": result.k, **summary})
    table = pd.concat(tables, ignore_index=True) if tables else pd.DataFrame()
    if table.empty:
        raise ConfigError("eda needs at least one evaluation item")
    overall = overlap_summary(table["train_neighbour_share"].to_numpy(), table["nearest_train_distance"].to_numpy())
    weights = np.array([s["n"] for s in summaries], dtype=float)
    overall["expected_train_share"] = float(np.average([s["expected_train_share"] for s in summaries], weights=weights))
    return table, summaries, overall


def overlap_metrics(summaries: list[dict[str, Any]], overall: dict[str, Any]) -> dict[str, float]:
    """`eda/<figure>` overall and `eda/<figure>/<set>` per evaluation set."""
    from distill.metrics import subject_keys

    names = ("mean_train_neighbour_share", "dominated_share", "median_nearest_train_distance", "expected_train_share", "n")
    metrics = {f"eda/{name}": float(overall[name]) for name in names}
    keys = subject_keys(s["eval_set"] for s in summaries)
    for summary in summaries:
        for name in names:
            metrics[f"eda/{name}/{keys[summary['eval_set']]}"] = float(summary[name])
    return metrics


def summary_text(points, summaries, overall, *, embedder: str, projection: str, fallback_reason: str | None, k: int) -> str:
    """The one-screen summary printed at the end of a run."""
    lines = ["eda: where training data sits relative to evaluation items", ""]
    counts = points.groupby(["set", "role"], sort=False).size()
    for (set_name, role), n in counts.items():
        lines.append(f"  {role:5s} {set_name:28s} {n:6d} items")
    lines.append(f"  embedder {embedder}; map {projection}" + (f" (fallback: {fallback_reason})" if fallback_reason else ""))
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


def _snippet(text: str, limit: int = 200) -> str:
    flat = " ".join(str(text).split())
    return flat[:limit] + ("…" if len(flat) > limit else "")


# --------------------------------------------------------------------------------------------
# Loading (files at the edge)


def _item_points(items) -> list[dict[str, str]]:
    from distill.eda.embed import item_text

    return [{"id": item.id, "subject": item.subject, "text": item_text(item)} for item in items]


def _pair_points(pair_set) -> list[dict[str, str]]:
    from distill.eda.embed import item_text

    points = []
    for pair in pair_set.pairs:
        if pair.problem is not None:
            text = item_text(pair.problem)
        else:  # no canonical problem: the user turn of the prompt is the problem as shown
            text = "\n".join(m["content"] for m in pair.messages if m.get("role") == "user")
        points.append({"id": pair.id, "subject": pair.subject, "text": text})
    return points


def load_sets(cfg: EdaConfig) -> list[tuple[str, str, list[dict[str, str]], str, str]]:
    """Every set as (name, role, points, source, MLflow input context).

    Items whose choices repeat a text are kept (the real competition files have such items):
    the map looks at what items say, not whether they can be scored.
    """
    from distill.data.loaders import load_items
    from distill.pairs import load_pairs
    from distill.resources import resource_path

    sets = []
    if (cfg.seeds or "").strip().lower() != OFF:
        seeds_path = cfg.seeds or str(resource_path("seeds.jsonl"))
        items = load_items(seeds_path, cfg.seeds_format, cfg.subject_map, allow_duplicate_choices=True)
        sets.append(("seeds", "train", _item_points(items), seeds_path, "seeds"))
    if (cfg.pairs or "").strip().lower() != OFF:
        pairs_source = cfg.pairs or str(resource_path("example_pairs.jsonl"))
        pair_set = load_pairs(pairs_source)
        sets.append(("pairs", "train", _pair_points(pair_set), pairs_source, "training"))
    specs = cfg.eval_sets or [f"{resource_path('eval_sample.jsonl')}:jsonl"]
    parsed = [parse_dataset_spec(spec) for spec in specs]
    # "seeds" and "pairs" name the training sets; an evaluation file called seeds.jsonl becomes seeds_2.
    names = unique_names(["seeds", "pairs", *[Path(path).stem or "eval" for path, _ in parsed]])[2:]
    for name, (path, fmt) in zip(names, parsed):
        items = load_items(path, fmt, cfg.subject_map, allow_duplicate_choices=True)
        if not items:
            raise InputError(path, "no items in this evaluation set")
        sets.append((name, "eval", _item_points(items), path, "eval"))
    return sets


def _log_inputs(sets) -> None:
    import hashlib
    import warnings

    import mlflow
    import pandas as pd

    for name, _role, members, source, context in sets:
        frame = pd.DataFrame(members, columns=["id", "subject", "text"])
        digest = hashlib.sha256("\n".join(f"{p['id']}\t{p['text']}" for p in members).encode("utf-8")).hexdigest()[:16]
        with warnings.catch_warnings():
            # "source can be interpreted in multiple ways": a local path is what it is.
            warnings.simplefilter("ignore", UserWarning)
            dataset = mlflow.data.from_pandas(frame, source=str(source), name=name, digest=digest)
        mlflow.log_input(dataset, context=context)


# --------------------------------------------------------------------------------------------
# The stage


def run(cfg: EdaConfig) -> EdaOutputs:
    """Load, embed, map, measure overlap, log figures and tables, print a one-screen summary."""
    import mlflow

    from distill import tracking
    from distill.eda.embed import make_embedder
    from distill.eda.figures import distance_histogram, html_page, map_scatter, share_bars
    from distill.eda.project import project_2d
    from distill.io import atomic_path, write_text_atomic

    started = time.perf_counter()
    tracking.configure(cfg.experiment, "eda")
    sets = load_sets(cfg)
    points = points_frame([(name, role, members) for name, role, members, _s, _c in sets])
    if not (points["role"] == "train").any():
        raise ConfigError("eda needs training points: give seeds or pairs (both are 'off')")

    embedder = make_embedder(cfg.embedder, seed=cfg.seed, n_components=cfg.dimensions)
    vectors = embedder.fit_transform(list(points["text"]))
    projection = project_2d(vectors, cfg.projection, seed=cfg.seed)
    points["x"], points["y"] = projection.coords[:, 0], projection.coords[:, 1]
    table, summaries, overall = overlap_table(points, vectors, cfg.k)
    metrics = overlap_metrics(summaries, overall)

    with tracking.start_run(run_name="eda") as active:
        run_id = active.info.run_id
        tracking.log_params(tracking.safe_params(cfg))
        tags = {
            "distill.stage": "eda",
            "eda.embedder": embedder.name,
            "eda.projection": projection.method,
            "eda.overall.average": "micro (pooled over all evaluation items)",
            "eda.neighbours": f"k={cfg.k} cosine neighbours among all training points and the item's own evaluation set, itself excluded",
        }
        if projection.fallback_reason:
            tags["eda.projection_fallback_reason"] = projection.fallback_reason
        energy = getattr(embedder, "energy_share", None)
        if energy is not None:
            mlflow.log_metric("eda/svd_energy_share", energy)
        mlflow.set_tags(tags)
        _log_inputs(sets)
        mlflow.log_metrics(metrics)

        run_dir = Path(cfg.output_dir) / run_id
        map_title = f"{embedder.name}, {projection.method.upper()} map ({len(points)} points)"
        files = {
            "map.html": html_page([map_scatter(points, title=map_title)], title="distill eda: map"),
            "overlap.html": html_page([share_bars(summaries), distance_histogram(table)], title="distill eda: overlap"),
        }
        for name, text in files.items():
            write_text_atomic(run_dir / name, text)
        with atomic_path(run_dir / "overlap.parquet") as tmp:
            table.to_parquet(tmp, index=False)
        with atomic_path(run_dir / "points.parquet") as tmp:
            points.to_parquet(tmp, index=False)
        summary = summary_text(points, summaries, overall, embedder=embedder.name, projection=projection.method,
                               fallback_reason=projection.fallback_reason, k=cfg.k)
        write_text_atomic(run_dir / "summary.txt", summary + "\n")
        mlflow.log_table(table, artifact_file=f"{ARTIFACT_DIR}/overlap.json")
        for name in ("map.html", "overlap.html", "overlap.parquet", "points.parquet", "summary.txt"):
            mlflow.log_artifact(str(run_dir / name), ARTIFACT_DIR)
        wall_s = time.perf_counter() - started
        mlflow.log_metric("eda/wall_s", wall_s)

    print()
    print(summary)
    print(f"run {run_id}  ·  files in {run_dir}  ·  {wall_s:.1f} s")
    return EdaOutputs(run_id=run_id, metrics=metrics, overlap=table, points=points, projection=projection.method,
                      fallback_reason=projection.fallback_reason, output_dir=run_dir)
