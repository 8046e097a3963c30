"""Rebuild the bundled augment recording (distill/resources/replay/augment.jsonl), deterministically.

The recording is what `augment` with no parameters replays: one teacher response per planned
candidate and one verifier response per candidate that reaches verification. The responses
were written by the project (teacher and verifier name "example-teacher"), not fetched from
any API; they live, readable and diffable, in scripts/augment_sources/*.yaml (one file per
seed subject), keyed by candidate id. Each entry:

    - id: seed-001-aug1                  # the planned candidate
      target: intra-subject 한국사        # its planned transfer kind and subject (checked)
      expect: accepted                   # or the gate that must refuse it
      blueprint: {...}                   # a BlueprintOutput, or raw_response: "<text>"
      verify: "...\n정답: 3"              # the verifier's answer, when it reaches verification

This script

1. builds the run's plan and requests exactly as `augment` does with its defaults (the same
   hard negatives, plan, seed, templates and generation parameters);
2. pairs each blueprint request with its authored response (JSON text of the blueprint, or a
   raw text for a response that must fail the schema gate), and each candidate that reaches
   verification with its authored verifier answer;
3. replays the gates on them and checks that every candidate ends where the authored file
   says it must (`expect`: accepted, or the gate that refuses it);
4. writes one JSON line per response in the one recording format (distill/llm/recording.py),
   keyed under the backend name "recording", in plan order (blueprints first, then
   verifications); a blueprint row's `note` is the outcome its source expects.

Token counts in the recording are estimates (one token per two characters of prompt or
answer), since no model produced these texts. Run it after changing a template, the plan,
the defaults or the hard negatives:

    python scripts/build_augment_replay.py [--hard-negatives FILE] [--check]

`--check` rebuilds in memory and fails if the bundled file differs (used by the tests).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from distill.blueprint.candidates import (  # noqa: E402
    apply_dedup,
    apply_verification,
    blueprint_requests,
    screen,
    verification_requests,
)
from distill.blueprint.schema import BlueprintOutput  # noqa: E402
from distill.llm.base import Response  # noqa: E402
from distill.llm.recording import RECORDED_BACKEND, bundled_recording, recording_row, recording_text  # noqa: E402
from distill.stages.augment import AugmentConfig, prepare, teacher_params, verifier_params  # noqa: E402

SOURCES = REPO / "scripts" / "augment_sources"
OUTCOMES = ("accepted", "schema", "answers", "form", "decontamination", "verification", "dedup")


def estimate_tokens(text: str) -> int:
    return max(1, len(text) // 2)


def load_authored(folder: Path) -> dict[str, Any]:
    """Every authored candidate of every YAML file in `folder`, by candidate id."""
    import yaml

    authored: dict[str, Any] = {}
    teacher = "example-teacher"
    for path in sorted(folder.glob("*.yaml")):
        data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
        if data.get("teacher", teacher) != teacher:
            raise SystemExit(f"{path}: every source must be written for teacher {teacher!r}")
        for row in data.get("candidates") or []:
            cid = row["id"]
            if cid in authored:
                raise SystemExit(f"{path}: candidate {cid} written twice")
            if row.get("expect", "accepted") not in OUTCOMES:
                raise SystemExit(f"{path}: {cid}: expect must be one of {OUTCOMES}")
            if ("blueprint" in row) == ("raw_response" in row):
                raise SystemExit(f"{path}: {cid}: give exactly one of blueprint and raw_response")
            authored[cid] = row
    return {"teacher": teacher, "candidates": authored}


def blueprint_text(authored: dict[str, Any]) -> str:
    """The JSON a teacher would have answered for an authored blueprint. Shorthands: a chosen
    step may be `[golden_step, text]`; `chosen_answer_line` defaults to the problem's answer."""
    data = dict(authored)
    data["chosen_steps"] = [
        {"golden_step": step[0], "text": step[1]} if isinstance(step, list) else step
        for step in data.get("chosen_steps", [])
    ]
    data.setdefault("chosen_answer_line", f"정답: {data['problem']['answer']}")
    output = BlueprintOutput.model_validate(data)  # authored blueprints must at least parse
    return json.dumps(output.model_dump(mode="json"), ensure_ascii=False)


def response_for(text: str, prompt: str, model: str, *, schema: bool, finish_reason: str = "STOP") -> Response:
    parsed = None
    if schema:
        try:
            parsed = BlueprintOutput.model_validate_json(text).model_dump(mode="json")
        except ValueError:
            parsed = None  # what a backend that cannot enforce the schema would have stored
    return Response(
        text=text,
        parsed=parsed,
        input_tokens=estimate_tokens(prompt),
        output_tokens=estimate_tokens(text),
        latency_s=0.0,
        backend=RECORDED_BACKEND,
        model=model,
        finish_reason=finish_reason,
    )


