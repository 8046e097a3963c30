"""Pair files: every bad row names file, row and field; selection is seeded and stratified."""

from __future__ import annotations

import json
from collections import Counter

import pytest

from distill.contracts import answer_line_choice
from distill.errors import InputError
from distill.pairs import load_pairs, select_pairs, split_dev, split_reasoning, subsample_pairs, validate_pairs


def make_pair(index: int, subject: str = "한국사", seed_id: str | None = None) -> dict:
    problem = {
        "id": f"p{index}",
        "paragraph": "",
        "question": f"질문 {index}",
        "question_plus": "",
        "choices": ["가", "나", "다", "라"],
        "answer": 2,
        "subject": subject,
        "source": "test",
    }
    return {
        "id": f"pair{index}",
        "seed_id": seed_id or f"seed{index}",
        "problem": problem,
        "prompt": [{"role": "system", "content": "sys"}, {"role": "user", "content": f"질문 {index}"}],
        "chosen": "근거를 따져 보면 2번이다.\n\n정답: 2",
        "rejected": "유명한 낱말에 끌려 3번을 골랐다.\n\n정답: 3",
        "gold": 2,
        "rejected_choice": 3,
        "subject": subject,
        "transfer": "intra-subject",
        "logic_structure": "test",
        "error_type": "test",
        "prompt_version": "v1",
    }


def write_rows(path, rows):
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    return path


def test_good_file_loads_with_problem_and_meta(tmp_path):
    path = write_rows(tmp_path / "pairs.jsonl", [make_pair(i) for i in range(3)])
    loaded = load_pairs(path)
    assert [p.id for p in loaded.pairs] == ["pair0", "pair1", "pair2"]
    first = loaded.pairs[0]
    assert first.problem is not None and first.problem.n_choices == 4
    assert first.meta["seed_id"] == "seed0" and first.meta["transfer"] == "intra-subject"
    assert first.messages[1]["content"] == "질문 0"
    assert loaded.path == path


@pytest.mark.parametrize(
    "change, field, words",
    [
        (lambda r: r.pop("chosen"), "chosen", "missing"),
        (lambda r: r.pop("rejected_choice"), "rejected_choice", "missing"),
        (lambda r: r.update(chosen="   "), "chosen", "empty"),
        (lambda r: r.update(rejected=r["chosen"]), "rejected", "same text"),
        (lambda r: r.update(gold=7), "gold", "out of range 1..4"),
        (lambda r: r.update(rejected_choice=0), "rejected_choice", "out of range"),
        (lambda r: r.update(rejected_choice=2, rejected="틀린 풀이\n\n정답: 2"), "rejected_choice", "equals gold"),
        (lambda r: r.update(chosen="정답을 쓰지 않은 풀이"), "chosen", "must end with"),
        (lambda r: r.update(rejected="틀린 풀이\n\n정답: 4"), "rejected", "its choice is 3"),
        (lambda r: r.update(prompt=[]), "prompt", "non-empty list"),
        (lambda r: r.update(prompt=[{"role": "user"}]), "prompt", "content"),
        (lambda r: r["problem"].update(choices=["하나"]), "problem.choices", "1 choices"),
    ],
)
def test_bad_row_names_file_row_and_field(tmp_path, change, field, words):
    rows = [make_pair(i) for i in range(3)]
    change(rows[1])
    path = write_rows(tmp_path / "bad.jsonl", rows)
    with pytest.raises(InputError) as info:
        load_pairs(path)
    error = info.value
    assert error.path == str(path)
    assert error.row == 2
    assert error.field == field
    assert words in str(error)


def test_row_numbers_are_file_lines_even_with_blank_lines(tmp_path):
    good, bad = make_pair(0), make_pair(1)
    bad["chosen"] = ""
    path = tmp_path / "pairs.jsonl"
    path.write_text(json.dumps(good) + "\n\n" + json.dumps(bad) + "\n", encoding="utf-8")
    with pytest.raises(InputError) as info:
        load_pairs(path)
    assert info.value.row == 3 and info.value.field == "chosen"


def test_duplicate_ids_and_bad_json(tmp_path):
    rows = [make_pair(0), make_pair(0)]
    with pytest.raises(InputError, match="duplicate id") as info:
        load_pairs(write_rows(tmp_path / "dup.jsonl", rows))
    assert info.value.row == 2 and info.value.field == "id"
    broken = tmp_path / "broken.jsonl"
    broken.write_text(json.dumps(make_pair(0)) + "\n{not json\n", encoding="utf-8")
    with pytest.raises(InputError, match="not valid JSON") as info:
        load_pairs(broken)
    assert info.value.row == 2


