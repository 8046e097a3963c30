"""Format specs (distill/data/specs.py): user layouts described in YAML, the shipped specs for
public Korean benchmarks, spec validation, `auto` over the shipped specs, and `data preview`."""

from __future__ import annotations

import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
import spec_fixtures as F
from data_helpers import KMMLU_HEADER, canonical_row, write_csv, write_jsonl_rows

from distill.data.loaders import detect_format_name, load_items
from distill.data.specs import FORMATS_DIR, load_spec, shipped_specs
from distill.errors import InputError

REPO = Path(__file__).resolve().parents[3]


def _spec(name: str) -> str:
    return str(F.SPECS / f"{name}.yaml")


# --------------------------------------------------------------------------- the user layouts


def test_list_literal_csv(tmp_path):
    path, facts = F.list_literal_csv(tmp_path)
    items = load_items(path, _spec("list_literal_csv"))
    assert len(items) == facts["count"]
    assert [item.answer for item in items] == facts["answers"]
    assert [item.n_choices for item in items] == facts["n_choices"]
    assert [item.source for item in items] == facts["sources"]
    assert items[2].choices[0] == "ㄱ, ㄴ"  # a JSON list literal reads as well as a Python one


def test_passage_per_file_folder(tmp_path):
    folder, facts = F.passage_folder(tmp_path / "passages")
    items = load_items(folder, _spec("passage_per_file"))
    assert [item.id for item in items] == facts["ids"]
    assert [item.answer for item in items] == facts["answers"]  # 0-based in the files
    assert sum(bool(item.question_plus) for item in items) == facts["with_view"]
    assert all(item.paragraph == facts["paragraphs"][item.id.split("-")[0]] for item in items)
    assert {item.source for item in items} == {"p001.json", "p002.json"}


def test_prompt_column_csv_by_regex(tmp_path):
    path, facts = F.prompt_column_csv(tmp_path)
    items = load_items(path, _spec("prompt_column"))
    assert len(items) == facts["count"]
    assert items[0].question == facts["first_question"]  # "(1)" inside the question is not a choice
    assert [item.n_choices for item in items] == facts["n_choices"]
    assert [item.answer for item in items] == facts["answers"]
    assert [item.extra["correct_rate"] for item in items] == facts["correct_rates"]
    assert items[1].choices[1] == "됐다"


def test_letters_and_subject_map(tmp_path):
    path, facts = F.letters_jsonl(tmp_path)
    items = load_items(path, _spec("letters_jsonl"))
    assert [item.answer for item in items] == facts["answers"]
    assert [item.subject for item in items] == facts["subjects"]
    assert [item.id for item in items] == ["L1", "L2"]


def test_optional_fifth_column_tsv_cp949_circled(tmp_path):
    path, facts = F.optional_fifth_tsv(tmp_path)
    items = load_items(path, _spec("optional_fifth_column"))
    assert [item.id for item in items] == facts["ids"]
    assert [item.n_choices for item in items] == facts["n_choices"]
    assert [item.answer for item in items] == facts["answers"]
    assert {item.subject for item in items} == {"국어"}


def test_every_test_spec_has_a_layout_test():
    tested = {"list_literal_csv", "passage_per_file", "prompt_column", "letters_jsonl", "optional_fifth_column"}
    assert {path.stem for path in F.SPECS.glob("*.yaml")} == tested


def test_answer_as_choice_text_and_glob(tmp_path):
    spec = tmp_path / "text_answer.yaml"
    spec.write_text(
        "reader: csv\nfields:\n  question: q\n  choices: {columns: [c1, c2, c3]}\n  answer: {field: gold, as: text}\n",
        encoding="utf-8",
    )
    for name, gold in (("a.csv", "둘"), ("b.csv", " 셋 ")):
        write_csv(tmp_path / name, ["q", "c1", "c2", "c3", "gold"], [["문제?", "하나", "둘", "셋", gold]])
    items = load_items(tmp_path / "*.csv", spec)
    assert [(item.id, item.answer) for item in items] == [("a-1", 2), ("b-1", 3)]


# --------------------------------------------------------------------------- data errors


def _bad(tmp_path, spec_text: str, header, rows, name="d.csv"):
    spec = tmp_path / "s.yaml"
    spec.write_text(spec_text, encoding="utf-8")
    data = write_csv(tmp_path / name, header, rows)
    with pytest.raises(InputError) as info:
        load_items(data, spec)
    return data, info.value