def teacher_rows(cfg, prepared, candidates, authored: dict[str, Any]) -> list[dict[str, Any]]:
    """Each candidate's blueprint request paired with its authored response (set on the candidate)."""
    rows: list[dict[str, Any]] = []
    requests = blueprint_requests(candidates, prepared.templates["blueprint"], teacher_params(cfg))
    for candidate, request in zip(candidates, requests):
        row = authored[candidate.id]
        expected = f"{candidate.entry.target.kind} {candidate.entry.target.subject}"
        written = str(row.get("target") or "")
        if written != expected:
            raise SystemExit(f"{candidate.id}: authored for target {written}, but the plan says {expected}")
        prompt = request.messages[-1]["content"]
        if "blueprint" in row:
            response = response_for(blueprint_text(row["blueprint"]), prompt, cfg.teacher, schema=True)
        else:
            finish_reason = row.get("finish_reason", "STOP")
            response = response_for(row["raw_response"], prompt, cfg.teacher, schema=True, finish_reason=finish_reason)
        candidate.response = response
        note = row.get("expect", "accepted")
        rows.append(recording_row(request, response, model=cfg.teacher, role="teacher", note=note))
    return rows


def verifier_rows(cfg, prepared, candidates, authored: dict[str, Any]) -> list[dict[str, Any]]:
    """Each re-solve of a screened survivor paired with its authored answer; then the last gates run."""
    rows, answers = [], []
    template, samples = prepared.templates["verify"], cfg.verify_samples
    for request in verification_requests(candidates, template, verifier_params(cfg), samples):
        cid = request.label.removeprefix("verify ")
        text = authored[cid].get("verify")
        if not text:
            raise SystemExit(f"{cid} reaches verification but has no authored verifier answer")
        response = response_for(text, request.messages[-1]["content"], cfg.verifier, schema=False)
        answers.append(response)
        rows.append(recording_row(request, response, model=cfg.verifier, role="verifier"))
    alive = [c for c in candidates if c.alive]
    apply_verification(candidates, {c.id: [answers[i]] for i, c in enumerate(alive)})
    apply_dedup(candidates, cfg.dedup_threshold, cfg.ngram)
    return rows


def outcome_report(candidates, authored: dict[str, Any]) -> list[str]:
    """A line per candidate saying how it ended; exits when one does not end as authored."""
    report, wrong = [], []
    for candidate in candidates:
        outcome = "accepted" if candidate.alive else candidate.refusal.gate
        expected_outcome = authored[candidate.id].get("expect", "accepted")
        reason = "" if candidate.alive else f": {candidate.refusal.reason}"
        report.append(f"{candidate.id:<16} {outcome:<16}{reason}")
        if outcome != expected_outcome:
            wrong.append(f"{candidate.id}: expected {expected_outcome}, got {outcome}{reason}")
    if wrong:
        raise SystemExit("candidates that do not end as authored:\n  " + "\n  ".join(wrong))
    return report


def build(hard_negatives: str | None) -> tuple[list[dict[str, Any]], list[str]]:
    """The recording rows, and a line per candidate saying how it ended."""
    authored = load_authored(SOURCES)
    cfg = AugmentConfig(hard_negatives=hard_negatives)
    if authored["teacher"] != cfg.teacher or cfg.verifier != cfg.teacher:
        raise SystemExit(f"the recording's teacher {authored['teacher']!r} is not the default teacher {cfg.teacher!r}")
    prepared = prepare(cfg)
    candidates = prepared.candidates()
    written = authored["candidates"]
    missing = [c.id for c in candidates if c.id not in written]
    if missing:
        raise SystemExit(
            f"{SOURCES}: no authored response for {len(missing)} planned candidates: {', '.join(missing)}"
        )

    rows = teacher_rows(cfg, prepared, candidates, written)
    screen(candidates, prepared.index, cfg)
    rows += verifier_rows(cfg, prepared, candidates, written)
    report = outcome_report(candidates, written)
    unused = sorted(set(written) - {c.id for c in candidates})
    if unused:
        report.append(f"(authored but not planned for these hard negatives: {', '.join(unused)})")
    return rows, report


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--hard-negatives", default=None, help="hard negatives file (default: the bundled one)")
    parser.add_argument("--check", action="store_true", help="fail if the bundled recording differs from a rebuild")
    parser.add_argument("--quiet", action="store_true")
    args = parser.parse_args(argv)
    rows, report = build(args.hard_negatives)
    text = recording_text(rows)
    target = bundled_recording("augment")
    if args.check:
        current = target.read_text(encoding="utf-8") if target.is_file() else ""
        if current != text:
            print(f"{target} is out of date: run python scripts/build_augment_replay.py", file=sys.stderr)
            return 1
        print(f"{target} is up to date ({len(rows)} responses)")
        return 0
    from distill.io import write_text_atomic

    write_text_atomic(target, text)
    if not args.quiet:
        print("\n".join(report))
    print(f"wrote {len(rows)} recorded responses to {target}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
