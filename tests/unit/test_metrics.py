"""Metrics against hand-computed cases (and sklearn where it defines the same thing)."""

from __future__ import annotations

import math
import random

import pytest

from distill.metrics import (
    accuracy,
    compute_metrics,
    macro_f1,
    metric_safe,
    metric_tags,
    per_label_f1,
    subject_keys,
    subject_metrics,
)


def test_accuracy_by_hand():
    assert accuracy([1, 2, 3, 4], [1, 2, 4, 4]) == 0.75
    assert accuracy([1, 1], [None, 1]) == 0.5  # an unparsed answer is wrong, never guessed
    assert math.isnan(accuracy([], []))
    with pytest.raises(ValueError):
        accuracy([1, 2], [1])


def test_macro_f1_with_a_label_never_predicted():
    # gold 1 1 1 2 2 3, pred 1 1 2 2 1 1: label 3 is an answer but never predicted.
    gold = [1, 1, 1, 2, 2, 3]
    pred = [1, 1, 2, 2, 1, 1]
    # label 1: tp=2 fp=2 fn=1 -> 4/7 ; label 2: tp=1 fp=1 fn=1 -> 1/2 ; label 3: tp=0 fn=1 -> 0
    assert per_label_f1(gold, pred) == pytest.approx({1: 4 / 7, 2: 0.5, 3: 0.0})
    assert macro_f1(gold, pred) == pytest.approx((4 / 7 + 0.5 + 0.0) / 3)


def test_macro_f1_always_answering_one_on_a_skewed_set():
    gold = [1] * 8 + [2, 3]
    pred = [1] * 10
    # accuracy looks fine, macro-F1 does not: label 1 F1 = 16/18, labels 2 and 3 F1 = 0.
    assert accuracy(gold, pred) == 0.8
    assert macro_f1(gold, pred) == pytest.approx((16 / 18) / 3)


def test_macro_f1_label_predicted_but_never_gold_counts_and_absent_labels_do_not():
    gold = [1, 2, 1, 2]
    pred = [1, 2, 5, 2]
    # label 1: tp1 fn1 -> 2/3 ; label 2: 1 ; label 5: fp1 -> 0 ; labels 3, 4: absent, left out
    assert macro_f1(gold, pred) == pytest.approx((2 / 3 + 1 + 0) / 3)


def test_macro_f1_equals_sklearn_default_on_random_cases():
    from sklearn.metrics import f1_score

    rng = random.Random(3)
    for _ in range(50):
        n = rng.randint(1, 40)
        gold = [rng.randint(1, 5) for _ in range(n)]
        pred = [rng.choice([1, 1, 2, 3, 4, 5]) for _ in range(n)]
        assert macro_f1(gold, pred) == pytest.approx(f1_score(gold, pred, average="macro", zero_division=0))


def test_subject_metrics_and_micro_versus_macro():
    gold = [1, 2, 3, 1, 1, 2]
    pred = [1, 2, 1, 2, 1, 2]
    subjects = ["국어", "국어", "국어", "한국사", "한국사", "한국사"]
    per = subject_metrics(gold, pred, subjects)
    assert per["국어"] == pytest.approx({"n": 3, "accuracy": 2 / 3, "macro_f1": (2 / 3 + 1 + 0) / 3})
    # 한국사: gold 1 1 2, pred 2 1 2 -> label 1: tp1 fn1 -> 2/3 ; label 2: tp1 fp1 -> 2/3
    assert per["한국사"] == pytest.approx({"n": 3, "accuracy": 2 / 3, "macro_f1": 2 / 3})

    metrics = compute_metrics(gold + [4], pred + [4], subjects + ["윤리"])
    assert metrics["eval/accuracy"] == pytest.approx(5 / 7)  # micro: over items
    assert metrics["eval/accuracy_subject_macro"] == pytest.approx((2 / 3 + 2 / 3 + 1) / 3)  # macro: over subjects
    assert metrics["eval/n/윤리"] == 1
    assert metrics["eval/accuracy/국어"] == pytest.approx(2 / 3)
    assert metrics["eval/macro_f1/한국사"] == pytest.approx(2 / 3)
    assert metrics["eval/parse_failure_rate"] == 0
    assert compute_metrics([1, 2], [None, 2], ["a", "a"], parse_failures=1)["eval/parse_failure_rate"] == 0.5


def test_metric_names_pass_mlflows_own_validation():
    from mlflow.utils.validation import _validate_metric_name

    subjects = ["국어", "화법·작문", "law/politics", "..", "", "a:b", "경제 (economics)"]
    metrics = compute_metrics([1] * len(subjects), [1] * len(subjects), subjects)
    for name in metrics:
        _validate_metric_name(name)  # raises on a bad name
    assert "eval/accuracy/국어" in metrics  # Korean stays readable
    assert metric_safe("화법·작문") == "화법_작문"
    assert metric_safe("law/politics") == "law_politics"
    tags = metric_tags(subjects=subjects)
    assert "화법_작문 = 화법·작문" in tags["eval.subject_names"]
    assert "micro" in tags["eval.accuracy.average"] and "macro" in tags["eval.accuracy_subject_macro.average"]


def test_subject_keys_stay_unique_when_names_collide():
    keys = subject_keys(["a·b", "a_b", "a/b"])
    assert len(set(keys.values())) == 3
