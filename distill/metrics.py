"""Accuracy and macro-F1, overall and per subject, under the metric names of docs/design.md
("MLflow conventions").

Two kinds of average, and a tag says which figure is which:
- micro: over items (`eval/accuracy`, `eval/macro_f1` pool every item of the set);
- macro over subjects: `eval/accuracy_subject_macro` is the mean of the per-subject accuracies.
("macro" in `macro_f1` is the usual average over choice LABELS, a different axis.)

Macro-F1 averages the F1 of each label 1..K over the labels that occur in the gold answers or
in the predictions; a label that is neither the answer nor the prediction of any item has no
defined F1 and is left out (as sklearn does when no `labels=` is given). A label that is the
answer of some item but never predicted counts with F1 = 0 — that is what makes macro-F1 catch a
model that always answers 1 on a set skewed to 1.

MLflow metric names allow letters and digits (Unicode ones included: Korean subject names stay
readable), `_ - . / space` and, off Windows, `:`. Any other character of a subject name (`·`,
`(`, `,` …) becomes `_`, and a `/` inside a subject name too, so the name stays one path segment.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

PREFIX = "eval"

_UNSAFE = re.compile(r"[^\w.\- ]")


def metric_safe(name: str) -> str:
    """A subject name as one MLflow metric-name segment (see module docstring)."""
    text = _UNSAFE.sub("_", str(name).strip())
    if text in {"", ".", ".."}:
        text = "_" + text
    return text


def subject_keys(subjects: Iterable[str]) -> dict[str, str]:
    """Subject → metric segment, unique even when two names sanitise to the same text."""
    keys: dict[str, str] = {}
    used: set[str] = set()
    for subject in sorted(set(subjects)):
        base = metric_safe(subject)
        key, n = base, 2
        while key in used:
            key, n = f"{base}_{n}", n + 1
        keys[subject] = key
        used.add(key)
    return keys


def accuracy(gold: Sequence[int], pred: Sequence[int | None]) -> float:
    """Share of items whose prediction equals the gold answer (None counts as wrong)."""
    if len(gold) != len(pred):
        raise ValueError(f"{len(gold)} gold answers but {len(pred)} predictions")
    if not gold:
        return float("nan")
    return sum(1 for g, p in zip(gold, pred) if p is not None and int(g) == int(p)) / len(gold)


def per_label_f1(gold: Sequence[int], pred: Sequence[int | None]) -> dict[int, float]:
    """F1 of each label that occurs in `gold` or `pred` (an unparsed prediction, None, is no label)."""
    labels = sorted({int(g) for g in gold} | {int(p) for p in pred if p is not None})
    scores = {}
    for label in labels:
        tp = sum(1 for g, p in zip(gold, pred) if p is not None and int(g) == label and int(p) == label)
        fp = sum(1 for g, p in zip(gold, pred) if p is not None and int(p) == label and int(g) != label)
        fn = sum(1 for g, p in zip(gold, pred) if int(g) == label and (p is None or int(p) != label))
        denominator = 2 * tp + fp + fn
        scores[label] = 0.0 if denominator == 0 else 2 * tp / denominator
    return scores


def macro_f1(gold: Sequence[int], pred: Sequence[int | None]) -> float:
    """Mean F1 over the labels present in gold or predictions (see module docstring)."""
    if len(gold) != len(pred):
        raise ValueError(f"{len(gold)} gold answers but {len(pred)} predictions")
    scores = per_label_f1(gold, pred)
    if not scores:
        return float("nan")
    return sum(scores.values()) / len(scores)


def subject_metrics(
    gold: Sequence[int], pred: Sequence[int | None], subjects: Sequence[str]
) -> dict[str, dict[str, float]]:
    """{subject: {"n", "accuracy", "macro_f1"}} for every subject present."""
    table: dict[str, dict[str, float]] = {}
    for subject in sorted(set(subjects)):
        idx = [i for i, s in enumerate(subjects) if s == subject]
        g = [gold[i] for i in idx]
        p = [pred[i] for i in idx]
        table[subject] = {"n": float(len(idx)), "accuracy": accuracy(g, p), "macro_f1": macro_f1(g, p)}
    return table


def compute_metrics(
    gold: Sequence[int],
    pred: Sequence[int | None],
    subjects: Sequence[str],
    *,
    parse_failures: int = 0,
    prefix: str = PREFIX,
) -> dict[str, float]:
    """Every evaluation metric under its name in docs/design.md ("MLflow conventions").

    `parse_failures`: items whose answer could not be read (always 0 for logit scoring; the
    generate mode counts them, and their `pred` is None).
    """
    if not (len(gold) == len(pred) == len(subjects)):
        raise ValueError("gold, pred and subjects must have the same length")
    per_subject = subject_metrics(gold, pred, subjects)
    keys = subject_keys(per_subject)
    metrics: dict[str, float] = {
        f"{prefix}/accuracy": accuracy(gold, pred),
        f"{prefix}/macro_f1": macro_f1(gold, pred),
        f"{prefix}/n": float(len(gold)),
        f"{prefix}/parse_failure_rate": (parse_failures / len(gold)) if gold else float("nan"),
        f"{prefix}/accuracy_subject_macro": _mean(m["accuracy"] for m in per_subject.values()),
        f"{prefix}/macro_f1_subject_macro": _mean(m["macro_f1"] for m in per_subject.values()),
    }
    for subject, values in per_subject.items():
        key = keys[subject]
        metrics[f"{prefix}/accuracy/{key}"] = values["accuracy"]
        metrics[f"{prefix}/macro_f1/{key}"] = values["macro_f1"]
        metrics[f"{prefix}/n/{key}"] = values["n"]
    return metrics


def metric_tags(*, prefix: str = PREFIX, scoring: str = "logits", subjects: Iterable[str] = ()) -> dict[str, str]:
    """Tags that document the averages, the scoring mode and the subject → metric-name map."""
    tags = {
        f"{prefix}.accuracy.average": "micro (over items)",
        f"{prefix}.macro_f1.average": "micro over items; macro over choice labels present",
        f"{prefix}.accuracy_subject_macro.average": "macro (mean of per-subject accuracy)",
        f"{prefix}.macro_f1_subject_macro.average": "macro (mean of per-subject macro-F1)",
        f"{prefix}.scoring": scoring,
    }
    renamed = {s: k for s, k in subject_keys(subjects).items() if s != k}
    if renamed:
        tags[f"{prefix}.subject_names"] = "; ".join(f"{k} = {s}" for s, k in renamed.items())
    return tags


def _mean(values: Iterable[float]) -> float:
    values = list(values)
    return sum(values) / len(values) if values else float("nan")


def subject_table(
    metrics: Mapping[str, Any], subjects: Iterable[str], *, prefix: str = PREFIX
) -> list[dict[str, Any]]:
    """Rows (subject, n, accuracy, macro_f1) read back from a metrics dict, for charts and summaries."""
    keys = subject_keys(subjects)
    return [
        {
            "subject": subject,
            "n": int(metrics[f"{prefix}/n/{key}"]),
            "accuracy": metrics[f"{prefix}/accuracy/{key}"],
            "macro_f1": metrics[f"{prefix}/macro_f1/{key}"],
        }
        for subject, key in keys.items()
    ]
