"""Two-dimensional maps of the embeddings: UMAP (umap-learn) or PCA.

UMAP draws the neighbourhood structure that the overlap figures measure, so it is the default;
it runs with a fixed `random_state` (which also makes it single-threaded) so the same inputs give
the same map. It is not used, and PCA is, when there are fewer than `MIN_POINTS_FOR_UMAP` points
(its spectral initialisation and neighbour graph are meaningless on a handful of points) or when
umap-learn is not installed (it ships in the `dev` extra); the reason is returned so the stage
can log it. The map is for looking only: every overlap figure is computed in the full
embedding space, never on the 2-D coordinates.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass

import numpy as np

from distill.errors import ConfigError

PROJECTIONS = ("umap", "pca")
MIN_POINTS_FOR_UMAP = 20
UMAP_NEIGHBOURS = 15
UMAP_MIN_DIST = 0.1


@dataclass(frozen=True)
class Projection:
    coords: np.ndarray
    """(n, 2) map coordinates."""
    method: str
    """The method actually used: 'umap' or 'pca'."""
    fallback_reason: str | None = None
    """Why PCA was used although UMAP was asked for; None when the asked method ran."""


def pca_2d(vectors: np.ndarray, seed: int = 0) -> np.ndarray:
    from sklearn.decomposition import PCA

    vectors = np.asarray(vectors, dtype=np.float64)
    n, dims = vectors.shape
    if n < 2:
        return np.zeros((n, 2))
    components = min(2, n, dims)
    coords = PCA(n_components=components, random_state=seed).fit_transform(vectors)
    if components < 2:
        coords = np.hstack([coords, np.zeros((n, 2 - components))])
    return coords


def umap_2d(vectors: np.ndarray, seed: int = 0, n_neighbors: int = UMAP_NEIGHBOURS) -> np.ndarray:
    import umap

    n = len(vectors)
    reducer = umap.UMAP(
        n_components=2,
        n_neighbors=max(2, min(n_neighbors, n - 1)),
        min_dist=UMAP_MIN_DIST,
        metric="cosine",
        random_state=seed,
    )
    with warnings.catch_warnings():
        # "n_jobs value 1 overridden to 1 by setting random_state": the single thread is wanted.
        warnings.simplefilter("ignore", UserWarning)
        return np.asarray(reducer.fit_transform(np.asarray(vectors, dtype=np.float32)), dtype=np.float64)


def project_2d(vectors: np.ndarray, method: str = "umap", seed: int = 0) -> Projection:
    """Map `vectors` to 2-D with `method`, falling back from UMAP to PCA (module docstring)."""
    method = (method or "umap").strip().lower()
    if method not in PROJECTIONS:
        raise ConfigError(f"unknown projection {method!r}; use one of {', '.join(PROJECTIONS)}")
    if method == "pca":
        return Projection(pca_2d(vectors, seed), "pca")
    n = len(vectors)
    if n < MIN_POINTS_FOR_UMAP:
        reason = f"only {n} points; UMAP needs at least {MIN_POINTS_FOR_UMAP}"
        return Projection(pca_2d(vectors, seed), "pca", reason)
    try:
        import umap  # noqa: F401
    except ImportError:
        reason = "umap-learn is not installed (pip install umap-learn, or the dev extra)"
        return Projection(pca_2d(vectors, seed), "pca", reason)
    return Projection(umap_2d(vectors, seed), "umap")
