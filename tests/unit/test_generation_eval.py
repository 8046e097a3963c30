"""Generate-mode evaluation on tiny-qwen3 (built locally): a well-formed frame, an honest
parse failure rate, and a scripted answer that goes through the same path and parses."""

from __future__ import annotations

import pytest

from distill.generation_eval import (
    GENERATE_COLUMNS,
    generate_predictions,
    generation_requests,
    parse_failure_rate,
    predictions_from_texts,
)

N_ITEMS = 4
MAX_NEW_TOKENS = 12


@pytest.fixture(scope="module")
def items():
    from distill.data.loaders import load_items
    from distill.resources import resource_path

    return load_items(resource_path("eval_sample.jsonl"), require_answer=True)[:N_ITEMS]


def test_tiny_model_frame_is_well_formed_and_scripted_answer_parses(items, tmp_path):
    from distill.llm import Response, ResponseCache
    from distill.llm.local import LocalBackend

    # Script the answer to item 0 by putting it in the cache under the local backend's own
    # key: generate_predictions then reads it like any generated text; the rest is generated.
    cache_path = tmp_path / "cache.sqlite"
    requests = generation_requests(items, thinking=False, max_new_tokens=MAX_NEW_TOKENS, seed=0)
    scripted = "<think>\n\n</think>\n\n선택지를 검토하면 둘째가 맞다.\n정답: 2"
    with ResponseCache(cache_path) as cache:
        key = LocalBackend("tiny-qwen3", cache=cache).key(requests[0])
        cache.put(key, Response(text=scripted, backend="local", model="tiny-qwen3"))

    frame = generate_predictions(
        "tiny-qwen3",
        items,
        max_new_tokens=MAX_NEW_TOKENS,
        batch_size=N_ITEMS,
        seed=0,
        cache_path=cache_path,
        device="cpu",
        progress=False,
    )

    assert list(frame.columns) == GENERATE_COLUMNS
    assert frame["id"].tolist() == [item.id for item in items]
    assert frame["gold"].tolist() == [item.answer for item in items]
    assert frame["n_choices"].tolist() == [item.n_choices for item in items]
    assert frame.loc[0, "text"] == scripted and frame.loc[0, "reasoning"] == "선택지를 검토하면 둘째가 맞다.\n정답: 2"
    assert frame.loc[0, "pred"] == 2 and bool(frame.loc[0, "parsed"])
    assert bool(frame.loc[0, "correct"]) == (items[0].answer == 2)
    for _, row in frame.iterrows():
        assert isinstance(row["text"], str)
        assert bool(row["parsed"]) == (row["pred"] is not None)
        if row["pred"] is not None:
            assert 1 <= row["pred"] <= row["n_choices"]
        assert bool(row["correct"]) == (row["pred"] is not None and row["pred"] == row["gold"])
    # an untrained model writes no readable answer: the rate says so instead of guessing
    unreadable = int((~frame["parsed"]).sum())
    assert parse_failure_rate(frame) == pytest.approx(unreadable / N_ITEMS)
    assert unreadable >= 1

    # the generated texts were cached: a second call answers identically from the cache
    again = generate_predictions(
        "tiny-qwen3",
        items,
        max_new_tokens=MAX_NEW_TOKENS,
        batch_size=N_ITEMS,
        seed=0,
        cache_path=cache_path,
        device="cpu",
        progress=False,
    )
    assert again["text"].tolist() == frame["text"].tolist()


def test_unparsed_answers_are_wrong_and_counted(items):
    texts = ["정답: 1", "1번 또는 3번", '{"answer": 4}', "모르겠습니다"]
    frame = predictions_from_texts(items, texts)
    assert frame["pred"].tolist() == [1, None, 4, None]
    assert frame["parsed"].tolist() == [True, False, True, False]
    assert not frame.loc[1, "correct"] and not frame.loc[3, "correct"]
    assert parse_failure_rate(frame) == 0.5


def test_metrics_from_a_generate_frame_report_the_parse_failure_rate(items):
    from distill.evaluation import result_from_predictions

    frame = predictions_from_texts(items, [f"정답: {item.answer}" for item in items[:2]] + ["?", "?"])
    result = result_from_predictions(frame, scoring="generate", parse_failures=int((~frame["parsed"]).sum()))
    assert result.metrics["eval/parse_failure_rate"] == 0.5
    assert result.metrics["eval/accuracy"] == 0.5


def test_items_without_gold_are_refused(items):
    import dataclasses

    from distill.errors import InputError

    with pytest.raises(InputError, match="no gold answer"):
        generate_predictions("tiny-qwen3", [dataclasses.replace(items[0], answer=None)], progress=False)
