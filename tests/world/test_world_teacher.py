"""The known-truth world's teacher (`world` backend): it answers the world's items correctly,
writes blueprints that pass every augment gate on new content from its own pool, keeps every
answer in the response cache like a network teacher, and refuses what it cannot answer with a
clear error instead of a crash."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from distill.blueprint import gates
from distill.blueprint.candidates import Candidate, apply_dedup, apply_verification, screen, verification_requests
from distill.blueprint.decontam import build_reference_index
from distill.blueprint.plan import build_plan, load_plan
from distill.blueprint.prompt import blueprint_request, load_templates
from distill.blueprint.schema import BlueprintOutput
from distill.contracts import HardNegative
from distill.data.prompts import render_messages
from distill.errors import ConfigError
from distill.extraction import extract_answer, parse_judge_verdict
from distill.llm import GenerationParams, Request, ResponseCache, make_backend
from distill.llm.errors import BackendStopped
from distill.llm.templates import load_template
from distill.world import items as world
from distill.world.teacher import GENERIC_WRONG_STEP, WorldTeacherBackend

MODEL = "world-teacher"
PER_STRUCTURE = 3


@pytest.fixture
def teacher(tmp_path):
    backend = make_backend("world", MODEL, cache=str(tmp_path / "cache.sqlite"))
    yield backend
    backend.close()
    backend.cache.close()


def seed_items(per_structure: int = PER_STRUCTURE):
    return world.generate("seed", per_structure)


def hard_negative(item) -> HardNegative:
    """A seed the world's student got wrong, as mine writes it: the teacher's reasoning as the
    golden path, the student's wrong rule (or a wrong pick) as the failed path."""
    solution = world.solve_item(item)
    if solution.lure is not None:
        wrong, failed = solution.lure, world.reasoning_text(solution.structure, solution.lure, wrong=True)
    else:
        wrong = next(k for k in range(1, len(item.choices) + 1) if k != solution.answer)
        failed = f"1. {world.pick_step(wrong)}\n2. {GENERIC_WRONG_STEP}\n\n정답: {wrong}"
    return HardNegative(
        item=item,
        golden_path=world.reasoning_text(solution.structure, solution.answer),
        failed_path=failed,
        student_choice=wrong,
        error_type=world.ERROR_TYPES.get(solution.structure, ""),
        teacher_choice=solution.answer,
    )


def pool_of_words() -> dict[str, str]:
    return {word: pool for pool in world.POOLS for word in world.pool_words(pool)}


def content_pools(text: str, owners: dict[str, str]) -> list[str]:
    """The pool of every content word in a text. A content word starts a token (particles and
    punctuation follow it: "X에서", "X:", "X."), and every pseudo-word has three syllables."""
    return [owners[token[:3]] for token in re.findall(r"[가-힣]+", text) if token[:3] in owners]


# ---------------------------------------------------------------------------------------------
# Answers


def test_answers_every_structure_correctly_and_directly(teacher):
    items = world.generate("test", 4)
    requests = [
        Request(messages=tuple(render_messages(item, reasoning=reasoning)), label=f"teacher {item.id}")
        for item in items
        for reasoning in (True, False)
    ]
    responses = teacher.generate(requests, progress=False)
    assert {item.subject for item in items} == set(world.STRUCTURES)
    for k, item in enumerate(items):
        reasoned, direct = responses[2 * k], responses[2 * k + 1]
        assert reasoned.usable and direct.usable and reasoned.backend == "world" and reasoned.model == MODEL
        assert reasoned.text == world.reasoning_text(item.subject, item.answer)
        assert direct.text == f"정답: {item.answer}"
        assert extract_answer(reasoned.text, item.n_choices) == item.answer == extract_answer(direct.text, 5)
    # the teacher solves what it is sent: the same item with its choices reordered still gets its gold
    item = items[0]
    order = list(reversed(range(len(item.choices))))
    shuffled = type(item)(
        id=item.id,
        paragraph=item.paragraph,
        question=item.question,
        choices=tuple(item.choices[i] for i in order),
        answer=order.index(item.answer - 1) + 1,
        subject=item.subject,
    )
    (response,) = teacher.generate([Request(messages=tuple(render_messages(shuffled)))], progress=False)
    assert extract_answer(response.text, 5) == shuffled.answer != item.answer


