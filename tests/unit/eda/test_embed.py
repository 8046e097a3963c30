"""Texts of items → vectors: the offline TF-IDF + SVD embedder and its errors."""

from __future__ import annotations

import numpy as np
import pytest

TEXTS = [
    "지문을 읽고 물음에 답하시오. 국어의 음운 변동",
    "지문을 읽고 물음에 답하시오. 국어의 음운 변동",  # same text as the first
    "고려 광종은 노비안검법을 실시하였다",
    "조선 후기 흥선 대원군은 경복궁을 중건하였다",
    "The quick brown fox jumps over the lazy dog",
    "밑줄 친 부분의 문맥적 의미로 가장 적절한 것은",
]


def test_tfidf_svd_embeddings_are_unit_length_and_identical_texts_coincide():
    from distill.eda.embed import make_embedder

    embedder = make_embedder("tfidf-svd", n_components=4)
    vectors = embedder.fit_transform(TEXTS)
    assert vectors.shape == (6, 4)
    assert np.linalg.norm(vectors, axis=1) == pytest.approx(np.ones(6))
    assert float(vectors[0] @ vectors[1]) == pytest.approx(1.0)
    assert float(vectors[0] @ vectors[4]) < 0.5
    assert 0.0 < embedder.energy_share <= 1.0


def test_gram_and_randomized_svd_give_the_same_cosine_geometry(monkeypatch):
    from distill.eda import embed

    exact = embed.make_embedder("tfidf-svd", n_components=5).fit_transform(TEXTS)
    monkeypatch.setattr(embed, "GRAM_MAX_ROWS", 2)  # force the randomized path
    randomized = embed.make_embedder("tfidf-svd", n_components=5).fit_transform(TEXTS)
    assert randomized @ randomized.T == pytest.approx(exact @ exact.T, abs=1e-6)


def test_item_text_keeps_question_plus_and_choices():
    from distill.contracts import MCQItem
    from distill.eda.embed import item_text

    item = MCQItem(id="x", paragraph="지문", question="질문", choices=("가", "나"), question_plus="보기 내용")
    assert item_text(item) == "지문\n질문\n보기 내용\n가\n나"


def test_unknown_or_unavailable_embedders_are_config_errors(tmp_path):
    from distill.eda.embed import make_embedder
    from distill.errors import ConfigError

    with pytest.raises(ConfigError, match="unknown embedder"):
        make_embedder("word2vec")
    with pytest.raises(ConfigError, match="does not exist"):
        make_embedder(f"sentence-transformers:{tmp_path / 'missing'}")