@pytest.mark.parametrize(
    ("spec_text", "header", "rows", "row", "field", "fragment"),
    [
        (
            "fields:\n  question: {field: p, regex: 'Q: (.*)'}\n  choices: c\n",
            ["p", "c"],
            [["Q: 하나?", "['a','b']"], ["질문 없음", "['a','b']"]],
            2,
            "question",
            "does not match",
        ),
        (
            "fields:\n  question: q\n  choices: c\n  answer: {field: a, as: zero_based}\n",
            ["q", "c", "a"],
            [["x?", "['a','b']", "0"], ["y?", "['a','b']", "2"]],
            2,
            "answer",
            "out of range 1..2",
        ),
        (
            "fields:\n  question: q\n  choices: c\n  answer: {field: a, as: letter}\n",
            ["q", "c", "a"],
            [["x?", "['a','b']", "1"]],
            1,
            "answer",
            "not a letter",
        ),
        (
            "fields:\n  question: q\n  choices: c\n  subject: {field: s, map: {law: 법}}\n",
            ["q", "c", "s"],
            [["x?", "['a','b']", "law"], ["y?", "['a','b']", "econ"]],
            2,
            "subject",
            "'econ' is not in the map",
        ),
        ("fields:\n  question: q\n  choices: cc\n", ["q", "c"], [["x?", "['a','b']"]], 1, "cc", "missing column"),
        (
            "fields:\n  question: q\n  choices: c\n",
            ["q", "c"],
            [["x?", "['a','b']"], ["y?", "[a b"]],
            2,
            "choices",
            "neither JSON",
        ),
    ],
    ids=["regex miss", "zero-based out of range", "bad letter", "unmapped subject", "typo column", "bad literal"],
)
def test_data_errors_name_file_row_field(tmp_path, spec_text, header, rows, row, field, fragment):
    data, error = _bad(tmp_path, spec_text, header, rows)
    assert (error.path, error.row, error.field) == (str(data), row, field)
    assert fragment in error.message


# --------------------------------------------------------------------------- spec validation


@pytest.mark.parametrize(
    ("spec_text", "key", "fragment"),
    [
        ("fields:\n  question: q\n  choices: c\n  anwser: a\n", "fields.anwser", "unknown key"),
        (
            "reader: {type: csv, delimeter: ';'}\nfields: {question: q, choices: c}\n",
            "reader.delimeter",
            "unknown key",
        ),
        ("fields:\n  question: q\n", "fields.choices", "missing mapping"),
        (
            "fields:\n  question: q\n  choices: c\n  subject: {field: s, map: {}}\n",
            "fields.subject.map",
            "missing mapping",
        ),
        ("fields:\n  question:\n  choices: c\n", "fields.question", "missing mapping"),
        (
            "fields:\n  question: {field: p, regex: '(unclosed'}\n  choices: c\n",
            "fields.question.regex",
            "bad regular",
        ),
        ("fields:\n  question: q\n  choices: {field: p, regex: '[a-'}\n", "fields.choices.regex", "bad regular"),
        (
            "fields:\n  question: q\n  choices: c\n  answer: {field: a, as: roman}\n",
            "fields.answer.as",
            "unknown answer",
        ),
        ("reader: xlsx\nfields: {question: q, choices: c}\n", "reader.type", "unknown reader"),
        ("reader: {encoding: klingon}\nfields: {question: q, choices: c}\n", "reader.encoding", "unknown encoding"),
        (
            "fields:\n  question: {template: '{$lines}'}\n  choices: c\n",
            "fields.question.template",
            "unknown variable",
        ),
        ("fields:\n  question: {field: q, const: x}\n  choices: c\n", "fields.question", "exactly one"),
        ("fields:\n  question: q\n  choices: {columns: [A, B], required: 3}\n", "fields.choices.required", "2 to 2"),
    ],
    ids=lambda value: value if isinstance(value, str) and "\n" not in value else None,
)
def test_spec_errors_name_spec_file_and_key(tmp_path, spec_text, key, fragment):
    spec = tmp_path / "layout.yaml"
    spec.write_text(spec_text, encoding="utf-8")
    data = write_csv(tmp_path / "d.csv", ["q", "c"], [["x?", "['a','b']"]])
    with pytest.raises(InputError) as info:
        load_items(data, spec)
    assert (info.value.path, info.value.field) == (str(spec), key)
    assert fragment in info.value.message
    assert f"{spec}, field '{key}'" in str(info.value)


def test_spec_that_is_not_yaml_names_its_line(tmp_path):
    spec = tmp_path / "broken.yaml"
    spec.write_text("fields:\n  question: q\n  choices: [unclosed\n", encoding="utf-8")
    with pytest.raises(InputError) as info:
        load_spec(spec)
    assert info.value.path == str(spec) and info.value.row is not None and "not valid YAML" in info.value.message


