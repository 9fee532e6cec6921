"""Tokenizer training: official settings, determinism, no validation text, errors, official reuse."""

from __future__ import annotations

import json

import numpy as np
import pytest
import sentencepiece as spm
from data_helpers import english_docs, make_fetch_dir
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pgolf.casetransform import OPERATORS, get_transform
from pgolf.config.data import ExportParams, TokenizerParams
from pgolf.errors import DataError, PgolfError
from pgolf.bytetable import load_processor
from pgolf.tokenizer import (
    INFO_FILE,
    MAX_VOCAB,
    MODEL_FILE,
    VOCAB_FILE,
    build_tokenizer,
    check_tokenizer,
    dropped_edge_bytes,
    encode_with_surfaces,
    read_tokenizer,
    train_tokenizer,
    trainer_options,
    trainer_sentences,
)

VAL_MARKER = "zorblaxquint"
TRAIN_MARKER = "flimwagdorp"


def test_tokenizer_trainer_options_are_the_official_ones(tmp_path):
    options = trainer_options(TokenizerParams())
    expected = {
        "model_type": "bpe",
        "character_coverage": 0.999,
        "byte_fallback": True,
        "split_digits": True,
        "normalization_rule_name": "nmt_nfkc",
        "add_dummy_prefix": False,
        "pad_id": 0,
        "bos_id": 1,
        "eos_id": 2,
        "unk_id": 3,
        "hard_vocab_limit": False,
    }
    assert {k: options[k] for k in expected} == expected
    assert "input_sentence_size" not in options  # no sampling of the input
    sp = load_processor(train_tokenizer(english_docs(), TokenizerParams(vocab_size=400), tmp_path))
    spec = sp.serialized_model_proto()
    assert sp.bos_id() == 1 and sp.eos_id() == 2 and sp.pad_id() == 0 and sp.unk_id() == 3
    assert b"nmt_nfkc" in spec


def test_tokenizer_training_is_deterministic(tmp_path):
    docs = english_docs()
    params = TokenizerParams(vocab_size=600, num_threads=2)
    first = train_tokenizer(docs, params, tmp_path / "a").read_bytes()
    second = train_tokenizer(iter(docs), params, tmp_path / "b").read_bytes()
    assert first == second
    other = train_tokenizer(docs[1:], params, tmp_path / "c").read_bytes()
    assert other != first


def _planted_docs(val_docs: int) -> list[str]:
    docs = english_docs()
    for i in range(val_docs):
        docs[i] = f"{docs[i]} " + " ".join([VAL_MARKER] * 40)
    for i in range(val_docs, val_docs + 5):
        docs[i] = f"{docs[i]} " + " ".join([TRAIN_MARKER] * 40)
    return docs


def _pieces(sp: spm.SentencePieceProcessor) -> list[str]:
    return [sp.id_to_piece(i) for i in range(sp.vocab_size())]


def test_tokenizer_validation_documents_never_reach_the_trainer(tmp_path, monkeypatch):
    val_docs = 20
    docs = _planted_docs(val_docs)
    fetched = make_fetch_dir(tmp_path / "fetch", docs)
    seen: list[str] = []
    real_train = spm.SentencePieceTrainer.train

    def recording_train(**kwargs):
        seen.extend(kwargs["sentence_iterator"])
        kwargs["sentence_iterator"] = iter(seen)
        return real_train(**kwargs)

    monkeypatch.setattr(spm.SentencePieceTrainer, "train", recording_train)
    info = build_tokenizer(fetched, TokenizerParams(vocab_size=1024), ExportParams(val_docs=val_docs), tmp_path / "tok")
    assert seen, "the trainer saw no text"
    joined = "\n".join(seen)
    assert VAL_MARKER not in joined and TRAIN_MARKER in joined
    assert seen == [d.strip() for d in docs[val_docs:]]
    assert info["train_docs_start"] == val_docs
    assert info["train_docs_count"] == len(docs) - val_docs

    pieces = _pieces(load_processor(tmp_path / "tok" / MODEL_FILE))
    assert any(TRAIN_MARKER[2:8] in p for p in pieces)
    assert not any(VAL_MARKER[2:8] in p for p in pieces)


