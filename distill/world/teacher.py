"""`world` backend: the known-truth world's teacher, a deterministic LLM behind the backend protocol.

It answers the requests the LLM stages send, computed here from what the request says, with no
network and no model:

- the answer prompt (distill/resources/prompts/answer.txt, answer_direct.txt): it reads the
  question and the numbered choices back from the message, solves them with
  `items.solve` and answers with the world's correct reasoning (`items.reasoning_text`), or
  the answer line alone for the direct prompt. Mine's teacher (the golden path) and augment's
  verifier (verify.txt wraps the same rendering) both get this.
- the blueprint prompt (blueprint.txt, schema `BlueprintOutput`): it reads the seed problem,
  finds its structure and writes a new problem of that structure on the teacher's own content
  pool (`items.make_item` on `pool_words("teacher")`), drawn from a generator seeded by the
  request's text and sample index, so an answer is a pure function of its request. Chosen is
  the right rule, step k mapped to golden step k; rejected reproduces the student's wrong rule
  (`items.WRONG_RULES`) where the structure has one, else a generic wrong pick.
- the judge prompt (judge.txt): of two correct reasonings it prefers the one that states the
  structure's rule (`items.RULES`); TIE when both or neither do.

A request is recognised by matching its last user message against the bundled templates
(the template files are the one home of the prompts' text, so a changed template is still
read). Anything else is a permanent error that names the request: the backend stops at it and
the stage fails with that message, as it would at a provider's 400.

It is a `CachedBackend`, so its answers go through exactly what a network teacher's do: the
response cache (each answer stored as it is computed, a rerun reads it back), the usage
counters (at a price of 0), the schema check of `build_response`, the MLflow trace spans, the
gates downstream. Token counts are the characters of the prompt and the answer: there is no
tokenizer, and the counts only need to show sizes. Synthetic: see `items.SYNTHETIC_NOTE`.
"""

from __future__ import annotations

import functools
import json
import re
from dataclasses import dataclass

from distill.llm.base import CachedBackend, Request, Response, RetryPolicy, build_response
from distill.llm.errors import PermanentError
from distill.world import items as world

WORLD_BACKEND = "world"

TEACHER_POOL = "teacher"
"""The content pool the teacher's new problems draw from (disjoint from seed, test, guard, student)."""

GENERIC_WRONG_STEP = (
    "선택지 가운데 가장 눈에 띄는 표현이 정답일 것이므로 본문의 근거를 따지지 않고 그 선택지를 고른다."
)
"""The wrong step of a rejected reasoning on a structure the student was not taught wrongly."""
GENERIC_ERROR_TYPE = "근거 없는 선택: 본문이 정한 규칙 대신 눈에 띄는 선택지를 고름"

_TEMPLATES = ("blueprint", "judge", "verify", "answer", "answer_direct")
"""The prompts the teacher answers, tried in this order (each matches only its own text)."""

_VARIABLE = re.compile(r"\{\{\s*([A-Za-z_][A-Za-z0-9_]*)\s*\}\}")
_CHOICE_LINE = re.compile(r"^\s*(\d{1,2})\.\s?(.*)$")


# ---------------------------------------------------------------------------------------------
# Reading a request back into the values its template was filled with


def template_pattern(content: str) -> re.Pattern:
    """A regex that matches `content` as `distill.llm.templates.fill_text` fills it, plus a
    trailing block separator, capturing each variable.

    fill_text leaves out a block whose variables are all empty and joins the kept blocks with a
    blank line, so every kept block is followed by one separator once the filled text gets one
    appended: a block with variables is optional, a literal block is required. A variable seen
    twice must have the same value both times (a back-reference)."""
    seen: set[str] = set()
    parts = []
    # Both sides are compared stripped: a plain template file keeps its final newline.
    for block in content.strip().split("\n\n"):
        pieces, position, names = [], 0, []
        for match in _VARIABLE.finditer(block):
            pieces.append(re.escape(block[position : match.start()]))
            name = match.group(1)
            pieces.append(f"(?P={name})" if name in seen else f"(?P<{name}>.*?)")
            seen.add(name)
            names.append(name)
            position = match.end()
        pieces.append(re.escape(block[position:]))
        body = "".join(pieces) + r"\n\n"
        parts.append(f"(?:{body})?" if names else body)
    return re.compile("".join(parts), re.DOTALL)


