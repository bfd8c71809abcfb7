"""Character classes the tokenizer cares about: Chinese (Han) characters, CJK symbols, byte tokens.

One definition for the whole package, so that the base trainer (which leaves Han to the extension),
the frequency counter and the statistics agree on what "Chinese" means.
"""

from __future__ import annotations

import re
import unicodedata

# CJK Unified Ideographs and their extensions, compatibility ideographs (the Unicode `Han` script's ideographs).
HAN_BLOCKS = (
    (0x3400, 0x4DBF),  # Extension A
    (0x4E00, 0x9FFF),  # Unified Ideographs
    (0xF900, 0xFAFF),  # Compatibility Ideographs
    (0x20000, 0x2A6DF),  # Extension B
    (0x2A700, 0x2EBEF),  # Extensions C-F
    (0x2F800, 0x2FA1F),  # Compatibility Supplement
    (0x30000, 0x3134F),  # Extension G
)
_HAN_RANGES = "".join(f"{chr(a)}-{chr(b)}" for a, b in HAN_BLOCKS)
_ONIG_HAN = "".join(f"\\x{{{a:X}}}-\\x{{{b:X}}}" for a, b in HAN_BLOCKS)
HAN_CHAR = re.compile(f"[{_HAN_RANGES}]")
HAN_RUN = re.compile(f"[{_HAN_RANGES}]+")
HAN_WORD = re.compile(f"[{_HAN_RANGES}]{{2,}}")
BYTE_TOKEN = re.compile(r"<0x[0-9A-F]{2}>")

# Pre-tokenization of skyloom's own tokenizers (Oniguruma syntax, run by `tokenizers`). Like GPT-4's split,
# with two changes for a bilingual vocabulary: runs of Han characters are their own pieces (as SentencePiece's
# split_by_unicode_script keeps scripts apart), and every digit is a piece of its own.
PRETOKENIZE_PATTERN = (
    r"'(?i:[sdmt]|ll|ve|re)"  # English contractions
    r"|[^\r\n\p{L}\p{N}]?[\p{L}&&[^" + _ONIG_HAN + r"]]+"  # a word of a non-Han script, one leading space/symbol
    r"| ?[" + _ONIG_HAN + r"]+"  # a run of Chinese characters
    r"|\p{N}"  # one digit
    r"| ?[^\s\p{L}\p{N}]+[\r\n]*"  # punctuation and symbols
    r"|\s*[\r\n]+"  # line breaks
    r"|\s+(?!\S)"  # trailing / indentation whitespace
    r"|\s+"
)


def is_han(ch: str) -> bool:
    return HAN_CHAR.fullmatch(ch) is not None


def is_han_word(text: str) -> bool:
    """Two or more Han characters and nothing else: what a "Chinese multi-character word" entry may be."""
    return HAN_WORD.fullmatch(text) is not None


def is_fullwidth_form(ch: str) -> bool:
    """A full-width character (Unicode East Asian Width "F"): the ideographic space and the full-width forms of
    ASCII (１９９８, ＡＢＣ, （）：). Chinese text, news above all, writes digits and Latin letters this way."""
    return len(ch) == 1 and unicodedata.east_asian_width(ch) == "F"


def is_chinese_char_or_symbol(ch: str, fullwidth: bool = True) -> bool:
    """A candidate for the "Chinese characters and Unicode symbols" rows of Table 2.

    Han characters, plus non-ASCII punctuation, symbols and number signs (，。「」…①％ …), the ideographic
    space and (`fullwidth`) the full-width digits and letters: what Chinese text needs besides its characters.
    A full-width digit the vocabulary lacks falls back to 3 byte tokens; on People's Daily news that was 13% of
    all tokens (experiments/tokenizer_variants.py). Letters of other scripts are not included.
    """
    if len(ch) != 1 or ord(ch) < 128:
        return False
    if is_han(ch) or fullwidth and is_fullwidth_form(ch):
        return True
    category = unicodedata.category(ch)
    return category[0] in "PS" or category in ("No", "Nl") or ch == "\u3000"


def han_share(text: str) -> float:
    """Fraction of the characters of `text` that are Han."""
    if not text:
        return 0.0
    return sum(len(m) for m in HAN_RUN.findall(text)) / len(text)
