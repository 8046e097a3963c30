"""Exploratory views of the data: where training items sit relative to evaluation items.

- `embed`: texts of MCQ items → vectors (TF-IDF + SVD offline, or sentence-transformers);
- `project`: vectors → 2-D map (UMAP or PCA);
- `overlap`: per evaluation item, the share of its nearest neighbours that are training points;
- `figures`: plotly map, histogram and bars, and an offline HTML page holding them;
- `stage`: `EdaConfig` and `run(cfg)`, the `eda` entry point's whole job.

Nothing heavy is imported here, so `--help` stays fast.
"""