# --------------------------------------------------------------------------- shipped specs


def test_every_shipped_spec_validates_and_is_packaged():
    assert {"competition", "kice", "kmmlu", "jsonl", "csat_qa", "haerae"} <= set(shipped_specs())
    for name, path in shipped_specs().items():
        assert load_spec(name).path == path.resolve()
    package_data = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]["package-data"]
    assert "formats/*.yaml" in package_data["distill"]
    assert FORMATS_DIR == REPO / "distill" / "formats"


def test_kmmlu_hub_layout_from_csv_parquet_saved_dataset_and_hub(tmp_path, monkeypatch):
    import datasets

    rows = F.kmmlu_rows()
    csv_path = F.write_rows_csv(tmp_path / "Law-test.csv", rows)
    from_csv = load_items(csv_path, "kmmlu")
    assert [item.answer for item in from_csv] == [row["answer"] for row in rows]
    assert [item.subject for item in from_csv] == [row["Category"] for row in rows]
    assert [item.extra["Human Accuracy"] for item in from_csv] == [str(row["Human Accuracy"]) for row in rows]

    dataset = datasets.Dataset.from_list(rows)
    dataset.to_parquet(str(tmp_path / "Law-test.parquet"))
    saved = tmp_path / "Law-test"
    datasets.DatasetDict({"test": dataset}).save_to_disk(str(saved))
    hub_dir = tmp_path / "hub" / "Law-test"
    hub_dir.mkdir(parents=True)
    dataset.to_parquet(str(hub_dir / "test.parquet"))
    hub_spec = tmp_path / "kmmlu_hub.yaml"
    hub_spec.write_text(
        (FORMATS_DIR / "kmmlu.yaml")
        .read_text(encoding="utf-8")
        .replace("reader: auto", f"reader: {{type: hub, id: {hub_dir}, split: test}}"),
        encoding="utf-8",
    )
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")

    def key(items):
        return [(i.id, i.question, i.choices, i.answer, i.subject, i.extra["Human Accuracy"]) for i in items]

    expected = [(i.id, i.question, i.choices, i.answer, i.subject, float(i.extra["Human Accuracy"])) for i in from_csv]
    assert key(load_items(tmp_path / "Law-test.parquet", "kmmlu")) == expected
    assert key(load_items(saved, "kmmlu")) == expected  # one split: no reader.split needed
    assert key(load_items("hub:", hub_spec)) == expected  # datasets.load_dataset, offline on a local folder
    assert key(load_items(f"hub:{hub_dir}", "kmmlu")) == expected  # the id in the dataset, split from the spec
    assert detect_format_name(saved) == "kmmlu"


def test_saved_dataset_with_two_splits_asks_for_one(tmp_path):
    import datasets

    dataset = datasets.Dataset.from_list(F.kmmlu_rows())
    datasets.DatasetDict({"dev": dataset, "test": dataset}).save_to_disk(str(tmp_path / "two"))
    with pytest.raises(InputError) as info:
        load_items(tmp_path / "two", "kmmlu")
    assert info.value.field == "split" and "dev, test" in info.value.message


def test_csat_qa_and_haerae_fixtures(tmp_path):
    csat = F.write_rows_csv(tmp_path / "csatqa.csv", F.csat_qa_rows())
    items = load_items(csat, "csat_qa")
    assert [item.answer for item in items] == [row["gold"] for row in F.csat_qa_rows()]
    assert [item.paragraph for item in items] == [row["context"] for row in F.csat_qa_rows()]
    assert all(item.n_choices == 5 for item in items)
    assert load_items(csat, "auto") == items  # auto finds the shipped spec by its columns

    haerae = F.write_rows_csv(tmp_path / "haerae.csv", F.haerae_rows())
    items = load_items(haerae, "haerae")
    assert [item.answer for item in items] == [2, 5]
    assert items[0].question == "다음 단어의 뜻으로 알맞은 것은? 가랑비"
    assert items[0].choices == ("큰 비", "가늘게 내리는 비", "눈", "우박", "안개")


def test_jsonl_and_kmmlu_specs_match_the_canonical_rows(tmp_path):
    path = write_jsonl_rows(tmp_path / "c.jsonl", [canonical_row("a", note="kept"), canonical_row("b", answer=None)])
    items = load_items(path, "jsonl")
    assert [(item.id, item.answer, item.subject, item.source) for item in items] == [
        ("a", 2, "국어", "hand"),
        ("b", None, "국어", "hand"),
    ]
    assert items[0].extra == {"note": "kept"}
    kmmlu = write_csv(tmp_path / "k.csv", KMMLU_HEADER, [["문제?", 2, "가", "나", "다", "라", "Law", "0.5"]])
    assert load_items(kmmlu, "auto")[0].extra == {"Human Accuracy": "0.5"}