@functools.cache
def _patterns() -> dict[str, re.Pattern]:
    """{template name: pattern of its user message}, plus `problem`: the answer prompt's user
    message without its instruction (how the blueprint and verify prompts show a problem)."""
    from distill.llm.templates import load_template

    patterns = {}
    for name in _TEMPLATES:
        user = load_template(name).messages[-1]["content"]
        patterns[name] = template_pattern(user)
    answer_user = load_template("answer").messages[-1]["content"]
    patterns["problem"] = template_pattern(answer_user.rsplit("\n\n", 1)[0])
    return patterns


def read_fill(name: str, text: str) -> dict[str, str] | None:
    """The values template `name` (or `problem`) was filled with to give `text`; None when it
    was not filled from that template."""
    match = _patterns()[name].fullmatch(text.strip() + "\n\n")
    if match is None:
        return None
    return {key: (value or "") for key, value in match.groupdict().items()}


@dataclass(frozen=True)
class Problem:
    """What a prompt shows of an item: the question and the choices, in order."""

    question: str
    choices: tuple[str, ...]


def parse_choices(text: str) -> tuple[str, ...] | None:
    """The numbered choices ("1. ...", "2. ...") of a prompt, in order; a line without a number
    continues the choice above it. None when the numbers do not run 1, 2, 3, ..."""
    choices: list[str] = []
    for line in text.strip().splitlines():
        match = _CHOICE_LINE.match(line)
        if match and int(match.group(1)) == len(choices) + 1:
            choices.append(match.group(2).strip())
        elif choices:
            choices[-1] = f"{choices[-1]}\n{line.strip()}".strip()
        else:
            return None
    return tuple(choices) or None


def problem_of(values: dict[str, str]) -> Problem | None:
    choices = parse_choices(values.get("choices", ""))
    if choices is None:
        return None
    return Problem(question=values.get("question", "").strip(), choices=choices)


# ---------------------------------------------------------------------------------------------
# The answers


def _refuse(what: str) -> PermanentError:
    """No answer can come of asking again: the base class stops the backend at it, naming the request."""
    return PermanentError(f"the world teacher cannot answer {what}", kind="world: unanswerable")


def _solve(problem: Problem | None, what: str) -> world.Solution:
    solution = None if problem is None else world.solve(problem.question, problem.choices)
    if solution is None:
        raise _refuse(
            f"{what}: its problem is not an item of the known-truth world (no known structure or no single gold choice)"
        )
    return solution


def answer_text(solution: world.Solution, *, reasoning: bool) -> str:
    """The correct answer: the world's reasoning, or only the answer line."""
    if reasoning:
        return world.reasoning_text(solution.structure, solution.answer)
    return f"정답: {solution.answer}"


def judge_text(solution: world.Solution, reasoning_a: str, reasoning_b: str) -> str:
    """A verdict for two correct reasonings: the one that states the structure's rule wins."""
    rule = world.RULES[solution.structure]
    states = {label: rule in text for label, text in (("A", reasoning_a), ("B", reasoning_b))}
    if states["A"] != states["B"]:
        verdict = "A" if states["A"] else "B"
        other = "B" if verdict == "A" else "A"
        why = (
            f'풀이 {verdict}는 이 문제의 논리 구조를 정하는 규칙("{rule}")을 근거로 밝히지만, '
            f"풀이 {other}는 그 규칙을 밝히지 않는다. 규칙을 밝힌 풀이가 같은 구조의 다른 문제에도 옮겨 쓸 수 있다."
        )
    else:
        verdict = "TIE"
        both = "두 풀이 모두 규칙을 밝힌다" if states["A"] else "두 풀이 모두 규칙을 밝히지 않는다"
        why = f"{both}. 근거의 질에서 어느 쪽도 낫지 않다."
    return f"{why}\n\n판정: {verdict}"


