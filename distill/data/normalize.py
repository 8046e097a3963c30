"""Text normalisation applied by every loader to paragraph, question, question_plus and choices.

Decided on purpose, after looking at the real files in ../shared/data:

1. Line breaks: `\\r\\n`, `\\r`, U+2028/U+2029, vertical tab, form feed and NEL become `\\n`.
   Line breaks carry meaning (poems, dialogue, <보기> lists), so they are kept; only runs of
   3 or more collapse to one blank line (`\\n\\n`).
2. Private Use Area (PUA). Text extracted from HWP/PDF exam papers carries PUA code points:
   - U+E0BC..U+F8F7 are Hanyang-PUA old-Hangul syllables (e.g. U+F53A is ᄒᆞᆫ in 사미인곡's
     "ᄒᆞᆫᄉᆡᆼ 연분"). Dropping them would delete letters from classical poems, so they are
     mapped to standard conjoining Jamo with the `hypua2jamo` package.
   - U+F0854 / U+F0855 (supplementary PUA) wrap book titles in test.csv
     ("\\U000f0854지봉유설\\U000f0855") and are mapped to 『 and 』.
   - Any other PUA code point (U+E000..U+F8FF, planes 15 and 16) has no known meaning (the
     one in test.csv stands for a formula glyph) and becomes a space: such glyphs are symbols,
     brackets or bullets, which sit between words more often than inside them.
3. Invisible format characters (zero-width space/joiners, word joiner, BOM, soft hyphen,
   bidi marks) are removed; other control characters except `\\n` are removed.
4. Every other kind of space (tab, NBSP, ideographic space U+3000, U+2000..U+200A, ...)
   becomes a plain space; runs of spaces collapse to one; spaces at the start and end of each
   line go; the whole text is stripped.
5. Unicode NFC, last. Not NFKC: NFKC rewrites the circled markers questions refer to
   (㉠ → ᄀ, ① → 1) and full-width punctuation, which would change what an item says.

`normalize_text` is idempotent: normalising twice changes nothing.
"""

from __future__ import annotations

import functools
import re
import unicodedata

from distill.errors import ConfigError

HANYANG_PUA_FIRST = 0xE0BC
HANYANG_PUA_LAST = 0xF8F7

SUPPLEMENTARY_PUA_SUBSTITUTES = {
    "\U000f0854": "『",
    "\U000f0855": "』",
}
"""Supplementary-plane PUA code points whose meaning the real data makes plain."""

_NEWLINE_LIKE = "\r\x0b\x0c\x85\u2028\u2029"
_INVISIBLE = (
    "\u00ad"  # soft hyphen
    "\u200b\u200c\u200d"  # zero-width space, non-joiner, joiner
    "\u2060\ufeff"  # word joiner, BOM / zero-width no-break space
    "\u200e\u200f\u202a\u202b\u202c\u202d\u202e\u2066\u2067\u2068\u2069"  # bidi marks
)


def _build_char_table() -> dict[int, str | None]:
    table: dict[int, str | None] = {}
    for ch in _NEWLINE_LIKE:
        table[ord(ch)] = "\n"
    for ch in _INVISIBLE:
        table[ord(ch)] = None
    for code in range(0x20):
        if chr(code) not in "\n\t" and code not in table:
            table[code] = None
    for code in range(0x7F, 0xA0):
        if code not in table:
            table[code] = None
    table[ord("\t")] = " "
    for code in range(0x80, 0x10000):
        if unicodedata.category(chr(code)) == "Zs" and code != 0x20:
            table[code] = " "
    return table


_CHAR_TABLE = _build_char_table()
_HANYANG_RUN = re.compile(f"[{chr(HANYANG_PUA_FIRST)}-{chr(HANYANG_PUA_LAST)}]+")
_ANY_PUA = re.compile("[\ue000-\uf8ff\U000f0000-\U000ffffd\U00100000-\U0010fffd]")
_SPACE_RUN = re.compile(" {2,}")
_SPACE_AROUND_NEWLINE = re.compile(" *\n *")
_NEWLINE_RUN = re.compile("\n{3,}")


def is_private_use(ch: str) -> bool:
    """True for a code point in any Private Use Area (BMP or planes 15/16)."""
    return unicodedata.category(ch) == "Co"


@functools.lru_cache(maxsize=1)
def _hanyang_translate():
    try:
        from hypua2jamo import translate
    except ImportError:  # a declared dependency; say how to fix a broken install
        raise ConfigError(
            "text contains Hanyang-PUA old Hangul and the package 'hypua2jamo' is missing: pip install hypua2jamo"
        ) from None
    return translate


def _map_private_use(text: str) -> str:
    if not _ANY_PUA.search(text):
        return text
    if _HANYANG_RUN.search(text):
        translate = _hanyang_translate()
        text = _HANYANG_RUN.sub(lambda match: translate(match.group()), text)
    for code, substitute in SUPPLEMENTARY_PUA_SUBSTITUTES.items():
        text = text.replace(code, substitute)
    return _ANY_PUA.sub(" ", text)


def normalize_text(text: str) -> str:
    """The one normalisation every loader applies (rules in the module docstring)."""
    if not text:
        return ""
    text = text.replace("\r\n", "\n")
    text = _map_private_use(text)
    text = text.translate(_CHAR_TABLE)
    text = _SPACE_RUN.sub(" ", text)
    text = _SPACE_AROUND_NEWLINE.sub("\n", text)
    text = _NEWLINE_RUN.sub("\n\n", text)
    text = text.strip()
    return unicodedata.normalize("NFC", text)
