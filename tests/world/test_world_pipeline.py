"""The whole method on the synthetic known-truth world, as `make demo` runs it: mine finds the
student's defect, augment writes pairs, train and evaluate measure a significant gain on the
defective structure, the sound structures do not get worse, and register registers a version
that `champion` points at. Then the negative control, on the same seeds and mined pairs: with
each pair's preference reversed (the student's error as chosen, the teacher's reasoning as
rejected), the gain on the defective structure disappears and the gate refuses.

Why reversal and not a shuffle across structures: the student scores 0.04 on the defective
structure, below the 0.2 of a random pick, so any training that disturbs it (a shuffle does,
measured: accuracy 0.748 → 0.348 overall) lifts that structure towards chance (+0.28 measured)
without teaching anything. Reversal keeps the same texts, prompts and amount of training and
removes only what the method relies on, the direction of the preference.

Deterministic for a seed: the world, the student's build and every step are seeded. Slow (the
student is built once per session, about two minutes on 2 cores)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from distill.cli import parse_config
from distill.stages.pipeline import PipelineConfig, run
from distill.world import items as world
from distill.world.cli import write_data

WORLD = Path(__file__).resolve().parents[2] / "distill" / "world"
DEFECTIVE = world.DEFECTIVE[0]
SOUND = [s for s in world.STRUCTURES if s not in world.DEFECTIVE]


def _comparison(run_id: str) -> dict:
    import mlflow

    path = mlflow.artifacts.download_artifacts(run_id=run_id, artifact_path="comparison/comparison.json")
    return json.loads(Path(path).read_text(encoding="utf-8"))


def _register_run(outputs):
    import mlflow

    return mlflow.MlflowClient().get_run(outputs.steps["register"].source_run_id)


def _reversed_preferences(pairs_file: Path, out: Path) -> int:
    """The same pairs with chosen and rejected (and their answers) swapped."""
    rows = [json.loads(line) for line in pairs_file.read_text(encoding="utf-8").splitlines() if line.strip()]
    flipped = []
    for row in rows:
        new = {key: value for key, value in row.items() if key != "problem"}
        new["chosen"], new["rejected"] = row["rejected"], row["chosen"]
        new["gold"], new["rejected_choice"] = row["rejected_choice"], row["gold"]
        flipped.append(new)
    out.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in flipped), encoding="utf-8")
    return len(flipped)


@pytest.mark.slow
def test_world_demo_fixes_the_defect_and_registers_and_reversed_pairs_do_not(mlflow_store, tmp_path):
    import mlflow

    write_data(tmp_path / "outputs" / "world", seeds=24, test=50, guard=30)
    argv = ["--config", str(WORLD / "demo.yaml"), "--plan", str(WORLD / "transfer_plan.yaml")]
    outputs = run(parse_config(PipelineConfig, argv, prog="pipeline"))

    # mine: the hard negatives concentrate on the defective structure
    client = mlflow.MlflowClient()
    mine_dir = Path(mlflow.artifacts.download_artifacts(outputs.steps["mine"].outputs["hard_negatives"]))
    mined = [json.loads(line) for line in mine_dir.read_text(encoding="utf-8").splitlines() if line.strip()]
    subjects = [row.get("subject") or row["item"]["subject"] for row in mined]
    assert subjects.count(DEFECTIVE) > max(subjects.count(s) for s in SOUND)

    # evaluate + register: a significant gain where the defect is, nothing worse elsewhere
    register = _register_run(outputs)
    comparison = _comparison(register.info.run_id)
    assert comparison[f"compare/delta_accuracy/{DEFECTIVE}"] >= 0.2
    assert comparison[f"compare/mcnemar_p/{DEFECTIVE}"] < 0.05
    for structure in SOUND:
        assert comparison[f"compare/delta_ci_low/{structure}"] > -0.1, structure
    assert register.data.metrics["guard/guard/non_inferior"] == 1.0
    assert register.data.tags["distill.register.decision"] == "registered"
    version = str(client.get_registered_model("world-student-synthetic").aliases["champion"])
    assert version == register.data.tags["distill.register.version"]
    gain = comparison[f"compare/delta_accuracy/{DEFECTIVE}"]

    # negative control: the same mined pairs, each preference reversed
    pairs_dir = Path(mlflow.artifacts.download_artifacts(outputs.steps["augment"].outputs["pairs"]))
    flipped = tmp_path / "reversed_pairs.jsonl"
    assert _reversed_preferences(pairs_dir / "pairs.jsonl", flipped) > 0
    control = run(parse_config(PipelineConfig, [*argv, "--overrides", f"train.pairs={flipped}"], prog="pipeline"))
    assert control.steps["mine"].reused and control.steps["augment"].reused
    assert not control.steps["train"].reused
    control_register = _register_run(control)
    control_comparison = _comparison(control_register.info.run_id)
    assert control_comparison[f"compare/delta_accuracy/{DEFECTIVE}"] < min(0.1, gain / 2)
    assert control_comparison[f"compare/mcnemar_p/{DEFECTIVE}"] >= 0.05 or (
        control_comparison[f"compare/delta_accuracy/{DEFECTIVE}"] <= 0
    )
    assert control_register.data.tags["distill.register.decision"] == "refused"
    assert str(client.get_registered_model("world-student-synthetic").aliases["champion"]) == version
