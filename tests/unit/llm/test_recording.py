"""The one recording format (distill/llm/recording.py): written once, it imports into the response
cache of either LLM stage, and a replay backend of either stage answers from it."""

from __future__ import annotations

import json

import pytest

from distill.contracts import MCQItem
from distill.errors import InputError
from distill.llm import ResponseCache
from distill.llm.base import Response
from distill.llm.recording import (
    bundled_recording,
    import_recording,
    read_recording,
    recording_row,
    recording_text,
    recording_to_import,
)
from distill.llm.roles import BackendSettings, role_backend

ITEM = MCQItem(id="r-1", paragraph="지문", question="옳은 것은?", choices=("가", "나", "다", "라"), answer=3)


def _one_request_per_stage():
    """A mine answer request and an augment re-solve request, built by the stages' own builders."""
    from distill.blueprint.prompt import verify_request
    from distill.llm.templates import load_template
    from distill.mining import answer_requests, generation_params
    from distill.stages.augment import AugmentConfig, verifier_params
    from distill.stages.mine import MineConfig

    mine = answer_requests([ITEM], "teacher", 1, generation_params(MineConfig(), "teacher"))[0]
    augment = verify_request(ITEM, load_template("verify"), verifier_params(AugmentConfig()), label="verify r-1")
    return mine, augment


def _write_recording(path):
    mine, augment = _one_request_per_stage()
    rows = [
        recording_row(
            mine,
            Response(text="풀이.\n정답: 3", input_tokens=9, output_tokens=4),
            model="example-teacher",
            role="teacher",
        ),
        recording_row(
            augment, Response(text="다시 풀었다.\n정답: 3"), model="example-teacher", role="verifier", note="n"
        ),
    ]
    path.write_text(recording_text(rows), encoding="utf-8")
    return mine, augment


def test_a_recording_written_once_imports_into_either_stage_and_replays(tmp_path):
    from distill.stages import augment, mine

    recording = tmp_path / "recording.jsonl"
    requests = _write_recording(recording)
    configs = {
        "mine": mine.MineConfig(recording=str(recording), cache_path=str(tmp_path / "mine.sqlite")),
        "augment": augment.AugmentConfig(replay_recording=str(recording), cache_path=str(tmp_path / "aug.sqlite")),
    }
    for stage, cfg in configs.items():
        cache, imported = {"mine": mine.open_cache, "augment": augment.open_cache}[stage](cfg)
        assert imported == 2, stage
        backend = role_backend("replay", "example-teacher", cache=cache, settings=BackendSettings.of(cfg))
        answers = backend.generate(list(requests))
        assert [a.text for a in answers] == ["풀이.\n정답: 3", "다시 풀었다.\n정답: 3"], stage
        assert answers[0].input_tokens == 9 and backend.usage.cache_hits == 2
        cache.close()


def test_a_row_says_what_was_asked_and_the_cache_keeps_that_description(tmp_path):
    recording = tmp_path / "recording.jsonl"
    mine, _ = _write_recording(recording)
    row = json.loads(recording.read_text(encoding="utf-8").splitlines()[0])
    assert (row["role"], row["label"], row["sample_index"], row["backend"]) == (
        "teacher",
        "teacher r-1",
        0,
        "recording",
    )
    assert row["params"] == mine.params.to_key_dict() and row["schema"] is None and "note" not in row
    with ResponseCache(tmp_path / "c.sqlite") as cache:
        assert import_recording(cache, recording) == 2
        assert import_recording(cache, recording) == 0  # keys already there keep their response
        described = json.loads(cache.request_of(row["key"]))
        assert described["label"] == "teacher r-1" and described["model"] == "example-teacher"


def test_both_bundled_recordings_are_in_the_one_format():
    keys: set[str] = set()
    for stage, count in (("mine", 101), ("augment", 67)):
        entries = read_recording(bundled_recording(stage))
        assert len(entries) == count
        keys |= {key for key, _, _ in entries}
        for line in bundled_recording(stage).read_text(encoding="utf-8").splitlines():
            row = json.loads(line)
            assert {"key", "backend", "model", "role", "label", "sample_index", "params", "response"} <= set(row)
            assert set(row["response"]) == {"text", "input_tokens", "output_tokens", "latency_s", "finish_reason"}
    assert len(keys) == 101 + 67


def test_import_recording_names_the_bad_row(tmp_path):
    bad = tmp_path / "rec.jsonl"
    bad.write_text(
        json.dumps({"key": "k1", "backend": "recording", "model": "m", "response": {"text": "정답: 1"}})
        + "\n"
        + json.dumps({"key": "k2", "backend": "recording", "model": "m"})
        + "\n",
        encoding="utf-8",
    )
    with ResponseCache(tmp_path / "c.sqlite") as cache:
        with pytest.raises(InputError, match=r"row 2, field 'response'"):
            import_recording(cache, bad)
        assert len(cache) == 0  # a bad file imports nothing


def test_which_recording_a_replay_run_imports():
    assert recording_to_import(None, "mine") == bundled_recording("mine")
    assert recording_to_import(" ", "augment") == bundled_recording("augment")
    assert recording_to_import("None", "mine") is None
    assert str(recording_to_import("my.jsonl", "mine")) == "my.jsonl"


@pytest.mark.parametrize("stage, field", [("mine", "recording"), ("augment", "replay_recording")])
def test_off_on_the_command_line_imports_nothing_and_unset_imports_the_bundled_one(stage, field):
    # The command line reads "none" as unset, so "off" is the word for "import nothing" there.
    from distill.cli import parse_config
    from distill.stages import get

    cls = get(stage).config_class()
    assert recording_to_import(getattr(parse_config(cls, [f"--{field}", "off"]), field), stage) is None
    for unset in ("bundled", "none", ""):
        chosen = getattr(parse_config(cls, [f"--{field}", unset]), field)
        assert recording_to_import(chosen, stage) == bundled_recording(stage)