def test_usage_is_free_and_every_answer_is_cached_once(tmp_path):
    path = tmp_path / "cache.sqlite"
    requests = [Request(messages=tuple(render_messages(item))) for item in seed_items(1)]
    with make_backend("world", MODEL, cache=str(path)) as first:
        fetched = first.generate(requests, progress=False)
        assert first.usage.fetched == first.usage.requests == len(requests) and first.usage.cache_hits == 0
        assert first.usage.cost_usd == 0 and first.usage.input_tokens > 0 and first.usage.output_tokens > 0
        first.cache.close()

    cache = ResponseCache(str(path))
    assert len(cache.get_many([r.key for r in fetched])) == len(requests)
    with WorldTeacherBackend(MODEL, cache=cache) as second:
        again = second.generate(requests, progress=False)
        # read back, nothing computed again
        assert second.usage.requests == second.usage.fetched == 0 and second.usage.cache_hits == len(requests)
        assert all(r.cached and r.attempts == 0 for r in again)
        assert [r.text for r in again] == [r.text for r in fetched]
    cache.close()


def test_judge_prefers_the_reasoning_that_states_the_rule(teacher):
    item = seed_items(1)[1]
    right = world.reasoning_text(item.subject, item.answer)
    bare = f"1. {world.pick_step(item.answer)}\n2. 보기를 차례로 살펴 고른다.\n\n정답: {item.answer}"
    template = load_template("judge")
    verdicts = []
    for a, b in ((right, bare), (bare, right), (right, right)):
        values = {
            "paragraph": item.paragraph,
            "question": item.question,
            "question_plus": "",
            "choices": "\n".join(f"{k}. {c}" for k, c in enumerate(item.choices, 1)),
            "gold": str(item.answer),
            "reasoning_a": a,
            "reasoning_b": b,
        }
        verdicts.append(Request(messages=tuple(template.fill(values)), params=GenerationParams(temperature=0.0)))
    responses = teacher.generate(verdicts, progress=False)
    assert [parse_judge_verdict(r.text) for r in responses] == ["A", "B", "TIE"]


def test_a_request_it_cannot_answer_stops_it_with_a_clear_error(teacher, tmp_path):
    from distill.contracts import MCQItem

    foreign = MCQItem(
        id="real-1", paragraph="", question="다음 중 조선 후기의 일은?", choices=("a", "b", "c", "d"), answer=1
    )
    with pytest.raises(BackendStopped, match=r"teacher real-1.*world teacher cannot answer this answer request"):
        teacher.generate([Request(messages=tuple(render_messages(foreign)), label="teacher real-1")], progress=False)

    other = make_backend("world", MODEL, cache=str(tmp_path / "other.sqlite"))
    with pytest.raises(BackendStopped, match=r"hello.*none of the prompts it knows"):
        other.generate([Request.chat("hello there", label="hello")], progress=False)
    assert other.usage.failures == 1 and other.usage.fetched == 0  # nothing stored for it
    other.close()
    other.cache.close()


def test_factory_and_roles_know_the_world_backend(tmp_path):
    from distill.llm import BACKENDS
    from distill.llm.roles import check_role

    assert "world" in BACKENDS and check_role("teacher", "World", " world-teacher ") == ("world", MODEL)
    with pytest.raises(ConfigError, match="world backend has no batch mode"):
        make_backend("world", MODEL, cache=str(tmp_path / "c.sqlite"), mode="batch")
    with pytest.raises(ConfigError, match="needs a model name"):
        make_backend("world", " ", cache=str(tmp_path / "c.sqlite"))


# ---------------------------------------------------------------------------------------------
# Blueprints


def blueprint_candidates(negatives, pairs_per_seed: int = 2):
    entries = build_plan([(n.id, n.item.subject) for n in negatives], load_plan(), 0, pairs_per_seed=pairs_per_seed)
    by_seed = {n.id: n for n in negatives}
    return [Candidate(entry=e, negative=by_seed[e.seed_id]) for e in entries]


