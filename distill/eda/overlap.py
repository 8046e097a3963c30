"""How close evaluation items sit to training data in embedding space.

For each evaluation item we look at its k nearest neighbours by cosine distance among a pool
made of every training point (seeds and pairs) and the points of the item's own evaluation set,
the item itself excluded. The share of those neighbours that are training points says whether
the item lives in a region the training data covers. An item is *dominated* when that share is
above one half.

The pool holds the item's own evaluation set only (not the other evaluation sets), so the
figures of one set do not change when another set is added to the same run.

What to compare a share with: if training and evaluation points were drawn from one
distribution, a neighbour would be a training point with probability
n_train / (n_train + n_eval - 1) (`expected_train_share`). A share well above that means the
training data crowds the evaluation items; well below means the two sets live apart.

Ties in distance (exact duplicates) are broken by pool order, training points first: a
training copy of an evaluation item counts as its neighbour before an evaluation copy does.

`neighbour_overlap` and `overlap_summary` work on arrays; `overlap_table` and `overlap_metrics`
apply them to the eda stage's points (distill.eda.points) and name the figures it logs.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from distill.errors import ConfigError

DOMINATED_THRESHOLD = 0.5
"""An evaluation item is dominated when more than this share of its neighbours are training points."""


@dataclass(frozen=True)
class NeighbourOverlap:
    """Per evaluation item (rows in the order given): neighbour share and nearest training point."""

    train_share: np.ndarray
    """Share of the item's k nearest neighbours that are training points (0..1)."""
    nearest_train_index: np.ndarray
    """Row of the nearest training point in the training matrix passed in."""
    nearest_train_distance: np.ndarray
    """Cosine distance (1 - cosine similarity, 0..2) to that training point."""
    k: int
    """Neighbours actually used: min(k asked, pool size - 1)."""


def l2_normalise(vectors: np.ndarray) -> np.ndarray:
    """Rows scaled to unit length; an all-zero row stays zero (cosine similarity 0 to anything)."""
    vectors = np.asarray(vectors, dtype=np.float64)
    norms = np.linalg.norm(vectors, axis=1, keepdims=True)
    return np.divide(vectors, norms, out=np.zeros_like(vectors), where=norms > 0)


def expected_train_share(n_train: int, n_eval: int) -> float:
    """The share a neighbour would have if training and evaluation points were exchangeable."""
    pool = n_train + n_eval - 1
    return n_train / pool if pool > 0 else float("nan")


def neighbour_overlap(
    eval_vectors: np.ndarray, train_vectors: np.ndarray, k: int = 10, *, chunk_rows: int = 1024
) -> NeighbourOverlap:
    """Neighbour share and nearest training point for every evaluation row (module docstring)."""
    eval_vectors = l2_normalise(eval_vectors)
    train_vectors = l2_normalise(train_vectors)
    n_eval, n_train = len(eval_vectors), len(train_vectors)
    if n_train == 0:
        raise ValueError("no training points to compare with")
    if n_eval == 0:
        empty = np.zeros(0)
        return NeighbourOverlap(empty, np.zeros(0, dtype=int), empty, 0)
    if k < 1:
        raise ValueError(f"k must be at least 1, got {k}")
    if eval_vectors.shape[1] != train_vectors.shape[1]:
        raise ValueError(
            f"evaluation vectors have {eval_vectors.shape[1]} dimensions, training vectors {train_vectors.shape[1]}"
        )

    pool = np.vstack([train_vectors, eval_vectors])
    is_train = np.arange(len(pool)) < n_train
    k_used = min(k, len(pool) - 1)
    train_share = np.empty(n_eval)
    nearest = np.empty(n_eval, dtype=int)
    distance = np.empty(n_eval)
    # Rows in chunks so that memory stays at chunk x pool however large the sets are.
    for start in range(0, n_eval, chunk_rows):
        rows = np.arange(start, min(start + chunk_rows, n_eval))
        similarity = eval_vectors[rows] @ pool.T
        # The item itself is never its own neighbour.
        similarity[np.arange(len(rows)), n_train + rows] = -np.inf
        # Stable sort on -similarity: equal distances keep pool order (training first, see docstring).
        order = np.argsort(-similarity, axis=1, kind="stable")[:, :k_used]
        train_share[rows] = is_train[order].mean(axis=1)
        train_similarity = similarity[:, :n_train]
        nearest[rows] = np.argmax(train_similarity, axis=1)
        best = train_similarity[np.arange(len(rows)), nearest[rows]]
        distance[rows] = np.clip(1.0 - best, 0.0, 2.0)
    return NeighbourOverlap(train_share, nearest, distance, k_used)