def test_tokenizer_marker_planted_in_training_would_be_learned(tmp_path):
    """Control for the test above: with val_docs=0-like placement the val marker does become a piece."""
    docs = _planted_docs(20)
    docs = docs[:25] + docs[:20]  # the same marked docs placed after the validation prefix too
    fetched = make_fetch_dir(tmp_path / "fetch", docs)
    build_tokenizer(fetched, TokenizerParams(vocab_size=1024), ExportParams(val_docs=20), tmp_path / "tok")
    pieces = _pieces(load_processor(tmp_path / "tok" / MODEL_FILE))
    assert any(VAL_MARKER[2:8] in p for p in pieces)


def test_tokenizer_stage_outputs_and_byte_cap(tmp_path):
    docs = english_docs()
    fetched = make_fetch_dir(tmp_path / "fetch", docs)
    cap = 60_000
    info = build_tokenizer(fetched, TokenizerParams(vocab_size=500, max_train_bytes=cap), ExportParams(val_docs=10), tmp_path / "tok")
    out = tmp_path / "tok"
    assert sorted(p.name for p in out.iterdir()) == sorted([MODEL_FILE, VOCAB_FILE, INFO_FILE])
    assert json.loads((out / INFO_FILE).read_text()) == info
    sizes = [len(d.encode("utf-8")) for d in docs[10:]]
    count = info["train_docs_count"]
    assert sum(sizes[:count]) == info["train_bytes"] <= cap < sum(sizes[: count + 1])
    assert info["source"] == "trained" and info["vocab_size"] == 500 and info["bos_id"] == 1
    described = read_tokenizer(out)
    assert described.sha256 == info["sha256"] and described.vocab_size == 500
    with (out / VOCAB_FILE).open() as handle:
        assert sum(1 for _ in handle) == 500


def test_tokenizer_tampered_model_is_detected(tmp_path):
    fetched = make_fetch_dir(tmp_path / "fetch", english_docs())
    build_tokenizer(fetched, TokenizerParams(vocab_size=400), ExportParams(val_docs=10), tmp_path / "tok")
    model = tmp_path / "tok" / MODEL_FILE
    model.write_bytes(model.read_bytes() + b"\0")
    with pytest.raises(DataError, match="sha256"):
        read_tokenizer(tmp_path / "tok")


@pytest.mark.parametrize("vocab_size", [256, 300])
def test_tokenizer_vocab_too_small_is_one_line(tmp_path, vocab_size):
    with pytest.raises(PgolfError) as info:
        train_tokenizer(english_docs(), TokenizerParams(vocab_size=vocab_size), tmp_path)
    message = str(info.value)
    assert "\n" not in message and f"tokenizer.vocab_size={vocab_size} is too small" in message
    assert "trainer_interface" not in message


def test_tokenizer_empty_or_blank_input_is_a_data_error(tmp_path):
    with pytest.raises(DataError, match="no training documents"):
        train_tokenizer([], TokenizerParams(), tmp_path / "a")
    with pytest.raises(DataError, match="no non-blank text"):
        train_tokenizer(["   ", "\x00\n"], TokenizerParams(), tmp_path / "b")


def test_tokenizer_val_docs_leaving_nothing_to_train_on(tmp_path):
    fetched = make_fetch_dir(tmp_path / "fetch", english_docs()[:5])
    with pytest.raises(DataError, match="export.val_docs=5 leaves no training documents"):
        build_tokenizer(fetched, TokenizerParams(), ExportParams(val_docs=5), tmp_path / "tok")
    assert not (tmp_path / "tok").exists()