def test_auto_without_a_fit_names_the_closest_spec(tmp_path):
    data = write_csv(
        tmp_path / "odd.csv", ["context", "question", "option#1", "option#2"], [["지문", "질문?", "a", "b"]]
    )
    with pytest.raises(InputError) as info:
        load_items(data, "auto")
    message = info.value.message
    assert "cannot tell the format from the header" in message
    assert "closest: csat_qa" in message and "'option#3'" in message and "'gold'" in message


# --------------------------------------------------------------------------- data preview


LAYOUTS = [
    ("list_literal_csv", F.list_literal_csv),
    ("passage_per_file", lambda folder: F.passage_folder(folder / "passages")),
    ("prompt_column", F.prompt_column_csv),
]


@pytest.mark.parametrize(("spec", "writer"), LAYOUTS, ids=[name for name, _ in LAYOUTS])
def test_data_preview_on_the_user_layouts(tmp_path, spec, writer):
    path, facts = writer(tmp_path)
    args = [sys.executable, "-m", "distill", "data", "preview", "--dataset", str(path), "--format", _spec(spec)]
    result = subprocess.run([*args, "--n", "2"], capture_output=True, text=True, cwd=tmp_path, timeout=120)
    assert result.returncode == 0, result.stderr
    out = result.stdout
    assert out.startswith(f"{facts['count']} items from {path}")
    assert f"  with answer:        {facts['count']}" in out
    answers = {a: facts["answers"].count(a) for a in sorted(set(facts["answers"]))}
    assert "  answers:            " + ", ".join(f"{k}: {v}" for k, v in answers.items()) in out
    assert out.count("--- item ") == 2
    if spec == "prompt_column":
        assert f"  extra fields:       correct_rate: {facts['count']}" in out
    items = load_items(path, _spec(spec))
    from distill.data.prompts import render_messages

    assert render_messages(items[1], reasoning=False)[-1]["content"] in out  # exactly what logits scoring sends


def test_data_preview_auto_without_a_fit_fails_with_one_line(tmp_path):
    data = write_csv(tmp_path / "odd.csv", ["stem", "opt"], [["질문?", "a"]])
    args = [sys.executable, "-m", "distill", "data", "preview", "--dataset", str(data)]
    result = subprocess.run(args, capture_output=True, text=True, cwd=tmp_path, timeout=120)
    assert result.returncode == 2 and result.stdout == ""
    assert len(result.stderr.splitlines()) == 1 and "closest:" in result.stderr


def test_stage_format_parameters_take_a_spec_file(tmp_path):
    """Lists of sets (evaluate's `datasets`, register's `guard_sets`, eda's `eval_sets`: path@format)
    and eda's seeds_format take a spec file or a shipped spec's name, as `format` does."""
    from distill.errors import ConfigError
    from distill.evaluation import parse_sets
    from distill.stages.eda import EdaConfig, eval_sets_of

    spec = _spec("prompt_column")
    sets = parse_sets(f"a.csv@{spec},b.csv@csat_qa")
    assert [s.format for s in sets] == [spec, "csat_qa"]
    with pytest.raises(ConfigError):
        parse_sets("a.csv@nosuchformat")
    assert [(s.path, s.format) for s in eval_sets_of(EdaConfig(eval_sets=f"a.csv@{spec}"))] == [("a.csv", spec)]
    EdaConfig(seeds_format=spec)  # accepted
    with pytest.raises(ConfigError):
        EdaConfig(seeds_format="nosuchformat")


def test_readme_example_spec_reads_the_prompt_column_layout(tmp_path):
    readme = (REPO / "README.md").read_text(encoding="utf-8")
    section = readme.split("### Bring your own data layout", 1)[1]
    example = section.split("```yaml\n", 1)[1].split("```", 1)[0]
    spec = tmp_path / "exam.yaml"
    spec.write_text(example, encoding="utf-8")
    path, facts = F.prompt_column_csv(tmp_path)
    assert load_items(path, spec) == load_items(path, _spec("prompt_column"))
    assert len(load_items(path, spec)) == facts["count"]


