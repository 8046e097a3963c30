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
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

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
        return {"mean_train_neighbour_share": nan, "dominated_share": nan, "median_nearest_train_distance": nan, "n": 0}
    return {
        "mean_train_neighbour_share": float(share.mean()),
        "dominated_share": float((share > threshold).mean()),
        "median_nearest_train_distance": float(np.median(distance)),
        "n": int(len(share)),
    }