def test_tokenizer_reuse_official(tmp_path):
    official = tmp_path / "fetch" / "tokenizers"
    official.mkdir(parents=True)
    train_tokenizer(english_docs(), TokenizerParams(vocab_size=400), official)
    fetched = make_fetch_dir(tmp_path / "fetch", english_docs()[:3], source="hf", tokenizer_model="tokenizers/tokenizer.model")
    info = build_tokenizer(fetched, TokenizerParams(reuse="official", vocab_size=400), ExportParams(val_docs=1), tmp_path / "tok")
    assert info["source"] == "official"
    assert (tmp_path / "tok" / MODEL_FILE).read_bytes() == (official / "tokenizer.model").read_bytes()
    with pytest.raises(DataError, match="tokenizer.vocab_size=1024 but the official tokenizer"):
        build_tokenizer(fetched, TokenizerParams(reuse="official", vocab_size=1024), ExportParams(val_docs=1), tmp_path / "t2")


def test_tokenizer_reuse_official_without_official_model(tmp_path):
    fetched = make_fetch_dir(tmp_path / "fetch", english_docs()[:3])
    with pytest.raises(DataError, match="has no tokenizer model"):
        build_tokenizer(fetched, TokenizerParams(reuse="official"), ExportParams(val_docs=1), tmp_path / "tok")


def test_tokenizer_long_documents_are_cut_for_the_trainer():
    text = " ".join(f"word{i}" for i in range(3000))
    pieces = list(trainer_sentences(text, limit_bytes=1000))
    assert all(len(p.encode("utf-8")) <= 1000 for p in pieces)
    assert " ".join(pieces) == text
    assert list(trainer_sentences("\x00  short text \n")) == ["short text"]
    assert list(trainer_sentences("é" * 700, limit_bytes=1000)) == ["é" * 500, "é" * 200]


# --- text transform (caseops), larger vocabularies, piece surfaces -----------------------------


def test_tokenizer_caseops_reserves_the_operators_and_default_reserves_nothing():
    assert "user_defined_symbols" not in trainer_options(TokenizerParams())
    assert trainer_options(TokenizerParams(text_transform="caseops"))["user_defined_symbols"] == list(OPERATORS)


def test_tokenizer_caseops_trains_on_the_transformed_text(tmp_path):
    docs = english_docs()
    fetched = make_fetch_dir(tmp_path / "fetch", docs)
    info = build_tokenizer(fetched, TokenizerParams(vocab_size=1024, text_transform="caseops"), ExportParams(val_docs=10), tmp_path / "tok")
    assert info["text_transform"] == "caseops" and read_tokenizer(tmp_path / "tok").text_transform == "caseops"
    sp = load_processor(tmp_path / "tok" / MODEL_FILE)
    assert [sp.id_to_piece(i) for i in range(4, 8)] == list(OPERATORS)  # right after pad/bos/eos/unk, as the record's model
    pieces = [p for p in _pieces(sp) if not sp.is_byte(sp.piece_to_id(p))]
    assert not any(any("A" <= ch <= "Z" for ch in p) for p in pieces), "a piece spells an ASCII capital"
    assert sum(d.count("The") for d in docs) > 100  # the text did have capitals to learn
    plain = build_tokenizer(fetched, TokenizerParams(vocab_size=1024), ExportParams(val_docs=10), tmp_path / "plain")
    assert "text_transform" not in plain and read_tokenizer(tmp_path / "plain").text_transform == "none"
    assert any(any("A" <= ch <= "Z" for ch in p) for p in _pieces(load_processor(tmp_path / "plain" / MODEL_FILE)))


@pytest.mark.parametrize("vocab_size", [4096, 8192])
def test_tokenizer_larger_vocabularies_train_and_fit_uint16(tmp_path, vocab_size):
    path = train_tokenizer(english_docs(), TokenizerParams(vocab_size=vocab_size, text_transform="caseops"), tmp_path)
    sp = load_processor(path)
    assert sp.vocab_size() == vocab_size <= MAX_VOCAB == 1 << 16
    ids = sp.encode(english_docs()[0])
    assert max(ids) < vocab_size and np.array(ids, dtype=np.uint16).tolist() == ids