def test_delimiters_tsv_under_auto_and_sniffed(tmp_path):
    rows = [{"question": "q?", "answer": 1, "A": "a", "B": "b", "C": "c", "D": "d", "Category": "Law"}]
    header = list(rows[0])
    (tmp_path / "k.tsv").write_text("\t".join(header) + "\n" + "\t".join(str(v) for v in rows[0].values()) + "\n")
    (tmp_path / "k.txt").write_text(";".join(header) + "\n" + ";".join(str(v) for v in rows[0].values()) + "\n")
    sniffing = tmp_path / "sniff.yaml"
    sniffing.write_text(
        (FORMATS_DIR / "kmmlu.yaml")
        .read_text(encoding="utf-8")
        .replace("reader: auto", "reader: {type: csv, delimiter: auto}"),
        encoding="utf-8",
    )
    assert load_items(tmp_path / "k.tsv", "kmmlu")[0].choices == ("a", "b", "c", "d")
    assert load_items(tmp_path / "k.txt", sniffing)[0].subject == "Law"


# --------------------------------------------------------------------------- second reading


def test_auto_reads_a_folder_and_a_glob_of_kice_files(tmp_path):
    """A KICE question may leave out optional keys (question_plus, no_paragraph, score): `auto`
    over a folder must not count them as missing columns and refuse the kice spec."""
    from data_helpers import exam_passages, write_json

    folder = tmp_path / "kice"
    folder.mkdir()
    files = [write_json(folder / f"{year}_11_KICE.json", exam_passages(year, [3, 2])) for year in (2018, 2019)]
    expected = [item for path in files for item in load_items(path, "kice")]
    assert load_items(folder, "auto") == expected
    assert load_items(folder / "*.json", "auto") == expected
    assert detect_format_name(folder) == "kice"


def test_empty_jsonl_file_is_an_error(tmp_path):
    path = tmp_path / "empty.jsonl"
    path.write_text("\n", encoding="utf-8")
    with pytest.raises(InputError) as info:
        load_items(path, "jsonl")
    assert (info.value.path, info.value.row) == (str(path), 1) and "no items" in info.value.message


def test_records_path_applies_to_each_jsonl_line(tmp_path):
    spec = tmp_path / "nested.yaml"
    spec.write_text(
        "reader: jsonl\nrecords: questions\nnames: [passage, question]\n"
        "fields:\n  id: {template: '{../pid}-{$position}'}\n  paragraph: ../text\n"
        "  question: q\n  choices: opts\n  answer: {field: a, as: zero_based}\n",
        encoding="utf-8",
    )
    lines = [
        {"pid": "p1", "text": "지문 1", "questions": [{"q": "가?", "opts": ["a", "b"], "a": 0}]},
        {"pid": "p2", "text": "지문 2", "questions": [{"q": "나?", "opts": ["c", "d"], "a": 1}]},
    ]
    path = write_jsonl_rows(tmp_path / "p.jsonl", lines)
    items = load_items(path, spec)
    assert [(i.id, i.paragraph, i.answer) for i in items] == [("p1-1", "지문 1", 1), ("p2-2", "지문 2", 2)]
    write_jsonl_rows(path, [*lines, {"pid": "p3", "questions": []}])
    with pytest.raises(InputError) as info:
        load_items(path, spec)
    assert (info.value.row, info.value.field) == (3, "questions")


@pytest.mark.parametrize(
    ("spec_text", "key", "fragment"),
    [
        ("reader: csv\nrecords: problems\nfields: {question: q, choices: c}\n", "records", "json and jsonl only"),
        ("fields:\n  question: q\n  choices: c\n  extra: 5\n", "fields.extra", "must be a mapping"),
        ("- question\n- choices\n", None, "format spec must be a mapping, got list"),
    ],
    ids=["records with csv", "extra not a mapping", "not a mapping at all"],
)
def test_more_spec_errors_name_spec_file_and_key(tmp_path, spec_text, key, fragment):
    spec = tmp_path / "layout.yaml"
    spec.write_text(spec_text, encoding="utf-8")
    with pytest.raises(InputError) as info:
        load_spec(spec)
    assert (info.value.path, info.value.field) == (str(spec), key) and fragment in info.value.message


def test_jsonl_missing_id_and_number_question_say_so(tmp_path):
    path = write_jsonl_rows(tmp_path / "c.jsonl", [{"question": "q?", "choices": ["a", "b"]}])
    with pytest.raises(InputError) as info:
        load_items(path, "jsonl")
    assert info.value.field == "id" and "missing field 'id'" in info.value.message
    spec = tmp_path / "s.yaml"
    spec.write_text("reader: jsonl\nfields: {question: q, choices: c}\n", encoding="utf-8")
    write_jsonl_rows(path, [{"q": 5, "c": ["a", "b"]}])
    with pytest.raises(InputError, match="question must be text, got int"):
        load_items(path, spec)
