"""The eda stage on real KICE items (../shared/data) and the bundled seeds and pairs.

Overlap margins were measured with the default embedder (k=10) on 2019 KICE as the
evaluation set:
- two lightly edited copies of every evaluation item (+ bundled pairs) as training data:
  dominated share 1.00, mean neighbour share 0.73, median nearest distance about 0.001;
- the 2015 KICE exam (same genre, no shared passage; + bundled pairs): dominated share 0.33,
  mean neighbour share 0.48 (below the 0.72 expected for exchangeable sets), median distance 0.88.
The assertions sit between those figures with room on both sides.
"""

from __future__ import annotations

import dataclasses
import random

import numpy as np
import pytest

from distill.stages.eda import EdaConfig, run

pytestmark = pytest.mark.slow

EVAL_FILES = ("2018_11_KICE.json", "2019_11_KICE.json")


def lightly_edited(item, rng: random.Random, copy: int):
    """A copy with about 10% of the words of paragraph and question dropped and two choices swapped."""

    def drop_words(text: str) -> str:
        words = text.split(" ")
        if len(words) <= 3:
            return text
        return " ".join(word for word in words if rng.random() > 0.1)

    choices = list(item.choices)
    i, j = rng.sample(range(len(choices)), 2)
    choices[i], choices[j] = choices[j], choices[i]
    return dataclasses.replace(
        item,
        id=f"copy{copy}-{item.id}",
        paragraph=drop_words(item.paragraph),
        question=drop_words(item.question),
        choices=tuple(choices),
    )


def test_eda_run_logs_map_overlap_tables_and_metrics(shared_data, mlflow_store, tmp_path):
    import mlflow

    eval_sets = [f"{shared_data / 'kice' / name}@kice" for name in EVAL_FILES]
    out = run(EdaConfig(eval_sets=eval_sets, output_dir=str(tmp_path / "eda")))

    client = mlflow.MlflowClient()
    logged = client.get_run(out.run_id)
    assert client.get_experiment(logged.info.experiment_id).name == "distill-eda"
    assert logged.data.tags["eda.projection"] == "umap"  # 24 seeds + 68 pairs + 90 items: enough for UMAP
    names = {a.path for a in client.list_artifacts(out.run_id, "eda")}
    assert {
        "eda/map.html",
        "eda/overlap.html",
        "eda/overlap.json",
        "eda/overlap.parquet",
        "eda/points.parquet",
        "eda/summary.txt",
    } <= names

    table = mlflow.load_table("eda/overlap.json", run_ids=[out.run_id])
    assert len(table) == 90 and set(table["eval_set"]) == {"2018_11_KICE", "2019_11_KICE"}
    assert set(table["nearest_train_set"]) <= {"seeds", "pairs"}
    assert table["train_neighbour_share"].between(0, 1).all()

    metrics = logged.data.metrics
    for suffix in ("", "/2018_11_KICE", "/2019_11_KICE"):
        for name in ("mean_train_neighbour_share", "dominated_share", "median_nearest_train_distance"):
            assert 0.0 <= metrics[f"eda/{name}{suffix}"] <= 1.0 + (name.startswith("median"))
    assert metrics["eda/n/2019_11_KICE"] == 45
    # The overall figure pools the items of both sets.
    assert metrics["eda/mean_train_neighbour_share"] == pytest.approx(
        (
            metrics["eda/mean_train_neighbour_share/2018_11_KICE"]
            + metrics["eda/mean_train_neighbour_share/2019_11_KICE"]
        )
        / 2
    )

    page = client.download_artifacts(out.run_id, "eda/map.html", str(tmp_path / "dl"))
    html = open(page, encoding="utf-8").read()
    assert "2019_11_KICE (eval, n=45)" in html and "pairs (train, n=68)" in html
    contexts = {i.tags[0].value for i in logged.inputs.dataset_inputs}
    assert contexts == {"seeds", "training", "eval"}

    points = out.points
    assert len(points) == 24 + 68 + 90 and np.isfinite(points[["x", "y"]].to_numpy()).all()


def _contamination_run(shared_data, tmp_path, seeds_path: str, seeds_format: str):
    return run(
        EdaConfig(
            seeds=seeds_path,
            seeds_format=seeds_format,
            eval_sets=[f"{shared_data / 'kice' / '2019_11_KICE.json'}@kice"],
            projection="pca",
            output_dir=str(tmp_path / "eda"),
        )
    )


def test_copies_of_eval_items_show_high_overlap_and_another_exam_low(shared_data, mlflow_store, tmp_path):
    from distill.data.loaders import load_items, write_items_jsonl

    evaluation = load_items(shared_data / "kice" / "2019_11_KICE.json", "kice")
    rng = random.Random(0)
    copies = [lightly_edited(item, rng, copy) for copy in (1, 2) for item in evaluation]
    assert all(c.paragraph != e.paragraph for c, e in zip(copies, evaluation) if len(e.paragraph.split()) > 20)
    copies_path = write_items_jsonl(tmp_path / "copies.jsonl", copies)

    contaminated = _contamination_run(shared_data, tmp_path, str(copies_path), "jsonl").metrics
    disjoint = _contamination_run(
        shared_data, tmp_path, str(shared_data / "kice" / "2015_11_KICE.json"), "kice"
    ).metrics

    assert contaminated["eda/dominated_share"] >= 0.9
    assert contaminated["eda/mean_train_neighbour_share"] >= 0.65
    assert contaminated["eda/median_nearest_train_distance"] <= 0.05

    assert disjoint["eda/dominated_share"] <= 0.5
    assert disjoint["eda/mean_train_neighbour_share"] < disjoint["eda/expected_train_share"]
    assert disjoint["eda/median_nearest_train_distance"] >= 0.5

    assert contaminated["eda/dominated_share"] - disjoint["eda/dominated_share"] >= 0.4


def test_umap_map_is_reproducible_with_a_fixed_seed(shared_data):
    from distill.data.loaders import load_items
    from distill.eda.embed import item_text, make_embedder
    from distill.eda.project import project_2d

    items = load_items(shared_data / "kice" / "2017_11_KICE.json", "kice")
    vectors = make_embedder("tfidf-svd", seed=0).fit_transform([item_text(i) for i in items])
    first, second = project_2d(vectors, "umap", seed=3), project_2d(vectors, "umap", seed=3)
    assert first.method == "umap" and np.array_equal(first.coords, second.coords)
    few = project_2d(vectors[:10], "umap")
    assert few.method == "pca" and "only 10 points" in few.fallback_reason
