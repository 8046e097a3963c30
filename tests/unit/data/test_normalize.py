"""normalize_text: whitespace, line breaks, Private Use Area, invisible characters, NFC."""

from __future__ import annotations

import unicodedata

import pytest

from distill.data.normalize import is_private_use, normalize_text


@pytest.mark.parametrize(
    "raw, expected",
    [
        ("  a  b   c  ", "a b c"),
        ("a\tb", "a b"),
        ("a\u00a0b", "a b"),  # NBSP
        ("a\u3000b", "a b"),  # ideographic space
        ("a\u2002\u2003\u2009b", "a b"),  # en, em, thin spaces
        ("a\u202fb", "a b"),  # narrow NBSP
        ("", ""),
        ("   \n\t \n  ", ""),
    ],
)
def test_spaces_become_single_plain_spaces(raw, expected):
    assert normalize_text(raw) == expected


@pytest.mark.parametrize(
    "raw, expected",
    [
        ("line1\r\nline2", "line1\nline2"),
        ("line1\rline2", "line1\nline2"),
        ("line1\u2028line2\u2029line3", "line1\nline2\nline3"),
        ("a\n\nb", "a\n\nb"),  # one blank line is kept
        ("a\n\n\n\n\nb", "a\n\nb"),  # 3+ newlines collapse to one blank line
        ("a\r\n\r\n\r\n\r\nb", "a\n\nb"),
        ("a  \n   b", "a\nb"),  # spaces at line ends go, the break stays
        ("\n\na\n\n", "a"),
    ],
)
def test_line_breaks_are_kept_and_normalised(raw, expected):
    assert normalize_text(raw) == expected


@pytest.mark.parametrize(
    "raw, expected",
    [
        ("돗\u200b\u200b배", "돗배"),  # zero-width spaces (as in test.csv)
        ("soft\u00adhyphen", "softhyphen"),
        ("\ufeffBOM", "BOM"),
        ("a\u200db\u2060c", "abc"),
        ("x\x00y\x07z", "xyz"),  # control characters
        ("\u200e왼쪽\u202e", "왼쪽"),  # bidi marks
    ],
)
def test_invisible_characters_are_removed(raw, expected):
    assert normalize_text(raw) == expected


def test_hanyang_pua_old_hangul_becomes_standard_jamo():
    # 사미인곡 as test.csv carries it: U+F53A U+E9A2 are the old syllables ᄒᆞᆫ and ᄉᆡᆼ.
    text = normalize_text("\uf53a\ue9a2 연분(緣分)이며 하\ue288 모\ue470 일이런가")
    hon = "\u1112\u119e\u11ab"  # ᄒ + ᆞ + ᆫ
    saeng = "\u1109\u11a1\u11bc"  # ᄉ + ᆡ + ᆼ
    neul, reul = "\u1102\u119e\u11af", "\u1105\u119e\u11af"  # ᄂᆞᆯ, ᄅᆞᆯ
    assert text == f"{hon}{saeng} 연분(緣分)이며 하{neul} 모{reul} 일이런가"
    assert not any(is_private_use(ch) for ch in text)


def test_supplementary_pua_book_title_marks_become_brackets():
    assert normalize_text("그는 \U000f0854지봉유설\U000f0855을 통해") == "그는 『지봉유설』을 통해"


def test_unknown_pua_becomes_a_space():
    # U+E047 stands for a formula glyph in test.csv; plane-16 PUA has no meaning at all.
    assert normalize_text("비율 (%)\ue047자기자본") == "비율 (%) 자기자본"
    assert normalize_text("a\U00100001b") == "a b"
    assert normalize_text("\ue000") == ""


def test_nfc_composes_decomposed_hangul():
    decomposed = unicodedata.normalize("NFD", "한국어 문제")
    assert decomposed != "한국어 문제"
    assert normalize_text(decomposed) == "한국어 문제"


def test_nfc_not_nfkc_keeps_markers_and_full_width_forms():
    text = "㉠과 ①을 비교하라（Ａ）"
    assert normalize_text(text) == text


@pytest.mark.parametrize(
    "raw",
    [
        "  가\u00a0나\r\n\r\n\r\n다\u200b라  ",
        "\uf53a\ue9a2 \U000f0854책\U000f0855 \ue047",
        unicodedata.normalize("NFD", "옛 \ue288 글자\t\t끝"),
        "a \n \n \n b",
    ],
)
def test_idempotent(raw):
    once = normalize_text(raw)
    assert normalize_text(once) == once
