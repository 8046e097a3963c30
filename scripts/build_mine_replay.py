"""Rebuild the bundled mine recording and the bundled hard negatives, deterministically.

    python scripts/build_mine_replay.py           # rewrite both files
    python scripts/build_mine_replay.py --check   # exit 1 if either file is out of date

The recording (distill/resources/replay/mine.jsonl) holds the responses of two made-up models,
"example-teacher" and "example-student", for the 24 bundled seeds. The project wrote them; no
model produced them. Every text comes from distill/resources/seed_notes.jsonl:
- golden   : the seed's golden_path (a careful step-by-step solution);
- golden_short: its last step and the answer line (a correct but thin answer);
- failed   : the seed's failed_path (the student's typical mistake);
- failed_short: its last sentence and the answer line;
- unparseable: the seed's unparseable_output (hesitates between two choices; no answer).
PLAN below says which text each sample gets: the teacher is right on 22 seeds and falls for
the trap on 2; the student is right on 2 or 3 of 3 samples for 4 seeds (not selected), on 1 of
3 for 5 and on none for the rest; three student samples are unreadable. Judge responses
(written here, in Korean) cover the selected seeds that have a second correct reasoning.

Rows are in the one recording format (distill/llm/recording.py; `note` says which text a sample
got), keyed with the mine stage's own request builders (distill/mining.py, MineConfig defaults),
so a change to the answer prompt, the judge template or a default generation parameter shows up
as a stale recording (`--check` and tests/stages/test_mine_stage.py).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

RECORDING = REPO / "distill" / "resources" / "replay" / "mine.jsonl"
HARD_NEGATIVES = REPO / "distill" / "resources" / "hard_negatives.jsonl"

G, g, F, f, U = "golden", "golden_short", "failed", "failed_short", "unparseable"

# seed id: (teacher sample 0, [student samples 0, 1, 2])
PLAN: dict[str, tuple[str, list[str]]] = {
    "seed-001": (G, [F, f, F]),
    "seed-002": (G, [F, g, f]),
    "seed-003": (G, [f, F, f]),
    "seed-004": (G, [F, F, f]),
    "seed-005": (G, [f, F, G]),
    "seed-006": (G, [G, f, g]),  # student 2/3: not selected
    "seed-007": (G, [F, f, F]),
    "seed-008": (G, [f, F, F]),
    "seed-009": (F, [F, f, F]),  # teacher wrong: not selected
    "seed-010": (G, [F, f, F]),
    "seed-011": (G, [f, F, f]),
    "seed-012": (G, [F, F, f]),
    "seed-013": (G, [g, g, F]),  # student 2/3: not selected
    "seed-014": (G, [F, f, g]),
    "seed-015": (G, [f, F, F]),
    "seed-016": (G, [F, U, f]),
    "seed-017": (G, [F, f, F]),
    "seed-018": (G, [F, G, g]),  # student 2/3: not selected
    "seed-019": (G, [g, F, f]),
    "seed-020": (G, [U, F, f]),
    "seed-021": (F, [g, F, f]),  # teacher wrong: not selected
    "seed-022": (G, [f, F, F]),
    "seed-023": (G, [U, g, F]),
    "seed-024": (G, [g, G, g]),  # student 3/3: not selected
}

JUDGE_PREFERS = (
    "풀이 {better}는 지문의 단서로 대상을 먼저 특정하고, 오답 선택지마다 배제하는 근거를 하나씩 제시한다. "
    "풀이 {worse}도 같은 정답에 이르지만 마지막 판단 하나만 적어, 같은 구조의 다른 문제에 옮겨 쓰기 어렵다.\n"
    "판정: {better}"
)
JUDGE_TIE = (
    "두 풀이는 같은 근거를 같은 순서로 들어 같은 정답에 이른다. 어느 한쪽이 더 엄밀하다고 할 수 없다.\n판정: TIE"
)


def golden_short(golden_path: str) -> str:
    body, answer = golden_path.rsplit("\n", 1)
    last = body.strip().splitlines()[-1]
    step = last.split(". ", 1)[1] if last[:1].isdigit() and ". " in last else last
    return f"{step.strip()}\n{answer.strip()}"


def failed_short(failed_path: str) -> str:
    body, answer = failed_path.rsplit("\n", 1)
    sentences = [s for s in body.strip().replace("\n", " ").split(". ") if s.strip()]
    last = sentences[-1].strip()
    return f"{last if last.endswith('.') else last + '.'}\n{answer.strip()}"


def sample_text(kind: str, note: dict) -> str:
    if kind == G:
        return note["golden_path"]
    if kind == g:
        return golden_short(note["golden_path"])
    if kind == F:
        return note["failed_path"]
    if kind == f:
        return failed_short(note["failed_path"])
    if kind == U:
        if not note.get("unparseable_output"):
            raise SystemExit(f"{note['id']}: PLAN asks for an unparseable sample but seed_notes has none")
        return note["unparseable_output"]
    raise ValueError(kind)


def estimated_tokens(text: str) -> int:
    """Characters / 2: a stand-in for a tokenizer count (Korean text), never billed."""
    return max(1, len(text) // 2)


def response_for(text: str, prompt_chars: int):
    """The recorded response for a text the project wrote (token counts estimated, never billed)."""
    from distill.llm import Response

    return Response(
        text=text,
        input_tokens=max(1, prompt_chars // 2),
        output_tokens=estimated_tokens(text),
        latency_s=0.0,
        finish_reason="STOP",
    )


def _prompt_chars(request) -> int:
    return sum(len(m["content"]) for m in request.messages)


def judge_text(first, second, swapped: bool) -> str:
    """The recorded verdict: TIE for two identical reasonings, else the teacher's step-by-step golden path."""
    if first.reasoning.strip() == second.reasoning.strip():
        return JUDGE_TIE
    better = "B" if swapped else "A"
    return JUDGE_PREFERS.format(better=better, worse="A" if better == "B" else "B")