def overlap_summary(
    train_share: np.ndarray, nearest_train_distance: np.ndarray, threshold: float = DOMINATED_THRESHOLD
) -> dict[str, float]:
    """Mean neighbour share, share of dominated items, median nearest-training distance, n."""
    share = np.asarray(train_share, dtype=float)
    distance = np.asarray(nearest_train_distance, dtype=float)
    if len(share) == 0:
        nan = float("nan")
        return {
            "mean_train_neighbour_share": nan,
            "dominated_share": nan,
            "median_nearest_train_distance": nan,
            "n": 0,
        }
    return {
        "mean_train_neighbour_share": float(share.mean()),
        "dominated_share": float((share > threshold).mean()),
        "median_nearest_train_distance": float(np.median(distance)),
        "n": int(len(share)),
    }


# --------------------------------------------------------------------------------------------
# Tables and metrics of the eda stage

METRIC_NAMES = (
    "mean_train_neighbour_share",
    "dominated_share",
    "median_nearest_train_distance",
    "expected_train_share",
    "n",
)
"""Figures logged as `eda/<name>` overall and `eda/<name>/<set>` per evaluation set."""


def overlap_table(points, vectors: np.ndarray, k: int):
    """Per evaluation item: neighbour share, dominated flag, nearest training item and distance.

    `points`: DataFrame (set, role, id, subject, text), one row per row of `vectors`. Each
    evaluation set is measured against all training points plus its own items (module
    docstring). Returns (table, per-set summary rows, overall summary pooled over all items).
    """
    import pandas as pd

    train_mask = (points["role"] == "train").to_numpy()
    train_points = points[train_mask].reset_index(drop=True)
    if len(train_points) == 0:
        raise ConfigError("eda needs training points: give seeds or pairs (both are 'off')")
    tables, summaries = [], []
    for set_name in dict.fromkeys(points.loc[~train_mask, "set"]):
        mask = ((points["set"] == set_name).to_numpy()) & ~train_mask
        table, summary = _set_overlap(
            set_name, points[mask].reset_index(drop=True), vectors[mask], train_points, vectors[train_mask], k
        )
        tables.append(table)
        summaries.append(summary)
    table = pd.concat(tables, ignore_index=True) if tables else pd.DataFrame()
    if table.empty:
        raise ConfigError("eda needs at least one evaluation item")
    overall: dict[str, Any] = overlap_summary(
        table["train_neighbour_share"].to_numpy(), table["nearest_train_distance"].to_numpy()
    )
    weights = np.array([s["n"] for s in summaries], dtype=float)
    overall["expected_train_share"] = float(
        np.average([s["expected_train_share"] for s in summaries], weights=weights)
    )
    return table, summaries, overall


def _set_overlap(set_name: str, part, part_vectors, train_points, train_vectors, k: int):
    """One evaluation set's rows of the overlap table, and its summary row."""
    import pandas as pd

    result = neighbour_overlap(part_vectors, train_vectors, k=k)
    nearest = train_points.iloc[result.nearest_train_index].reset_index(drop=True)
    table = pd.DataFrame(
        {
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
        }
    )
    summary: dict[str, Any] = overlap_summary(result.train_share, result.nearest_train_distance)
    summary["expected_train_share"] = expected_train_share(len(train_points), len(part))
    return table, {"eval_set": set_name, "k": result.k, **summary}


def overlap_metrics(summaries: list[dict[str, Any]], overall: dict[str, Any]) -> dict[str, float]:
    """`eda/<figure>` overall and `eda/<figure>/<set>` per evaluation set."""
    from distill.metrics import subject_keys

    metrics = {f"eda/{name}": float(overall[name]) for name in METRIC_NAMES}
    keys = subject_keys(s["eval_set"] for s in summaries)
    for summary in summaries:
        for name in METRIC_NAMES:
            metrics[f"eda/{name}/{keys[summary['eval_set']]}"] = float(summary[name])
    return metrics


def _snippet(text: str, limit: int = 200) -> str:
    """The first `limit` characters on one line, for reading the table (points.parquet has the full texts)."""
    flat = " ".join(str(text).split())
    return flat[:limit] + ("…" if len(flat) > limit else "")
