"""The caseops transform: the records' spelling, exact inversion on any text, malformed input, byte costs."""

from __future__ import annotations

import gzip
import json
import time
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pgolf.casetransform import (
    ALLCAPS,
    CAPNEXT,
    ESC,
    OPERATORS,
    TEXT_TRANSFORMS,
    TITLE,
    TransformError,
    caseops_byte_costs,
    caseops_forward,
    caseops_inverse,
    get_transform,
)
from pgolf.errors import DataError

SAMPLES = Path(__file__).resolve().parents[2] / "shared" / "fineweb-samples"

# Outputs of the records' encode_lossless_caps_v2 (lossless_caps_caseops_v1) on these inputs.
RECORD_SPELLINGS = {
    "The NASA Launch": f"{TITLE}the {ALLCAPS}nasa {TITLE}launch",
    "iPhone McDonald": f"i{CAPNEXT}phone {TITLE}mc{CAPNEXT}donald",
    "I am A. B": f"{TITLE}i am {TITLE}a. {TITLE}b",
    "HeLLo": f"{TITLE}he{CAPNEXT}l{CAPNEXT}lo",
    "aBC": f"a{CAPNEXT}b{CAPNEXT}c",
    "ABc": f"{TITLE}a{CAPNEXT}bc",
    "COVID-19's X2Y": f"{ALLCAPS}covid-19's {TITLE}x2{TITLE}y",
    "Élan ÉCOLE ß": f"Élan É{ALLCAPS}cole ß",  # only ASCII letters carry case: the run after É is COLE
    f"x{TITLE}y{ESC}": f"x{ESC}{TITLE}y{ESC}{ESC}",
    "": "",
}

# Letters, operators and neighbours that interact with them, mixed with any Unicode.
CASE_HEAVY = st.text(alphabet=st.sampled_from(["a", "B", "z", "Q", " ", "-", "é", "É", "\n", *OPERATORS]), max_size=40)
ANY_TEXT = st.one_of(st.text(max_size=60), CASE_HEAVY)


@pytest.mark.parametrize(("text", "expected"), list(RECORD_SPELLINGS.items()))
def test_caseops_spells_text_as_the_records_do(text, expected):
    assert caseops_forward(text) == expected
    assert caseops_inverse(expected) == text


@settings(max_examples=400, deadline=None)
@given(ANY_TEXT)
def test_caseops_inverts_exactly_on_any_unicode(text):
    encoded = caseops_forward(text)
    assert caseops_inverse(encoded) == text
    assert not any("A" <= ch <= "Z" for ch in encoded), "the lexical stream is lowercase"


@settings(max_examples=400, deadline=None)
@given(CASE_HEAVY)
def test_caseops_inverse_accepts_exactly_the_image_of_the_transform(candidate):
    try:
        original = caseops_inverse(candidate)
    except TransformError as exc:
        assert "\n" not in str(exc) and "malformed caseops text at character" in str(exc)
        return
    assert caseops_forward(original) == candidate


@pytest.mark.parametrize(
    "malformed",
    [TITLE, f"{TITLE} a", "A", f"{ALLCAPS}a", f"{TITLE}a{CAPNEXT}b", f"ab{TITLE}c", f"{ESC}x", ESC, f"{CAPNEXT}a", f"a{CAPNEXT}"],
)
def test_caseops_malformed_text_is_a_one_line_error(malformed):
    with pytest.raises(TransformError, match=r"^malformed caseops text at character \d+ .*: not the transform of any text") as info:
        caseops_inverse(malformed)
    assert "\n" not in str(info.value)


@settings(max_examples=300, deadline=None)
@given(ANY_TEXT)
def test_caseops_byte_costs_count_the_original_bytes(text):
    encoded = caseops_forward(text).encode("utf-8")
    costs = caseops_byte_costs(encoded)
    assert costs.shape == (len(encoded),) and set(costs.tolist()) <= {0, 1}
    assert int(costs.sum()) == len(text.encode("utf-8"))


def test_caseops_byte_costs_zero_operators_and_keep_escaped_ones():
    encoded = caseops_forward(f"Ab{TITLE}").encode("utf-8")  # TITLE a b ESC TITLE
    assert caseops_byte_costs(encoded).tolist() == [0, 0, 0, 1, 1, 0, 0, 0, 1, 1, 1]
    doubled = caseops_forward(ESC + TITLE).encode("utf-8")  # ESC ESC ESC TITLE: both literal
    assert caseops_byte_costs(doubled).tolist() == [0, 0, 0, 1, 1, 1, 0, 0, 0, 1, 1, 1]


def test_caseops_is_linear_on_long_letter_runs():
    text = "a" * 200_000 + "B" + "c" * 200_000
    start = time.perf_counter()
    assert caseops_inverse(caseops_forward(text)) == text
    assert time.perf_counter() - start < 2.0


def test_transform_registry():
    assert list(TEXT_TRANSFORMS) == ["none", "caseops"]
    none = get_transform("none")
    assert none.identity and none.forward("Any Text") == "Any Text" and none.symbols == ()
    caseops = get_transform("caseops")
    assert not caseops.identity and caseops.symbols == OPERATORS and caseops.record_name == "lossless_caps_caseops_v1"
    with pytest.raises(DataError, match=r"^unknown text transform 'upper' \(known: none, caseops\)$"):
        get_transform("upper")


def _web_documents() -> list[str]:
    docs = [d["text"] for d in json.loads((SAMPLES / "fineweb.default.first300docs.json").read_text(encoding="utf-8"))]
    with gzip.open(SAMPLES / "fineweb-legal-pilot.2800docs.jsonl.gz", "rt", encoding="utf-8") as handle:
        docs += [json.loads(line)["text"] for line in handle]
    edu = (SAMPLES / "fineweb-edu.sample10BT.head1MB.txt").read_text(encoding="utf-8")
    return docs + [edu[i : i + 4000] for i in range(0, len(edu), 4000)]


@pytest.mark.skipif(not SAMPLES.is_dir(), reason=f"{SAMPLES} is absent: the FineWeb samples live beside the checkout, never in it")
def test_caseops_inverts_real_web_text():
    docs = _web_documents()
    assert len(docs) > 3000
    capitals = 0
    for text in docs:
        encoded = caseops_forward(text)
        assert caseops_inverse(encoded) == text
        assert int(np.sum(caseops_byte_costs(encoded.encode("utf-8")))) == len(text.encode("utf-8"))
        capitals += encoded.count(TITLE) + encoded.count(ALLCAPS)
    assert capitals > 100_000  # the samples do exercise the case operators
