"""Decontamination by character n-grams: text is compared after removing spaces and punctuation,
so a reformatted copy is an exact copy; a copy with one word replaced stays far above the
threshold; unrelated problems on the same topic stay far below it."""

from __future__ import annotations

import dataclasses

from distill.blueprint.decontam import NgramIndex, build_reference_index, char_ngrams, item_text, normalise, overlap
from distill.data.loaders import load_items
from distill.resources import resource_path

THRESHOLD = 0.5  # AugmentConfig.decontam_threshold


def bundled_eval():
    return load_items(resource_path("eval_sample.jsonl"), "jsonl")


def test_normalise_keeps_only_letters_and_digits_case_folded():
    assert normalise(" 정답은 ③,  (가) A-B!\n") == "정답은3가ab"
    assert char_ngrams("가 나,다.라", 3) == {"가나다", "나다라"}
    assert char_ngrams("가나", 5) == {"가나"} and char_ngrams(" .,", 5) == set()
    assert overlap(set(), {"a"}) == 0.0 and overlap({"a", "b"}, {"a", "b", "c", "d"}) == 1.0


def test_a_reformatted_copy_scores_one_and_a_one_word_edit_stays_above_the_threshold():
    item = bundled_eval()[35]  # eval-036, a 세계사 item
    index = build_reference_index([item], [])
    text = item_text(item)
    reformatted = text.replace(" ", "  ").replace(".", " .").replace(",", "")
    assert index.best_match(reformatted).score == 1.0
    edited = reformatted.replace("면벌부", "면죄부", 1)
    match = index.best_match(edited)
    assert match.ref_id == item.id and match.kind == "eval" and THRESHOLD < match.score < 1.0


def test_every_bundled_eval_item_finds_itself_and_no_other_item_comes_close():
    items = bundled_eval()
    index = build_reference_index(items, [])
    for item in items:
        scores, _ = index.scores(item_text(item))
        best = index.best_match(item_text(item))
        assert best.ref_id == item.id and best.score == 1.0
        others = sorted(scores, reverse=True)[1]
        assert others < THRESHOLD, (item.id, others)


def test_the_index_names_the_kind_of_reference_and_prefers_the_first_on_ties():
    items = bundled_eval()[:2]
    twin = dataclasses.replace(items[0], id="seed-twin")
    index = build_reference_index(items, [twin])
    assert len(index) == 3
    best = index.best_match(item_text(items[0]))
    assert (best.ref_id, best.kind) == (items[0].id, "eval")
    empty = NgramIndex()
    assert empty.best_match("무엇이든") is None
