"""Augment's candidates (distill/blueprint/candidates.py): a candidate the gates accept becomes a
PreferencePair, and the pair augment writes is the pair train reads back."""

from __future__ import annotations

import json

import pytest


@pytest.fixture(scope="module")
def screened(tmp_path_factory):
    """The embedded default's first eight seeds, answered from the bundled recording and screened."""
    from distill.blueprint.candidates import blueprint_requests, screen
    from distill.llm import ResponseCache
    from distill.llm.recording import bundled_recording, import_recording
    from distill.llm.roles import BackendSettings, role_backend
    from distill.stages.augment import AugmentConfig, prepare, teacher_params

    cfg = AugmentConfig(max_seeds=8)
    prepared = prepare(cfg)
    candidates = prepared.candidates()
    with ResponseCache(tmp_path_factory.mktemp("cache") / "cache.sqlite") as cache:
        import_recording(cache, bundled_recording("augment"))
        teacher = role_backend("replay", cfg.teacher, cache=cache, settings=BackendSettings.of(cfg))
        requests = blueprint_requests(candidates, prepared.templates["blueprint"], teacher_params(cfg))
        for candidate, response in zip(candidates, teacher.generate(requests)):
            candidate.response = response
    screen(candidates, prepared.index, cfg)
    return cfg, prepared, candidates


def test_a_written_pair_reads_back_equal(screened, tmp_path):
    from distill.blueprint.candidates import preference_pair
    from distill.io import write_jsonl
    from distill.pairs import load_pairs

    cfg, prepared, candidates = screened
    accepted = [c for c in candidates if c.alive]
    assert len(accepted) >= 4
    pairs = [
        preference_pair(c, prompt_version=prepared.prompt_version, teacher=cfg.teacher, verifier=cfg.verifier)
        for c in accepted
    ]
    path = write_jsonl(tmp_path / "pairs.jsonl", [pair.to_dict() for pair in pairs])
    read = load_pairs(path).pairs
    assert read == pairs
    assert [p.to_dict() for p in read] == [p.to_dict() for p in pairs]  # meta too (not part of ==)
    lines = path.read_text(encoding="utf-8").splitlines()
    assert [json.dumps(p.to_dict(), ensure_ascii=False) for p in read] == lines
    first = json.loads(lines[0])
    assert list(first)[:4] == ["id", "seed_id", "problem", "prompt"]  # the order of the project's pair files
    assert first["verifier"] == cfg.verifier and first["prompt_version"] == prepared.prompt_version


def test_gate_counts_and_metrics_agree(screened):
    from distill.blueprint.candidates import augment_metrics, gate_counts, preference_pair, rejected_row

    cfg, prepared, candidates = screened
    names = ["schema", "answers", "form", "decontamination"]
    counts = gate_counts(candidates, names)
    alive = [c for c in candidates if c.alive]
    pairs = [preference_pair(c, prompt_version="v", teacher="t", verifier=None) for c in alive]
    metrics = augment_metrics(candidates, counts, pairs)
    assert metrics["augment/candidates"] == len(candidates) and metrics["augment/accepted"] == len(alive)
    assert counts["decontamination"]["passed"] == len(alive)
    refused = [rejected_row(c) for c in candidates if not c.alive]
    assert sum(count["rejected"] for count in counts.values()) == len(refused)
    assert all(row["passed_gates"] == names[: names.index(row["gate"])] for row in refused)