def test_string_prompt_becomes_user_message_and_problem_is_optional():
    raw = make_pair(0)
    raw.pop("problem")
    raw["prompt"] = "그냥 문자열 프롬프트"
    (pair,) = validate_pairs("mem", [(1, raw)])
    assert pair.messages == ({"role": "user", "content": "그냥 문자열 프롬프트"},)
    assert pair.problem is None


def test_folder_with_pairs_jsonl_and_hf_dataset(tmp_path):
    from datasets import Dataset

    rows = [make_pair(i) for i in range(4)]
    folder = tmp_path / "pairs_dir"
    folder.mkdir()
    write_rows(folder / "pairs.jsonl", rows)
    assert len(load_pairs(folder).pairs) == 4

    hf = tmp_path / "hf"
    flat = [dict(r, prompt=json.dumps(r["prompt"]), problem=None) for r in rows]
    for r in flat:
        r["prompt"] = json.loads(r["prompt"])
    Dataset.from_list(flat).save_to_disk(str(hf))
    loaded = load_pairs(hf)
    assert [p.id for p in loaded.pairs] == [r["id"] for r in rows]
    flat[2]["chosen"] = ""
    bad = tmp_path / "hf_bad"
    Dataset.from_list(flat).save_to_disk(str(bad))
    with pytest.raises(InputError) as info:
        load_pairs(bad)
    assert info.value.row == 3 and info.value.field == "chosen"


def test_mlflow_artifact_uri_is_downloaded_then_read(tmp_path, mlflow_store):
    import mlflow

    folder = tmp_path / "out"
    folder.mkdir()
    write_rows(folder / "pairs.jsonl", [make_pair(i) for i in range(3)])
    with mlflow.start_run() as run:
        mlflow.log_artifacts(str(folder), "pairs")
    loaded = load_pairs(f"runs:/{run.info.run_id}/pairs", download_dir=tmp_path / "dl")
    assert [p.id for p in loaded.pairs] == ["pair0", "pair1", "pair2"]
    assert loaded.source.startswith("runs:/")
    assert str(loaded.path).startswith(str(tmp_path / "dl"))


def test_answer_line_helpers():
    assert answer_line_choice("풀이\n\n정답: 3") == 3
    assert answer_line_choice("풀이\n정답:3  \n\n") == 3
    assert answer_line_choice("정답: 3 이다") is None
    assert split_reasoning("첫 줄\n둘째 줄\n\n정답: 4") == ("첫 줄\n둘째 줄", "정답: 4")
    assert split_reasoning("정답: 1") == ("", "정답: 1")


def _pairs(counts: dict[str, int]):
    rows = []
    index = 0
    for subject, n in counts.items():
        for _ in range(n):
            rows.append(make_pair(index, subject=subject))
            index += 1
    return validate_pairs("mem", list(enumerate(rows, start=1)))


def test_subsample_is_stratified_seeded_and_keeps_order():
    pairs = _pairs({"국어": 30, "한국사": 20, "경제": 10})
    picked = subsample_pairs(pairs, 12, seed=3)
    assert Counter(p.subject for p in picked) == {"국어": 6, "한국사": 4, "경제": 2}
    assert [p.id for p in picked] == [p.id for p in subsample_pairs(pairs, 12, seed=3)]
    assert [p.id for p in picked] != [p.id for p in subsample_pairs(pairs, 12, seed=4)]
    positions = [pairs.index(p) for p in picked]
    assert positions == sorted(positions)
    assert subsample_pairs(pairs, 0, seed=0) == pairs
    assert subsample_pairs(pairs, 1000, seed=0) == pairs


def test_dev_split_keeps_seed_groups_together_and_is_fixed_across_n_pairs():
    rows = []
    for i in range(40):
        rows.append(make_pair(i, subject="국어" if i % 2 else "한국사", seed_id=f"seed{i // 2}"))
    # two pairs per seed, each seed with one 국어 and one 한국사 pair
    pairs = validate_pairs("mem", list(enumerate(rows, start=1)))
    train, dev = split_dev(pairs, 0.2, seed=1)
    assert len(dev) == 8 and len(train) == 32
    assert not {p.group for p in train} & {p.group for p in dev}
    _, dev_small = select_pairs(pairs, n_pairs=5, dev_fraction=0.2, seed=1)
    train_big, dev_big = select_pairs(pairs, n_pairs=0, dev_fraction=0.2, seed=1)
    assert [p.id for p in dev_small] == [p.id for p in dev_big] == [p.id for p in dev]
    assert len(train_big) == 32
    train_none, dev_none = split_dev(pairs, 0.0, seed=1)
    assert dev_none == [] and train_none == pairs
