"""Text embeddings of MCQ items for the map and the overlap figures.

Two embedders, chosen by a spec string:
- `tfidf-svd` (default, offline, no download): character n-grams (2 to 4, within word
  boundaries) weighted by TF-IDF with sublinear term frequency, reduced with truncated SVD (LSA)
  and L2-normalised. Character n-grams suit Korean, where one word carries its particles and
  endings, and they need no tokenizer model.
- `sentence-transformers:<local path>`: any sentence-transformers model already on disk
  (sentence-transformers is not a dependency of distill; install it to use this).

Every set (seeds, pairs, evaluation items) is embedded in ONE call: the TF-IDF vocabulary, the
IDF weights and the SVD basis are fitted on all texts together, so that distances between a
training point and an evaluation point are measured in the same space. The embedding therefore
depends on which sets are in the run; compare overlap figures only between runs on the same sets.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Protocol

import numpy as np

from distill.contracts import MCQItem
from distill.errors import ConfigError

DEFAULT_EMBEDDER = "tfidf-svd"
SENTENCE_TRANSFORMERS_PREFIX = "sentence-transformers:"


def item_text(item: MCQItem) -> str:
    """What gets embedded: paragraph, question, <보기> (question_plus) and the choices."""
    parts = [item.paragraph, item.question, item.question_plus, *item.choices]
    return "\n".join(part.strip() for part in parts if part and part.strip())


class Embedder(Protocol):
    name: str

    def fit_transform(self, texts: Sequence[str]) -> np.ndarray:
        """One L2-normalised row per text."""
        ...


class TfidfSvdEmbedder:
    """Character n-gram TF-IDF + truncated SVD, L2-normalised (module docstring)."""

    def __init__(
        self,
        n_components: int = 96,
        ngram_range: tuple[int, int] = (2, 4),
        seed: int = 0,
        max_features: int | None = 200_000,
    ):
        if n_components < 2:
            raise ConfigError(f"the TF-IDF embedder needs at least 2 SVD components, got {n_components}")
        self.n_components = n_components
        self.ngram_range = ngram_range
        self.seed = seed
        self.max_features = max_features
        self.name = f"tfidf-svd(char {ngram_range[0]}-{ngram_range[1]}, {n_components} dims)"
        self.components_used: int | None = None
        self.energy_share: float | None = None
        """Share of the TF-IDF matrix's squared norm the SVD keeps (set by fit_transform)."""

    def fit_transform(self, texts: Sequence[str]) -> np.ndarray:
        from sklearn.feature_extraction.text import TfidfVectorizer
        from sklearn.preprocessing import normalize

        if len(texts) < 3:
            raise ConfigError(f"need at least 3 texts to fit the TF-IDF embedder, got {len(texts)}")
        vectorizer = TfidfVectorizer(
            analyzer="char_wb",
            ngram_range=self.ngram_range,
            sublinear_tf=True,
            max_features=self.max_features,
            dtype=np.float64,
        )
        tfidf = vectorizer.fit_transform([text or " " for text in texts])
        # SVD needs fewer components than both rows and columns.
        components = max(1, min(self.n_components, tfidf.shape[0] - 1, tfidf.shape[1] - 1))
        reduced, energy = truncated_svd(tfidf, components, seed=self.seed)
        self.components_used = components
        self.energy_share = energy
        return normalize(reduced)


GRAM_MAX_ROWS = 4000
"""Up to this many texts the SVD goes through the n x n Gram matrix (exact, a few seconds);
beyond it, through randomized truncated SVD (memory stays linear in the number of texts)."""


def truncated_svd(matrix, components: int, *, seed: int = 0) -> tuple[np.ndarray, float]:
    """Rows of `matrix` (sparse, n x F) in their top `components` singular directions (U * S),
    and the share of the squared Frobenius norm those directions keep.

    With few rows and very many n-gram columns, the top eigenvectors of the Gram matrix
    X X^T give U and S^2 exactly and far faster than iterating over the F-wide matrix
    (2,000 texts x 200,000 n-grams: about 1.5 s against 20 s for randomized SVD).
    """
    total = float(matrix.multiply(matrix).sum())
    n = matrix.shape[0]
    if n <= GRAM_MAX_ROWS:
        from scipy.linalg import eigh

        gram = (matrix @ matrix.T).toarray()
        values, vectors = eigh(gram, subset_by_index=[n - components, n - 1])
        values, vectors = np.clip(values[::-1], 0.0, None), vectors[:, ::-1]
        reduced = vectors * np.sqrt(values)
        kept = float(values.sum())
    else:
        from sklearn.decomposition import TruncatedSVD

        svd = TruncatedSVD(n_components=components, algorithm="randomized", n_iter=5, random_state=seed)
        reduced = svd.fit_transform(matrix)
        kept = float((svd.singular_values_**2).sum())
    return reduced, (kept / total if total > 0 else float("nan"))


class SentenceTransformerEmbedder:
    """A sentence-transformers model loaded from a local directory (no download)."""

    def __init__(self, model_path: str, batch_size: int = 32):
        if not Path(model_path).exists():
            raise ConfigError(
                f"sentence-transformers model path {model_path!r} does not exist (give a local directory)"
            )
        self.model_path = model_path
        self.batch_size = batch_size
        self.name = f"sentence-transformers({Path(model_path).name})"

    def fit_transform(self, texts: Sequence[str]) -> np.ndarray:
        try:
            from sentence_transformers import SentenceTransformer
        except ImportError:
            raise ConfigError(
                "embedder 'sentence-transformers:...' needs the sentence-transformers package "
                "(pip install sentence-transformers)"
            ) from None
        model = SentenceTransformer(self.model_path, local_files_only=True)
        vectors = model.encode(
            list(texts),
            batch_size=self.batch_size,
            normalize_embeddings=True,
            show_progress_bar=True,
            convert_to_numpy=True,
        )
        return np.asarray(vectors, dtype=np.float64)


def make_embedder(spec: str, *, seed: int = 0, n_components: int = 96) -> Embedder:
    """`tfidf-svd` or `sentence-transformers:<local path>`."""
    spec = (spec or DEFAULT_EMBEDDER).strip()
    if spec == DEFAULT_EMBEDDER:
        return TfidfSvdEmbedder(n_components=n_components, seed=seed)
    if spec.startswith(SENTENCE_TRANSFORMERS_PREFIX):
        path = spec[len(SENTENCE_TRANSFORMERS_PREFIX) :].strip()
        if not path:
            raise ConfigError("embedder 'sentence-transformers:' needs a local model path after the colon")
        return SentenceTransformerEmbedder(path)
    raise ConfigError(f"unknown embedder {spec!r}; use 'tfidf-svd' or 'sentence-transformers:<local path>'")
