"""Data layer: the canonical MCQ item, format loaders, prompt rendering, decontamination."""
