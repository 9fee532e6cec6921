"""Lossless text transforms applied before tokenizer training and export, by name (`TEXT_TRANSFORMS`).

`caseops` is the records' `lossless_caps_caseops_v1` (PR #1729; openai/parameter-golf
records/track_10min_16mb/2026-04-29_SmearGateBOSFix_3Seed_1.06141/lossless_caps.py): case moves
out of the letters into four private-use operators, reserved as SentencePiece user-defined
symbols, so that the tokenizer sees one lowercase spelling of every ASCII word. Over each maximal
run of ASCII letters (a word):

- lowercase: unchanged;                              ``the``  -> ``the``
- two or more letters, all capitals: ALLCAPS + lower; ``NASA`` -> ``<A>nasa``
- a capital then lowercase (or one capital): TITLE + lower; ``The`` -> ``<T>the``, ``I`` -> ``<T>i``
- any other mix: TITLE if the first letter is a capital, then the letters in lowercase with CAPNEXT
  before each later capital;                          ``iPhoneX`` -> ``i<N>phone<N>x``
- an operator character in the input is escaped: ESC + the character.

Every other character is left as it is. The image of the transform is exactly the texts whose
operators are well formed and that hold no ASCII capital; `inverse` accepts exactly those (anything
else is a `TransformError`), so ``forward(inverse(t)) == t`` wherever `inverse` succeeds.

`original_byte_costs` says, for each UTF-8 byte of a transformed text, how many bytes of the original
it stands for (operators 0, every other byte 1): summed over a token's surface it gives the token's
byte count in the validation byte sidecar, exactly as the record counts it.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from pgolf.errors import DataError

TITLE, ALLCAPS, CAPNEXT, ESC = "\ue001", "\ue002", "\ue003", "\ue004"
OPERATORS = (TITLE, ALLCAPS, CAPNEXT, ESC)
OPERATOR_BYTES = 3  # each operator is one 3-byte UTF-8 character
FIRST_LAST_BYTE, ESC_LAST_BYTE = TITLE.encode("utf-8")[2], ESC.encode("utf-8")[2]  # operators: EE 80 81..84


class TransformError(DataError):
    """A transformed text is malformed: it is not the output of the transform for any text."""


# Patterns anchored at the start of a letter run (the lookbehinds) so that matching stays linear.
_CAPITALIZED_OR_OPERATOR = re.compile("[\ue001-\ue004]|(?<![A-Za-z])[A-Za-z]*[A-Z][A-Za-z]*")
_ENCODED = re.compile(
    "\ue004(?P<esc>.)"
    "|(?P<mode>[\ue001\ue002])(?P<word>[a-z]+(?:\ue003[a-z]+)*)"
    "|(?<![a-z])(?P<mixed>[a-z]+(?:\ue003[a-z]+)+)",
    re.DOTALL,
)
_CAPNEXT_LETTER = re.compile("\ue003([a-z])")


def _encode(match: re.Match[str]) -> str:
    word = match.group()
    if word in OPERATORS:
        return ESC + word
    lower = word.lower()
    if len(word) >= 2 and word.isupper():
        return ALLCAPS + lower
    if word[1:] == lower[1:]:  # a capital then lowercase, or one capital
        return TITLE + lower
    head = TITLE + lower[0] if word[0] != lower[0] else word[0]
    return head + "".join(CAPNEXT + c.lower() if c != c.lower() else c for c in word[1:])


def caseops_forward(text: str) -> str:
    """The caseops transform of `text` (see the module docstring)."""
    return _CAPITALIZED_OR_OPERATOR.sub(_encode, text)


def _decode(match: re.Match[str]) -> str:
    if match["esc"] is not None:
        return match["esc"]
    if match["mode"] == ALLCAPS:
        return match["word"].upper()  # a CAPNEXT inside stays and makes the text non-canonical
    word = match["word"] or match["mixed"]
    if CAPNEXT in word:
        word = _CAPNEXT_LETTER.sub(lambda m: m.group(1).upper(), word)
    return word[0].upper() + word[1:] if match["mode"] == TITLE else word


def caseops_inverse(text: str) -> str:
    """The original of a caseops-transformed text; TransformError (one line, with the position) if malformed.

    Decodes every operator it recognises, then requires the result to transform back to `text`
    exactly: stray or dangling operators, ASCII capitals and non-canonical spellings (TITLE + a +
    CAPNEXT + b for ``AB``, whose transform is ALLCAPS + ab) all fail that test.
    """
    original = _ENCODED.sub(_decode, text)
    again = caseops_forward(original)
    if again != text:
        at = next((i for i, (a, b) in enumerate(zip(again, text)) if a != b), min(len(again), len(text)))
        raise TransformError(
            f"malformed caseops text at character {at} ({text[max(at - 8, 0) : at + 8]!r}): not the transform "
            "of any text (a stray, dangling or non-canonical case operator, or an ASCII capital)"
        )
    return original


def caseops_byte_costs(data: bytes) -> np.ndarray:
    """Per UTF-8 byte of transformed text: 1 for a byte of the original, 0 for a byte of an operator.

    An escaped operator (ESC + operator) stands for that character of the original: the ESC costs 0,
    the character its 3 bytes. Computed on the bytes, so the bytes of a token are a slice sum.
    """
    raw = np.frombuffer(data, dtype=np.uint8)
    costs = np.ones(raw.size, dtype=np.int64)
    if raw.size < OPERATOR_BYTES:
        return costs
    last = raw[2:]
    starts = np.flatnonzero((raw[:-2] == 0xEE) & (raw[1:-1] == 0x80) & (last >= FIRST_LAST_BYTE) & (last <= ESC_LAST_BYTE))
    if (last[starts] == ESC_LAST_BYTE).any():  # escapes are rare: resolve them in order
        literal_at = -1
        keep = []
        for at in starts.tolist():
            if at != literal_at:
                keep.append(at)
                literal_at = at + OPERATOR_BYTES if last[at] == ESC_LAST_BYTE else -1
        starts = np.array(keep, dtype=np.int64)
    costs[(starts[:, None] + np.arange(OPERATOR_BYTES)).ravel()] = 0
    return costs


def _identity(text: str) -> str:
    return text


def _all_ones(data: bytes) -> np.ndarray:
    return np.ones(len(data), dtype=np.int64)


@dataclass(frozen=True)
class TextTransform:
    """A bijective text transform: forward, its inverse, its reserved symbols and its byte costs."""

    name: str
    forward: Callable[[str], str]
    inverse: Callable[[str], str]
    symbols: tuple[str, ...]  # reserved as SentencePiece user-defined symbols (never merged)
    byte_costs: Callable[[bytes], np.ndarray]  # per byte of forward(text) encoded as UTF-8
    record_name: str  # the name the records' manifests give it (tokenizer entry `text_transform`)

    @property
    def identity(self) -> bool:
        """True for `none`: tokens map to the original bytes and the byte table scores them."""
        return not self.symbols


TEXT_TRANSFORMS: dict[str, TextTransform] = {
    "none": TextTransform("none", _identity, _identity, (), _all_ones, "identity"),
    "caseops": TextTransform("caseops", caseops_forward, caseops_inverse, OPERATORS, caseops_byte_costs, "lossless_caps_caseops_v1"),
}


def get_transform(name: str) -> TextTransform:
    """The transform registered under `name`; DataError naming the known ones otherwise."""
    try:
        return TEXT_TRANSFORMS[name]
    except KeyError:
        raise DataError(f"unknown text transform {name!r} (known: {', '.join(TEXT_TRANSFORMS)})") from None
