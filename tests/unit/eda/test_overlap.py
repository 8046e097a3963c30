"""Training-neighbour share on tiny hand-made embeddings (answers worked out by hand)."""

from __future__ import annotations

import math

import numpy as np
import pytest

from distill.eda.overlap import (
    expected_train_share,
    l2_normalise,
    neighbour_overlap,
    overlap_metrics,
    overlap_summary,
    overlap_table,
)
from distill.eda.points import points_frame


def unit(degrees: float) -> list[float]:
    angle = math.radians(degrees)
    return [math.cos(angle), math.sin(angle)]


# Points on the unit circle, so cosine distance is 1 - cos(angle between them).
# Cluster A (around 0°): two training points and two evaluation points.
# Cluster B (around 180°): one far training point and two evaluation points.
TRAIN = np.array([unit(0), unit(4), unit(185)])
EVAL = np.array([unit(2), unit(6), unit(178), unit(182)])


def test_share_of_training_neighbours_k2():
    result = neighbour_overlap(EVAL, TRAIN, k=2)
    # eval@2°: nearest 0° (train, 2°) and 4° (train, 2°) -> 1.0
    # eval@6°: nearest 4° (train, 2°), then 2° (eval, 4°) -> 0.5
    # eval@178°: nearest 182° (eval, 4°), then 185° (train, 7°) -> 0.5
    # eval@182°: nearest 185° (train, 3°), then 178° (eval, 4°) -> 0.5
    assert result.train_share.tolist() == [1.0, 0.5, 0.5, 0.5]
    assert result.k == 2


def test_nearest_training_item_and_cosine_distance():
    result = neighbour_overlap(EVAL, TRAIN, k=3)
    assert result.nearest_train_index.tolist()[1:] == [1, 2, 2]
    assert result.nearest_train_index[0] in (0, 1)  # 0° and 4° are equally near 2°
    expected = [1 - math.cos(math.radians(d)) for d in (2, 2, 7, 3)]
    assert result.nearest_train_distance == pytest.approx(expected, abs=1e-12)


def test_item_is_never_its_own_neighbour_and_k_is_capped_by_the_pool():
    # One training point and one evaluation point identical to it: the only possible neighbour
    # of the evaluation item is the training point (pool of 2, minus itself).
    result = neighbour_overlap(np.array([[1.0, 0.0]]), np.array([[1.0, 0.0]]), k=10)
    assert result.k == 1
    assert result.train_share.tolist() == [1.0]
    assert result.nearest_train_distance.tolist() == [0.0]


def test_vectors_need_not_be_normalised():
    scaled = neighbour_overlap(EVAL * 7.0, TRAIN * 0.3, k=2)
    assert scaled.train_share.tolist() == [1.0, 0.5, 0.5, 0.5]


def test_chunking_changes_nothing():
    rng = np.random.default_rng(0)
    train, evals = rng.normal(size=(40, 5)), rng.normal(size=(23, 5))
    whole = neighbour_overlap(evals, train, k=7)
    chunked = neighbour_overlap(evals, train, k=7, chunk_rows=4)
    assert np.array_equal(whole.train_share, chunked.train_share)
    assert np.array_equal(whole.nearest_train_index, chunked.nearest_train_index)


def test_summary_dominated_means_strictly_more_than_half():
    summary = overlap_summary(np.array([1.0, 0.5, 0.6, 0.0]), np.array([0.1, 0.2, 0.3, 0.9]))
    assert summary["mean_train_neighbour_share"] == pytest.approx(0.525)
    assert summary["dominated_share"] == pytest.approx(0.5)  # 1.0 and 0.6; 0.5 is not dominated
    assert summary["median_nearest_train_distance"] == pytest.approx(0.25)
    assert summary["n"] == 4


def test_expected_share_and_edge_cases():
    assert expected_train_share(3, 4) == pytest.approx(3 / 6)
    with pytest.raises(ValueError, match="no training points"):
        neighbour_overlap(EVAL, np.zeros((0, 2)))
    zero_row = l2_normalise(np.array([[0.0, 0.0], [3.0, 4.0]]))
    assert zero_row.tolist() == [[0.0, 0.0], [0.6, 0.8]]


def test_overlap_table_measures_each_eval_set_against_training_and_itself():
    # Set "near" sits on the training points; set "far" sits opposite them. Each set's pool is
    # training + its own items, so "far" items see each other before any training point.
    sets = [
        ("seeds", "train", [{"id": f"t{i}", "subject": "s", "text": f"train {i}"} for i in range(3)]),
        ("near", "eval", [{"id": f"n{i}", "subject": "s", "text": f"near {i}"} for i in range(2)]),
        ("far", "eval", [{"id": f"f{i}", "subject": "s", "text": f"far {i}"} for i in range(3)]),
    ]
    points = points_frame(sets)
    vectors = np.array([unit(0), unit(2), unit(4), unit(1), unit(3), unit(180), unit(181), unit(182)])
    table, summaries, overall = overlap_table(points, vectors, k=2)
    by_set = {s["eval_set"]: s for s in summaries}
    assert by_set["near"]["mean_train_neighbour_share"] == 1.0
    assert by_set["far"]["mean_train_neighbour_share"] == 0.0
    assert by_set["far"]["dominated_share"] == 0.0
    assert by_set["near"]["expected_train_share"] == pytest.approx(3 / 4)
    assert overall["n"] == 5 and overall["dominated_share"] == pytest.approx(2 / 5)
    near = table[table["eval_set"] == "near"].set_index("eval_id")
    assert near.loc["n0", "nearest_train_id"] in ("t0", "t1") and near.loc["n0", "nearest_train_set"] == "seeds"
    metrics = overlap_metrics(summaries, overall)
    assert metrics["eda/dominated_share/near"] == 1.0 and metrics["eda/dominated_share"] == pytest.approx(0.4)
    assert metrics["eda/n/far"] == 3
