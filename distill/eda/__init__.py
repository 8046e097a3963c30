"""Exploratory views of the data: where training items sit relative to evaluation items.

- `points`: seeds, pairs and evaluation items as points (set, role, id, subject, text);
- `embed`: texts of MCQ items → vectors (TF-IDF + SVD offline, or sentence-transformers);
- `project`: vectors → 2-D map (UMAP or PCA);
- `overlap`: per evaluation item, the share of its nearest neighbours that are training points,
  as arrays, as the stage's table and as its metrics;
- `figures`: plotly map, histogram and bars (put on offline pages by `distill.charts.html_page`).

The `eda` stage itself (`EdaConfig`, `run(cfg)`) is `distill.stages.eda`.

Nothing heavy is imported here, so `--help` stays fast.
"""
