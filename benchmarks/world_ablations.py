"""Ablations of the method on the synthetic known-truth world (distill/world), same world, same seeds.

    python benchmarks/world_ablations.py [--out outputs/world_ablations] [--seed 0] [--threads 2]

The demo pipeline (distill/world/demo.yaml: mine → augment → train → evaluate → register) runs
once as the baseline, then once per variant with the same config plus `overrides`, so mine and
augment are reused by their step hash and every variant is trained, evaluated and gated by the
same stages on the same test and guard sets:

1. `baseline`: the demo as it is: transferred pairs (new problems the teacher writes on each
   seed's structure), rejected = the teacher's simulated student error, ORPO.
2. `seed-items`: pairs on the hard-negative seed items themselves (chosen = mine's golden path,
   rejected = the student's own failed path), one per seed, so fewer pairs than the baseline.
3. `transferred-matched`: the baseline's pairs subsampled (`train.n_pairs`) to as many trained
   pairs as `seed-items` trained, to tell the pairs' kind from their number.
4. `random-wrong`: the baseline's pairs with each rejected replaced by a reasoning that picks a
   uniformly random wrong choice (never the lure the student's wrong rule picks) for a generic
   reason (the teacher's `GENERIC_WRONG_STEP`).
5. `sft`: the baseline's pairs, `train.method=sft` (chosen only).

Reported per variant (from each register run's metrics and its comparison/report artifacts):
pairs in the file and trained, accuracy of the defective structure(s) before → after with
McNemar p, mean accuracy of the sound structures before → after, the guard set's Δ accuracy
with its 95 % CI, and the register decision. Printed as a markdown table and written to
`<out>/ablations.md` (with the per-subject rows), with `<out>/ablations.json`.

Everything lives under `--out`: the world's data files, the pipeline's step folders, the
variants' pair files and the MLflow store (`sqlite:///<out>/mlflow.db`, experiment
`distill-world-ablations`), so nothing here touches the demo's outputs/world. The student
(`world-student`) is built once per DISTILL_HOME (about two minutes on 2 cores) and reused.
Deterministic for `--seed` (the world's data, every step's seed, the random wrong choices).
Synthetic (distill.world.items.SYNTHETIC_NOTE): it shows what the machinery does on a world
whose truth is known, and is no evidence about real models.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import sys
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
DEMO_CONFIG = REPO / "distill" / "world" / "demo.yaml"
EXPERIMENT = "distill-world-ablations"
DATA_SIZES = {"seeds": 24, "test": 50, "guard": 75}
"""Items per structure, as `python -m distill world data` writes them by default (the demo's)."""

VARIANTS = {
    "baseline": "transferred pairs, simulated-error rejected, ORPO (the demo)",
    "seed-items": "pairs on the seed items themselves (student's own failed path), ORPO",
    "transferred-matched": "baseline pairs subsampled to the seed-items count, ORPO",
    "random-wrong": "baseline pairs, rejected = random wrong choice (not the lure), ORPO",
    "sft": "baseline pairs, SFT on chosen",
}


def write_jsonl(path: Path, rows: list[dict[str, Any]]) -> Path:
    from distill.world.cli import write_jsonl as write_atomic

    write_atomic(path, rows)
    return path


# ---------------------------------------------------------------------------------------------
# The variants' pair files


def seed_item_pairs(hard_negatives_path: Path) -> tuple[list[dict[str, Any]], list[str]]:
    """One pair per hard negative, on the seed item itself: its prompt as the student sees it,
    chosen = mine's golden path, rejected = the student's failed path. Returns the rows and why
    any hard negative gave no pair (a pair the project's checks refuse is left out, not fixed)."""
    import dataclasses

    from distill.contracts import answer_line_choice, hard_negative_from_dict, pair_from_dict
    from distill.data.prompts import render_messages
    from distill.errors import DistillError

    rows, skipped = [], []
    lines = [line for line in hard_negatives_path.read_text(encoding="utf-8").splitlines() if line.strip()]
    for row_number, line in enumerate(lines, 1):
        negative = hard_negative_from_dict(hard_negatives_path, row_number, json.loads(line))
        # The hard negative's own fields (golden_path, ...) stay out of the pair's problem.
        item = dataclasses.replace(negative.item, extra={})
        row = {
            "id": f"{item.id}-seed",
            "seed_id": item.id,
            "problem": item.to_dict(),
            "prompt": render_messages(item, reasoning=True),
            "chosen": negative.golden_path,
            "rejected": negative.failed_path,
            "gold": item.answer,
            "rejected_choice": answer_line_choice(negative.failed_path) or negative.student_choice,
            "subject": item.subject,
            "transfer": "none (seed item)",
            "error_type": negative.error_type or "",
        }
        try:
            pair_from_dict(hard_negatives_path, row_number, row)
        except DistillError as exc:
            skipped.append(f"{item.id}: {exc}")
            continue
        rows.append(row)
    return rows, skipped


def random_wrong_pairs(pairs: list[Any], seed: int) -> list[dict[str, Any]]:
    """The pairs with each rejected replaced: a uniformly random wrong choice that is not the
    lure (the choice the student's wrong rule picks), justified by the generic wrong step the
    world's teacher writes where it has no student error to simulate."""
    from distill.contracts import pair_from_dict
    from distill.world import items as world
    from distill.world.teacher import GENERIC_ERROR_TYPE, GENERIC_WRONG_STEP

    rows = []
    for row_number, pair in enumerate(pairs, 1):
        if pair.problem is None:
            raise ValueError(f"pair {pair.id}: no problem, so its wrong choices are unknown")
        solution = world.solve_item(pair.problem)
        wrong = [k for k in range(1, pair.problem.n_choices + 1) if k not in (solution.answer, solution.lure)]
        # One generator per pair, from the seed and the pair's id: the choice does not depend
        # on the order of the file.
        choice = world.seeded_rng("random-wrong", seed, pair.id).choice(wrong)
        rejected = "\n".join([f"1. {world.pick_step(choice)}", f"2. {GENERIC_WRONG_STEP}", "", f"정답: {choice}"])
        row = pair.to_dict()
        row.pop("alignment_failed", None)  # it described the replaced rejected
        row.update(rejected=rejected, rejected_choice=choice, error_type=GENERIC_ERROR_TYPE)
        pair_from_dict("random-wrong pairs", row_number, row)
        rows.append(row)
    return rows


# ---------------------------------------------------------------------------------------------
# Running the pipeline and reading a variant's figures


def pipeline_config(args: argparse.Namespace, data: dict[str, Path], overrides: list[str]):
    from distill.cli import parse_config
    from distill.stages.pipeline import PipelineConfig

    argv = [
        "--config",
        str(DEMO_CONFIG),
        "--seeds",
        str(data["seeds"]),
        "--eval_dataset",
        str(data["test"]),
        "--guard_sets",
        f"{data['guard']}@jsonl",
        "--output_dir",
        str(args.out / "pipeline"),
        "--experiment",
        EXPERIMENT,
        "--seed",
        str(args.seed),
    ]
    if overrides:
        argv += ["--overrides", ",".join(overrides)]
    return parse_config(PipelineConfig, argv)


def run_variant(name: str, args: argparse.Namespace, data: dict[str, Path], overrides: list[str]):
    from distill.stages import pipeline

    # Each variant registers under its own model name, so no variant moves another's alias.
    overrides = [*overrides, f"register.model_name=world-ablation-{name}"]
    print(f"\n=== {name}: {VARIANTS[name]}  (overrides: {', '.join(overrides)})", flush=True)
    return pipeline.run(pipeline_config(args, data, overrides))


def figures(name: str, outputs: Any, pairs_in_file: int, out: Path) -> dict[str, Any]:
    """A variant's row: from the register run's metrics and tags and its comparison and
    per-subject artifacts, and the train run's params (pairs trained)."""
    from distill import tracking
    from distill.world import items as world

    client = tracking.client()
    register_id = outputs.steps["register"].source_run_id
    register = client.get_run(register_id)
    train = client.get_run(outputs.steps["train"].source_run_id)
    folder = out / "artifacts" / name
    folder.mkdir(parents=True, exist_ok=True)
    comparison_file = tracking.download_artifacts(
        run_id=register_id, artifact_path="comparison/comparison.json", dst_path=str(folder)
    )
    subjects_file = tracking.download_artifacts(
        run_id=register_id, artifact_path="report/subjects.csv", dst_path=str(folder)
    )
    comparison = json.loads(Path(comparison_file).read_text(encoding="utf-8"))
    with open(subjects_file, encoding="utf-8") as handle:
        subjects = {row["subject"]: row for row in csv.DictReader(handle)}
    per_subject = {
        subject: {
            "n": int(row["n"]),
            "base_accuracy": float(row["base_accuracy"]),
            "new_accuracy": float(row["new_accuracy"]),
            "mcnemar_p": comparison.get(f"compare/mcnemar_p/{subject}"),
            "n_fixed": comparison.get(f"compare/n_fixed/{subject}"),
            "n_broken": comparison.get(f"compare/n_broken/{subject}"),
        }
        for subject, row in subjects.items()
        if subject != "overall"
    }
    sound = [s for s in world.STRUCTURES if s not in world.DEFECTIVE and s in per_subject]
    metrics = register.data.metrics
    guard_names = sorted({k.split("/")[1] for k in metrics if k.startswith("guard/")})
    guards = {
        guard: {
            "base_accuracy": metrics.get(f"guard/{guard}/base_accuracy"),
            "accuracy": metrics.get(f"guard/{guard}/accuracy"),
            "delta": metrics.get(f"guard/{guard}/delta_accuracy"),
            "ci_low": metrics.get(f"guard/{guard}/delta_ci_low"),
            "ci_high": metrics.get(f"guard/{guard}/delta_ci_high"),
        }
        for guard in guard_names
    }
    return {
        "variant": name,
        "what": VARIANTS[name],
        "pairs_in_file": pairs_in_file,
        "pairs_trained": int(train.data.params["n_pairs"]),
        "dev_pairs": int(train.data.params.get("n_dev_pairs", "0")),
        "method": train.data.params.get("method", ""),
        "defective": {s: per_subject[s] for s in world.DEFECTIVE if s in per_subject},
        "sound_base": sum(per_subject[s]["base_accuracy"] for s in sound) / len(sound),
        "sound_new": sum(per_subject[s]["new_accuracy"] for s in sound) / len(sound),
        "overall_base": float(subjects["overall"]["base_accuracy"]),
        "overall_new": float(subjects["overall"]["new_accuracy"]),
        "overall_p": comparison.get("compare/mcnemar_p"),
        "guards": guards,
        "decision": register.data.tags.get("distill.register.decision", ""),
        "reason": register.data.tags.get("distill.register.reason", ""),
        "per_subject": per_subject,
        "register_run": register_id,
        "train_run": train.info.run_id,
    }


# ---------------------------------------------------------------------------------------------
# The report


def _p(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.2g}"


def table(rows: list[dict[str, Any]]) -> str:
    header = (
        "| variant | pairs (file / trained) | defective: acc before → after (McNemar p) "
        "| sound structures: mean acc before → after | overall acc (p) | guard Δ [95% CI] | register |"
    )
    lines = [header, "|" + "---|" * 7]
    for row in rows:
        defective = "; ".join(
            f"{s}: {v['base_accuracy']:.2f} → {v['new_accuracy']:.2f} (p={_p(v['mcnemar_p'])})"
            for s, v in row["defective"].items()
        )
        guard = "; ".join(
            f"{g['delta']:+.3f} [{g['ci_low']:+.3f}, {g['ci_high']:+.3f}]" for g in row["guards"].values()
        )
        lines.append(
            f"| {row['variant']} | {row['pairs_in_file']} / {row['pairs_trained']} | {defective} "
            f"| {row['sound_base']:.3f} → {row['sound_new']:.3f} "
            f"| {row['overall_base']:.3f} → {row['overall_new']:.3f} ({_p(row['overall_p'])}) "
            f"| {guard or 'n/a'} | {row['decision']} |"
        )
    return "\n".join(lines)


def subject_table(rows: list[dict[str, Any]]) -> str:
    subjects = sorted({s for row in rows for s in row["per_subject"]})
    lines = ["| variant | " + " | ".join(subjects) + " |", "|" + "---|" * (len(subjects) + 1)]
    for row in rows:
        cells = []
        for s in subjects:
            v = row["per_subject"].get(s)
            cells.append(
                "n/a" if v is None else f"{v['base_accuracy']:.2f} → {v['new_accuracy']:.2f} (p={_p(v['mcnemar_p'])})"
            )
        lines.append(f"| {row['variant']} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def report(rows: list[dict[str, Any]], notes: list[str], args: argparse.Namespace) -> str:
    from distill.world import items as world

    parts = [
        f"# Ablations on the known-truth world (seed {args.seed})",
        "",
        f"{world.SYNTHETIC_NOTE[0].upper()}{world.SYNTHETIC_NOTE[1:]}.",
        "",
        "Every variant is the demo pipeline (distill/world/demo.yaml) with mine and augment reused; "
        "train, evaluate and register run per variant on the same test split "
        f"({DATA_SIZES['test']} items per structure) and guard set. Before = the base student, after = its adapter. "
        f"Defective structure(s): {', '.join(world.DEFECTIVE)}; sound: the other {len(world.STRUCTURES) - len(world.DEFECTIVE)}.",
        "",
        *(f"- {name}: {what}" for name, what in VARIANTS.items()),
        "",
        table(rows),
        "",
        "Per subject, accuracy before → after (McNemar p):",
        "",
        subject_table(rows),
        "",
        "Register decisions:",
        "",
        *(f"- {row['variant']}: {row['decision']}: {row['reason']}" for row in rows),
    ]
    if notes:
        parts += ["", "Notes:", "", *(f"- {note}" for note in notes)]
    return "\n".join(parts) + "\n"


# ---------------------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="outputs/world_ablations", help="Folder for everything this writes.")
    parser.add_argument(
        "--seed", type=int, default=0, help="Seed of the world's data, every step and the random wrong choices."
    )
    parser.add_argument("--threads", type=int, default=2, help="torch CPU threads.")
    args = parser.parse_args(argv)
    args.out = Path(args.out).resolve()
    args.out.mkdir(parents=True, exist_ok=True)
    # Our own store, always: the demo's (or the user's) tracking store is never written.
    os.environ["MLFLOW_TRACKING_URI"] = f"sqlite:///{args.out / 'mlflow.db'}"

    import mlflow
    import torch

    torch.set_num_threads(args.threads)
    # The store's default artifact root is ./mlruns under the working directory: the experiment
    # is made here with its artifacts under --out, so the whole study stays in one folder.
    if mlflow.MlflowClient().get_experiment_by_name(EXPERIMENT) is None:
        mlflow.MlflowClient().create_experiment(EXPERIMENT, artifact_location=(args.out / "mlruns").as_uri())

    from distill import tracking
    from distill.pairs import load_pairs
    from distill.world import items as world
    from distill.world.cli import write_data

    data = write_data(args.out / "world", seed=args.seed, **DATA_SIZES)
    inputs = args.out / "inputs"
    notes: list[str] = []
    results: dict[str, tuple[Any, int]] = {}

    baseline = run_variant("baseline", args, data, [])
    baseline_pairs = load_pairs(baseline.steps["augment"].outputs["pairs"], download_dir=inputs / "baseline").pairs
    results["baseline"] = (baseline, len(baseline_pairs))

    hard_negatives = Path(
        tracking.download_artifacts(
            artifact_uri=baseline.steps["mine"].outputs["hard_negatives"], dst_path=str(inputs / "mine")
        )
    )
    rows, skipped = seed_item_pairs(hard_negatives)
    if not rows:
        print("error: no hard negative gave a seed-item pair", file=sys.stderr)
        return 1
    seed_file = write_jsonl(inputs / "seed_item_pairs.jsonl", rows)
    notes.append(
        f"seed-items: {len(rows)} pairs from {len(rows) + len(skipped)} hard negatives (one per seed item, "
        f"none duplicated), against {len(baseline_pairs)} transferred pairs in the baseline"
        + (f"; {len(skipped)} left out: " + "; ".join(skipped) if skipped else "")
    )

    # The student's real failed paths are not all the wrong rule: some state a right rule (their
    # own structure's or another's) and then pick wrong. A rejected that states a right rule
    # teaches against that rule's sentence; the teacher's simulated errors never state one.
    def states_rule(text: str) -> bool:
        return any(rule in text for rule in world.RULES.values())

    notes.append(
        f"seed-items: {sum(states_rule(row['rejected']) for row in rows)} of {len(rows)} rejected (the student's "
        f"failed paths) state one of the world's right rules; baseline: "
        f"{sum(states_rule(pair.rejected) for pair in baseline_pairs)} of {len(baseline_pairs)}"
    )
    seed_items = run_variant("seed-items", args, data, [f"train.pairs={seed_file}"])
    results["seed-items"] = (seed_items, len(rows))

    seed_trained = int(tracking.client().get_run(seed_items.steps["train"].source_run_id).data.params["n_pairs"])
    matched = run_variant("transferred-matched", args, data, [f"train.n_pairs={seed_trained}"])
    results["transferred-matched"] = (matched, len(baseline_pairs))
    notes.append(
        f"transferred-matched: the baseline's pairs, {seed_trained} trained (train.n_pairs, per subject in "
        "proportion, after the same dev split as the baseline), as many as seed-items trained"
    )

    random_rows = random_wrong_pairs(baseline_pairs, args.seed)
    random_file = write_jsonl(inputs / "random_wrong_pairs.jsonl", random_rows)
    lure_rejected = sum(1 for pair in baseline_pairs if world.solve_item(pair.problem).lure == pair.rejected_choice)
    changed = sum(
        1 for row, pair in zip(random_rows, baseline_pairs) if row["rejected"].strip() != pair.rejected.strip()
    )
    # On a structure with no wrong rule the baseline's rejected is already a generic random
    # pick (the world's teacher has no student error to simulate there): say how much differs.
    notes.append(
        f"random-wrong: {changed} of {len(random_rows)} rejected texts differ from the baseline's; "
        f"{lure_rejected} baseline rejected picked the lure (the simulated student error), none here"
    )
    random_wrong = run_variant("random-wrong", args, data, [f"train.pairs={random_file}"])
    results["random-wrong"] = (random_wrong, len(baseline_pairs))

    sft = run_variant("sft", args, data, ["train.method=sft"])
    results["sft"] = (sft, len(baseline_pairs))

    rows_out = [figures(name, outputs, n, args.out) for name, (outputs, n) in results.items()]
    text = report(rows_out, notes, args)
    (args.out / "ablations.md").write_text(text, encoding="utf-8")
    (args.out / "ablations.json").write_text(
        json.dumps(rows_out, ensure_ascii=False, indent=2) + "\n", encoding="utf-8"
    )
    print()
    print(text)
    print(f"written: {args.out / 'ablations.md'}, {args.out / 'ablations.json'}")
    return 0


if __name__ == "__main__":
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    sys.exit(main())