def test_blueprints_pass_every_gate_on_the_teachers_own_content(teacher):
    from distill.stages.augment import AugmentConfig, apply_alignment

    negatives = [hard_negative(item) for item in seed_items()]
    candidates = blueprint_candidates(negatives)
    templates = load_templates()
    params = GenerationParams(temperature=0.8, max_output_tokens=8192, seed=0)
    requests = [blueprint_request(c.negative, c.entry, templates["blueprint"], params) for c in candidates]
    for candidate, response in zip(candidates, teacher.generate(requests, progress=False)):
        assert response.usable and response.parsed is not None
        BlueprintOutput.model_validate(response.parsed)
        candidate.response = response

    # every gate of a run, against the world's other pools; the alignment gate on at 0.8 (the
    # steps match the golden path's but for the choice number in the first: 0.83, or 1.0)
    cfg = AugmentConfig(teacher=MODEL, teacher_backend="world", eval_sets=[], min_alignment=0.8)
    references = build_reference_index(
        world.generate("test", 25) + world.generate("guard", 10), [n.item for n in negatives]
    )
    screen(candidates, references, cfg)
    apply_alignment(candidates, cfg.min_alignment)
    verify = verification_requests(candidates, templates["verify"], GenerationParams(temperature=0.0), 1)
    answers = teacher.generate(verify, progress=False)
    apply_verification(candidates, {c.id: [answers[i]] for i, c in enumerate(c for c in candidates if c.alive)})
    apply_dedup(candidates, cfg.dedup_threshold, cfg.ngram)
    refused = {c.id: (c.refusal.gate, c.refusal.reason) for c in candidates if not c.alive}
    assert refused == {}
    expected = gates.active_gates(verify=True, alignment=True)
    assert all(c.passed == expected for c in candidates)

    owners = pool_of_words()
    for candidate in candidates:
        output, seed = candidate.output, candidate.negative.item
        structure = seed.subject
        # the same structure, new content, solved as the teacher says
        assert world.structure_of(output.problem.question) == structure
        solution = world.solve(output.problem.question, output.problem.choices)
        assert solution is not None and solution.answer == output.problem.answer
        assert output.logic_structure == world.RULES[structure]
        assert [s.text for s in output.chosen_steps] == world.reasoning_steps(structure, solution.answer)
        assert [s.golden_step for s in output.chosen_steps] == [1, 2]
        if structure in world.WRONG_RULES:  # the student's own error, on the new problem
            assert output.rejected_choice == solution.lure
            assert output.rejected_reasoning == world.reasoning_text(structure, solution.lure, wrong=True)
        assert output.rejected_choice != output.problem.answer
        # content words: the teacher's pool only, never the seeds', the test set's or the student's
        text = "\n".join([output.problem.paragraph, output.problem.question, *output.problem.choices])
        pools = content_pools(text, owners)
        assert len(pools) >= 5 and set(pools) == {"teacher"}, pools
    assert len({c.output.problem.paragraph for c in candidates}) == len(candidates)


def test_a_blueprint_is_a_function_of_its_request(tmp_path, teacher):
    negative = hard_negative(seed_items(1)[0])
    (candidate,) = blueprint_candidates([negative], pairs_per_seed=1)
    template = load_templates()["blueprint"]
    request = blueprint_request(negative, candidate.entry, template, GenerationParams(temperature=0.8, seed=0))
    resample = Request(messages=request.messages, params=request.params, schema=request.schema, sample_index=1)
    first, second = teacher.generate([request, resample], progress=False)
    with make_backend("world", "another-name", cache=str(tmp_path / "fresh.sqlite")) as fresh:
        (again,) = fresh.generate([request], progress=False)
        fresh.cache.close()
    assert again.parsed == first.parsed and not again.cached
    assert second.parsed["problem"] != first.parsed["problem"]  # another sample, another problem


# ---------------------------------------------------------------------------------------------
# The augment stage, end to end


def write_jsonl(path: Path, rows) -> str:
    path.write_text("".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows), encoding="utf-8")
    return str(path)


def test_augment_stage_with_the_world_teacher_makes_pairs(mlflow_store, tmp_path):
    from distill.stages.augment import AugmentConfig, run

    negatives = [hard_negative(item) for item in seed_items(1)]
    cfg = AugmentConfig(
        hard_negatives=write_jsonl(tmp_path / "hard_negatives.jsonl", [n.to_dict() for n in negatives]),
        teacher=MODEL,
        teacher_backend="world",
        pairs_per_seed=2,
        eval_sets=[write_jsonl(tmp_path / "world_test.jsonl", [i.to_dict() for i in world.generate("test", 10)])],
        cache_path=str(tmp_path / "cache.sqlite"),
        output_dir=str(tmp_path / "out"),
    )
    result = run(cfg)
    expected = 2 * len(negatives)
    assert result.candidates == expected and result.accepted == expected
    assert all(result.gate_counts[g]["rejected"] == 0 for g in gates.active_gates(verify=True, alignment=False))
    assert result.metrics["llm/cost_usd"] == 0 and result.metrics["llm/teacher/fetched"] == expected
    pairs = [json.loads(line) for line in result.pairs_path.read_text(encoding="utf-8").splitlines()]
    for pair in pairs:
        assert pair["chosen"].endswith(f"\n\n정답: {pair['gold']}")
        assert (
            pair["rejected"].endswith(f"\n\n정답: {pair['rejected_choice']}")
            and pair["rejected_choice"] != pair["gold"]
        )

    # a rerun reads every answer back from the cache and writes the same pairs
    again = run(cfg)
    assert again.metrics["llm/teacher/cache_hits"] == expected and again.metrics["llm/teacher/fetched"] == 0
    assert again.pairs_path.read_text(encoding="utf-8") == result.pairs_path.read_text(encoding="utf-8")