def item_rows(cfg, item, note: dict, judge_template) -> list[dict]:
    """The recorded teacher and student answers of one seed, and its judge verdict when it gets one."""
    from distill.llm import Response
    from distill.llm.recording import recording_row
    from distill.mining import (
        answer_requests,
        attempt,
        decide,
        generation_params,
        judge_candidates,
        judge_order_swapped,
        judge_request,
    )

    teacher_kind, student_kinds = PLAN[item.id]
    rows: list[dict] = []
    attempts: dict[str, list] = {"teacher": [], "student": []}
    for role, model, kinds in (("teacher", cfg.teacher, [teacher_kind]), ("student", cfg.student, student_kinds)):
        if len(kinds) != (cfg.teacher_samples if role == "teacher" else cfg.student_samples):
            raise SystemExit(f"{item.id}: PLAN has {len(kinds)} {role} samples")
        for request, kind in zip(answer_requests([item], role, len(kinds), generation_params(cfg, role)), kinds):
            text = sample_text(kind, note)
            rows.append(
                recording_row(request, response_for(text, _prompt_chars(request)), model=model, role=role, note=kind)
            )
            attempts[role].append(attempt(item, role, "replay", model, request, Response(text=text)))
    decision = decide(item, attempts["teacher"], attempts["student"], cfg.pass_rate_threshold)
    candidates = judge_candidates(decision, attempts["teacher"], attempts["student"])
    if candidates is not None:
        swapped = judge_order_swapped(item.id)
        first, second = (candidates[1], candidates[0]) if swapped else candidates
        request = judge_request(item, judge_template, first, second, generation_params(cfg, "judge"))
        response = response_for(judge_text(first, second, swapped), _prompt_chars(request))
        rows.append(recording_row(request, response, model=cfg.teacher, role="judge", note="judge"))
    return rows


def build_rows() -> list[dict]:
    from distill.io import read_jsonl
    from distill.llm.templates import load_template
    from distill.resources import resource_path
    from distill.stages.mine import MineConfig, load_seed_items

    cfg = MineConfig()
    items = load_seed_items(cfg)
    notes = {row["id"]: row for row in read_jsonl(resource_path("seed_notes.jsonl"))}
    if set(PLAN) != {item.id for item in items}:
        raise SystemExit("PLAN must name every bundled seed exactly once")
    judge_template = load_template("judge")
    return [row for item in items for row in item_rows(cfg, item, notes[item.id], judge_template)]


def hard_negatives_text(recording: Path) -> str:
    """What the default mine run selects from this recording (no MLflow involved)."""
    from distill.contracts import write_hard_negatives
    from distill.llm import ResponseCache
    from distill.llm.recording import import_recording
    from distill.llm.roles import BackendSettings, role_backend
    from distill.mining import read_error_types
    from distill.stages.mine import MineConfig, collect, load_seed_items

    cfg = MineConfig()
    settings = BackendSettings.of(cfg)
    with tempfile.TemporaryDirectory() as tmp:
        cache = ResponseCache(Path(tmp) / "cache.sqlite")
        import_recording(cache, recording)
        teacher = role_backend(cfg.teacher_backend, cfg.teacher, cache=cache, settings=settings)
        student = role_backend(cfg.student_backend, cfg.student, cache=cache, settings=settings)
        result = collect(
            cfg, load_seed_items(cfg), teacher, student, error_types=read_error_types(cfg.error_types_path())
        )
        cache.close()
        return write_hard_negatives(Path(tmp) / "hard_negatives.jsonl", result.hard_negatives).read_text(
            encoding="utf-8"
        )


def main() -> int:
    from distill.io import write_text_atomic

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="only check that the bundled files are up to date")
    args = parser.parse_args()

    from distill.llm.recording import recording_text

    recording = recording_text(build_rows())
    if args.check:
        stale = []
        if not RECORDING.is_file() or RECORDING.read_text(encoding="utf-8") != recording:
            stale.append(RECORDING)
        else:
            if not HARD_NEGATIVES.is_file() or HARD_NEGATIVES.read_text(encoding="utf-8") != hard_negatives_text(
                RECORDING
            ):
                stale.append(HARD_NEGATIVES)
        for path in stale:
            print(f"out of date: {path.relative_to(REPO)} (run scripts/build_mine_replay.py)")
        return 1 if stale else 0
    write_text_atomic(RECORDING, recording)
    hard = hard_negatives_text(RECORDING)
    write_text_atomic(HARD_NEGATIVES, hard)
    print(
        f"wrote {RECORDING.relative_to(REPO)} ({recording.count(chr(10))} responses) and "
        f"{HARD_NEGATIVES.relative_to(REPO)} ({hard.count(chr(10))} hard negatives)"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
