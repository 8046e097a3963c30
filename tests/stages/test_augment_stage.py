"""The augment stage's embedded default, end to end in a real MLflow store: every gate refuses
the recorded candidate made to fail it, the rest become pairs that `train` can read back from
the run, and the same seed gives the same bytes."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from distill import tracking
from distill.blueprint.gates import active_gates
from distill.data.prompts import format_final_answer, render_messages
from distill.data.schema import item_from_dict
from distill.stages.augment import AugmentConfig, run

REPO = Path(__file__).resolve().parents[2]

# What the bundled recording was written to show (scripts/augment_sources/*.yaml, `expect`).
REFUSED = {
    "seed-022-aug2": "schema",  # cut off at the token limit: not valid JSON
    "seed-005-aug2": "answers",  # chosen ends in 4, gold is 2
    "seed-020-aug2": "answers",  # rejected ends in 1 but names 3
    "seed-019-aug1": "form",  # 2 chosen steps for a 6-step golden path
    "seed-003-aug2": "decontamination",  # a near copy of eval-036
    "seed-010-aug2": "verification",  # two right choices; the re-solve picks the other
    "seed-004-aug1": "dedup",  # nearly the same problem as seed-001-aug1
}


GATES = tuple(active_gates(verify=True, alignment=False))
"""The gates a default run applies (the alignment gate is off until min_alignment is set)."""


def default_config(tmp_path: Path, name: str, **overrides) -> AugmentConfig:
    values = dict(cache_path=str(tmp_path / name / "cache.sqlite"), output_dir=str(tmp_path / name / "out"))
    values.update(overrides)
    return AugmentConfig(**values)


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def test_default_run_shows_every_gate_and_logs_everything_train_needs(mlflow_store, tmp_path, capsys):
    from mlflow import MlflowClient

    from distill.pairs import load_pairs

    result = run(default_config(tmp_path, "default"))
    printed = capsys.readouterr().out

    # every gate refused what it was meant to refuse, and nothing else
    rejected = read_jsonl(result.rejected_path)
    assert {row["id"]: row["gate"] for row in rejected} == REFUSED
    assert all(row["reason"] and row["passed_gates"] == list(GATES[: GATES.index(row["gate"])]) for row in rejected)
    assert result.candidates == 36 and result.accepted == 36 - len(REFUSED)
    for gate in GATES:
        counts = result.gate_counts[gate]
        assert counts["rejected"] == list(REFUSED.values()).count(gate) >= 1
        assert counts["passed"] + counts["rejected"] == counts["reached"]
    assert result.gate_counts["dedup"]["passed"] == result.accepted

    # pairs: the DESIGN contract, the exact answer line, a prompt rendered from the new problem
    pairs = read_jsonl(result.pairs_path)
    assert len(pairs) == result.accepted and not {p["id"] for p in pairs} & set(REFUSED)
    for pair in pairs:
        problem = item_from_dict("pairs", 1, pair["problem"])
        assert pair["prompt"] == render_messages(problem) and pair["gold"] == problem.answer
        assert pair["chosen"].endswith("\n\n" + format_final_answer(pair["gold"]))
        assert pair["rejected"].endswith("\n\n" + format_final_answer(pair["rejected_choice"]))
        assert pair["rejected_choice"] != pair["gold"] and pair["transfer"] in (
            "intra-subject",
            "cross-subject",
            "cross-domain",
        )
        assert pair["seed_id"] == pair["id"].rsplit("-aug", 1)[0] and pair["prompt_version"].startswith("blueprint-")
    assert "seed-001-aug1" in {p["id"] for p in pairs}  # the first of the two near-duplicates is kept
    for name in ("alignment_golden", "alignment_failed"):  # scored per pair, averaged per run
        assert all(0.0 <= pair[name] <= 1.0 for pair in pairs)
        mean = sum(pair[name] for pair in pairs) / len(pairs)
        assert MlflowClient().get_run(result.run_id).data.metrics[f"augment/{name}"] == pytest.approx(mean)

    # MLflow: metrics, artifacts, the dataset input, the prompt versions
    client = MlflowClient()
    logged = client.get_run(result.run_id)
    metrics = logged.data.metrics
    assert metrics["augment/candidates"] == 36 and metrics["augment/accepted"] == result.accepted
    # a short metric list; per gate, subject, transfer kind and role: tables
    assert len(metrics) <= 25 and not any(k.count("/") > 1 for k in metrics), sorted(metrics)
    import mlflow

    def table(path):
        return mlflow.load_table(path, run_ids=[result.run_id])

    gates = table("augment/gates.json").set_index("gate")
    assert list(gates.index) == list(GATES)
    for gate in GATES:
        assert gates.loc[gate, "rejected"] == result.gate_counts[gate]["rejected"]
        assert gates.loc[gate, "pass_share"] == pytest.approx(
            result.gate_counts[gate]["passed"] / result.gate_counts[gate]["reached"]
        )
    accepted = table("augment/accepted.json")
    assert accepted[accepted["by"] == "transfer"]["accepted"].sum() == result.accepted
    assert accepted[accepted["by"] == "subject"]["accepted"].sum() == result.accepted
    usage = table("augment/llm_usage.json").set_index("role")
    assert usage.loc["teacher", "cache_hits"] == 36 and usage.loc["verifier", "cache_hits"] == 31
    assert usage["cached_output_tokens"].sum() > 0 and metrics["llm/cost_usd"] == 0
    assert metrics["llm/cache_hits"] == 36 + 31
    artifacts = {a.path for a in client.list_artifacts(result.run_id, "pairs")}
    assert {"pairs/pairs.jsonl", "pairs/dataset_info.json", "pairs/state.json"} <= artifacts
    assert {"rejected_candidates.jsonl", "summary.txt", "plan.json"} <= {
        a.path for a in client.list_artifacts(result.run_id)
    }
    contexts = {
        i.dataset.name: [t.value for t in i.tags if t.key == "mlflow.data.context"]
        for i in logged.inputs.dataset_inputs
    }
    assert contexts == {"hard_negatives": ["hard_negatives"]}, "the pairs are an output, not an input"
    tags = logged.data.tags
    assert tags["distill.output.pairs"] == f"runs:/{result.run_id}/pairs"
    assert tags["distill.output.pairs.digest"] == tracking.rows_digest(pairs)
    assert f"runs:/{result.run_id}/pairs" in tags["mlflow.note.content"]
    assert logged.data.params["hard_negatives"] == "bundled" and logged.data.params["verifier"] == "example-teacher"
    uris = logged.data.tags["prompts"].split(",")
    assert sorted(u.split("/")[1] for u in uris) == ["distill-blueprint", "distill-verify"]
    assert set(uris) == set(result.prompts.values())

    blueprint = mlflow.genai.load_prompt(result.prompts["blueprint"])
    assert "Error Simulation" in blueprint.template and "{{golden_path}}" in blueprint.template

    # what `train -P pairs=runs:/<id>/pairs` reads
    loaded = load_pairs(f"runs:/{result.run_id}/pairs", download_dir=tmp_path / "download")
    assert [p.id for p in loaded.pairs] == [p["id"] for p in pairs]
    assert loaded.pairs[0].problem is not None and loaded.pairs[0].meta["transfer"] == pairs[0]["transfer"]
    from datasets import load_from_disk

    assert load_from_disk(str(result.pairs_dir))["chosen"] == [p["chosen"] for p in pairs]

    # the one-screen summary
    assert "decontamination" in printed and f"-> {result.accepted} pairs" in printed
    assert f"runs:/{result.run_id}/pairs" in printed and len(printed.splitlines()) < 45


def test_same_seed_gives_identical_bytes_and_a_rerun_pays_nothing(mlflow_store, tmp_path, capsys):
    first = run(default_config(tmp_path, "a"))
    second = run(default_config(tmp_path, "b"))
    again = run(default_config(tmp_path, "a"))  # same cache and output folder: overwritten in place
    capsys.readouterr()
    for name in ("pairs/pairs.jsonl", "rejected_candidates.jsonl"):
        reference = (first.output_dir / name).read_bytes()
        assert (second.output_dir / name).read_bytes() == reference
        assert (again.output_dir / name).read_bytes() == reference
    assert not [p for p in first.output_dir.iterdir() if p.name.startswith(".")]  # no leftovers
    assert again.metrics["augment/recording_imported"] == 0  # the cache already held every response
    assert again.metrics["llm/requests"] == 0


def test_verification_off_lets_the_disagreeing_candidate_through(mlflow_store, tmp_path, capsys):
    result = run(default_config(tmp_path, "noverify", verify="off"))
    capsys.readouterr()
    assert "verification" not in result.gate_counts
    assert result.accepted == 36 - len(REFUSED) + 1
    assert "seed-010-aug2" in {p["id"] for p in read_jsonl(result.pairs_path)}
    assert not any(k.startswith("llm/verifier/") for k in result.metrics)


def test_the_bundled_recording_matches_the_stage_and_its_sources():
    done = subprocess.run(
        [sys.executable, str(REPO / "scripts" / "build_augment_replay.py"), "--check"],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr + done.stdout


def test_bad_input_is_one_line_naming_file_row_and_field(tmp_path):
    bad = tmp_path / "hard_negatives.jsonl"
    row = json.loads(
        (REPO / "distill" / "resources" / "hard_negatives.jsonl").read_text(encoding="utf-8").splitlines()[0]
    )
    row.pop("golden_path")
    bad.write_text(json.dumps(row, ensure_ascii=False) + "\n", encoding="utf-8")
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "distill",
            "augment",
            "--hard_negatives",
            str(bad),
            "--output_dir",
            str(tmp_path / "out"),
            "--cache_path",
            str(tmp_path / "cache.sqlite"),
        ],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=tmp_path,
        env={**__import__("os").environ, "MLFLOW_TRACKING_URI": f"sqlite:///{tmp_path / 'mlflow.db'}"},
    )
    assert done.returncode == 2
    assert done.stderr.strip().splitlines() == [f"error: {bad}, row 1, field 'golden_path': missing or empty"]
    assert not (tmp_path / "out" / "pairs").exists()


def test_min_alignment_refuses_the_least_aligned_pair(mlflow_store, tmp_path, capsys):
    """With the gate off every pair carries its score; a threshold just above the lowest one
    refuses that pair (gate `alignment`, before the verifier) and keeps the rest."""
    first = run(default_config(tmp_path, "off"))
    pairs = read_jsonl(first.pairs_path)
    lowest = min(pairs, key=lambda p: p["alignment_golden"])
    threshold = round(lowest["alignment_golden"] + 1e-3, 4)
    assert sum(p["alignment_golden"] < threshold for p in pairs) == 1, "the lowest score is not unique"

    gated = run(default_config(tmp_path, "on", min_alignment=threshold))
    refused = {row["id"]: row for row in read_jsonl(gated.rejected_path)}
    assert refused[lowest["id"]]["gate"] == "alignment"
    assert "min_alignment" in refused[lowest["id"]]["reason"]
    assert refused[lowest["id"]]["passed_gates"] == ["schema", "answers", "form", "decontamination"]
    assert {p["id"] for p in read_jsonl(gated.pairs_path)} == {p["id"] for p in pairs} - {lowest["id"]}
    assert gated.gate_counts["alignment"]["rejected"] == 1


def test_reference_sets_take_a_format_as_evaluate_datasets_do(tmp_path):
    """eval_sets / seed_sets are path[@format] lists: the format after @ is the one the file is
    read with (a wrong one is refused), and 'bundled' is the eval sample."""
    import json

    from distill.errors import InputError
    from distill.resources import resource_path
    from distill.stages.augment import load_reference_items

    rows = resource_path("eval_sample.jsonl").read_text(encoding="utf-8").splitlines()[:3]
    odd = tmp_path / "items.txt"
    odd.write_text("\n".join(rows) + "\n", encoding="utf-8")
    items = load_reference_items([f"{odd}@jsonl", "bundled"])
    assert [item.id for item in items[:3]] == [json.loads(row)["id"] for row in rows]
    assert len(items) == 3 + len(load_reference_items(["bundled"]))
    with pytest.raises(InputError):
        load_reference_items([f"{odd}@kmmlu"])
