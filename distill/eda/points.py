"""What the map holds: one point (set, role, id, subject, text) per seed, pair or evaluation item.

A set is training data (role "train": seeds, pairs) or an evaluation set (role "eval"). The text
of an item is what `distill.eda.embed.item_text` reads; a pair's is its problem, or, when it has
none, the user turn of its prompt (the problem as the model saw it).
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class PointSet:
    """One set of points on the map, with what MLflow needs to log it as a dataset input."""

    name: str
    role: str
    """"train" or "eval"."""
    points: list[dict[str, str]]
    """{id, subject, text} per member."""
    source: str
    """Where the set was read from (a path or a runs:/ URI)."""
    context: str
    """The MLflow input context: seeds, training or eval."""


def item_points(items) -> list[dict[str, str]]:
    from distill.eda.embed import item_text

    return [{"id": item.id, "subject": item.subject, "text": item_text(item)} for item in items]


def pair_points(pair_set) -> list[dict[str, str]]:
    from distill.eda.embed import item_text

    points = []
    for pair in pair_set.pairs:
        if pair.problem is not None:
            text = item_text(pair.problem)
        else:  # no canonical problem: the user turn of the prompt is the problem as shown
            text = "\n".join(m["content"] for m in pair.messages if m.get("role") == "user")
        points.append({"id": pair.id, "subject": pair.subject, "text": text})
    return points


def points_frame(sets: list[tuple[str, str, list[dict[str, str]]]]):
    """(set name, role, [{id, subject, text}]) → one DataFrame: set, role, id, subject, text."""
    import pandas as pd

    rows = [
        {"set": name, "role": role, "id": str(p["id"]), "subject": str(p["subject"]), "text": p["text"]}
        for name, role, members in sets
        for p in members
    ]
    return pd.DataFrame(rows, columns=["set", "role", "id", "subject", "text"])