def blueprint_output(request: Request, values: dict[str, str]):
    """The teacher's BlueprintOutput for a blueprint request (see the module docstring)."""
    from distill.blueprint.schema import BlueprintOutput, count_steps

    seed = problem_of(read_fill("problem", values.get("seed_problem", "")) or {})
    structure = None if seed is None else world.structure_of(seed.question)
    if structure is None:
        raise _refuse("this blueprint request: its seed problem is not an item of the known-truth world")
    golden_steps = _int(values.get("golden_steps")) or count_steps(values.get("golden_path", ""))
    # The request's whole text and its sample index decide the new problem, and nothing else.
    rng = world.seeded_rng(json.dumps(request.messages, ensure_ascii=False, sort_keys=True), request.sample_index)
    item, solution = world.make_item(structure, rng, world.pool_words(TEACHER_POOL), f"teacher-{structure}")
    gold = solution.answer
    if solution.lure is not None:
        wrong = solution.lure
        rejected = world.reasoning_text(structure, wrong, wrong=True)
        error_type = world.ERROR_TYPES.get(structure, GENERIC_ERROR_TYPE)
    else:
        # No wrong rule to reproduce: a wrong choice the generator picks, for a reason no rule gives.
        wrong = rng.choice([k for k in range(1, len(item.choices) + 1) if k != gold])
        rejected = "\n".join([f"1. {world.pick_step(wrong)}", f"2. {GENERIC_WRONG_STEP}", "", f"정답: {wrong}"])
        error_type = GENERIC_ERROR_TYPE
    steps = world.reasoning_steps(structure, gold)
    return BlueprintOutput.model_validate(
        {
            "logic_structure": world.RULES[structure],
            "problem": {
                "paragraph": item.paragraph,
                "question": item.question,
                "question_plus": "",
                "choices": list(item.choices),
                "answer": gold,
            },
            # Step k mirrors golden step k (the golden path has the world's same numbered form).
            "chosen_steps": [
                {"golden_step": min(k, max(1, golden_steps)), "text": text} for k, text in enumerate(steps, 1)
            ],
            "chosen_answer_line": f"정답: {gold}",
            "rejected_reasoning": rejected,
            "rejected_choice": wrong,
            "error_type": error_type,
        }
    )


def _int(text: str | None) -> int | None:
    try:
        return int(str(text).strip())
    except (TypeError, ValueError):
        return None


def answer(request: Request) -> str:
    """The text the teacher answers `request` with; a PermanentError for a request it cannot answer."""
    last = request.messages[-1]
    if last["role"] != "user":
        raise _refuse("a request that ends in an assistant message (it writes whole answers only)")
    text = last["content"]
    for name in _TEMPLATES:
        values = read_fill(name, text)
        if values is None:
            continue
        if name == "blueprint":
            return blueprint_output(request, values).model_dump_json()
        if name == "judge":
            solution = _solve(problem_of(values), "this judge request")
            return judge_text(solution, values.get("reasoning_a", ""), values.get("reasoning_b", ""))
        if name == "verify":
            inner = read_fill("answer", values.get("problem", ""))
            solution = _solve(problem_of(inner or {}), "this verify request")
            return answer_text(solution, reasoning=True)
        solution = _solve(problem_of(values), f"this {name} request")
        return answer_text(solution, reasoning=name == "answer")
    raise _refuse(
        "this request: it is none of the prompts it knows (answer, answer_direct, verify, blueprint, judge "
        "in distill/resources/prompts)",
    )


# ---------------------------------------------------------------------------------------------
# The backend


class WorldTeacherBackend(CachedBackend):
    """The world's teacher: `CachedBackend`'s cache, counters, repairs and traces, with each
    answer computed by `answer` instead of fetched."""

    name = WORLD_BACKEND

    def __init__(
        self,
        model: str,
        *,
        cache,
        concurrency: int = 16,
        retry: RetryPolicy | None = None,
        seed: int = 0,
    ):
        from distill.llm.pricing import PriceTable

        super().__init__(model, cache=cache, concurrency=concurrency, retry=retry, prices=PriceTable.free(), seed=seed)

    def __repr__(self) -> str:
        return f"WorldTeacherBackend(model={self.model!r})"

    async def _call_once(self, request: Request, key: str) -> Response:
        text = answer(request)
        prompt = sum(len(m["content"]) for m in request.messages)
        return build_response(request, answer=text, input_tokens=prompt, output_tokens=len(text), finish_reason="stop")