def test_tokenizer_check_refuses_a_plain_model_for_caseops(tmp_path):
    sp = load_processor(train_tokenizer(english_docs(), TokenizerParams(vocab_size=400), tmp_path))
    check_tokenizer(sp, "plain.model")
    with pytest.raises(DataError, match=r"^plain.model: operator U\+E001 of text transform 'caseops' is not a reserved piece"):
        check_tokenizer(sp, "plain.model", get_transform("caseops"))


def test_tokenizer_reuse_official_checks_the_declared_transform(tmp_path):
    official = tmp_path / "fetch" / "tokenizers"
    official.mkdir(parents=True)
    train_tokenizer(english_docs(), TokenizerParams(vocab_size=400, text_transform="caseops"), official)
    common = dict(source="hf", tokenizer_model="tokenizers/tokenizer.model")
    caseops = TokenizerParams(reuse="official", vocab_size=400, text_transform="caseops")
    fetched = make_fetch_dir(tmp_path / "fetch", english_docs()[:3], **common, text_transform="lossless_caps_caseops_v1", val_byte_sidecar=True)
    info = build_tokenizer(fetched, caseops, ExportParams(val_docs=1), tmp_path / "tok")
    assert info["source"] == "official" and info["text_transform"] == "caseops"
    with pytest.raises(DataError, match=r"made with text transform 'lossless_caps_caseops_v1', not tokenizer.text_transform 'none'"):
        build_tokenizer(fetched, TokenizerParams(reuse="official", vocab_size=400), ExportParams(val_docs=1), tmp_path / "t2")
    sidecar_only = make_fetch_dir(tmp_path / "fetch", english_docs()[:3], **common, val_byte_sidecar=True)
    with pytest.raises(DataError, match="holds a validation byte sidecar .*: set tokenizer.text_transform"):
        build_tokenizer(sidecar_only, TokenizerParams(reuse="official", vocab_size=400), ExportParams(val_docs=1), tmp_path / "t3")
    train_tokenizer(english_docs(), TokenizerParams(vocab_size=400), official)  # a plain model in its place
    undeclared = make_fetch_dir(tmp_path / "fetch", english_docs()[:3], **common)
    with pytest.raises(DataError, match="is not a reserved piece"):
        build_tokenizer(undeclared, caseops, ExportParams(val_docs=1), tmp_path / "t4")


@pytest.fixture(scope="module")
def caseops_processor(tmp_path_factory):
    return load_processor(train_tokenizer(english_docs(), TokenizerParams(vocab_size=600, text_transform="caseops"), tmp_path_factory.mktemp("sp")))


SURFACE_TEXT = st.text(alphabet=st.sampled_from(list("aB é½ﬁ \n\t\u3000\x00\x1f\u200b日😀Z.") + list(OPERATORS)), max_size=30) | st.text(max_size=30)


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(texts=st.lists(SURFACE_TEXT, min_size=1, max_size=4))
def test_encode_with_surfaces_tiles_the_text(caseops_processor, texts):
    sp = caseops_processor
    for text, (ids, begins, ends) in zip(texts, encode_with_surfaces(sp, texts)):
        data = text.encode("utf-8")
        assert ids.tolist() == sp.encode(text)
        assert begins.shape == ends.shape == ids.shape
        if not ids.size:
            assert sp.normalize(text) == "" and dropped_edge_bytes(sp, text) == len(data)
            continue
        assert begins[1:].tolist() == ends[:-1].tolist() and (ends >= begins).all()
        assert dropped_edge_bytes(sp, text) == len(data) - int(ends[-1] - begins[0])
        dropped = data[: begins[0]].decode("utf-8") + data[ends[-1] :].decode("utf-8")
        assert all(sp.normalize(ch) == "" for ch in dropped), "only characters the normalizer drops are left uncovered"
        mapping = getattr(sp, "encode_as_offset_mapping", None)
        if mapping is not None:  # sentencepiece >= 0.2.1: its own offsets agree
            assert mapping(text, return_bytes=True)["offsets"] == list(zip(begins.tolist(), ends.tolist()))
