"""Export: documents -> official shards; determinism across workers; official reuse; errors."""

from __future__ import annotations

import json

import numpy as np
import pytest
from data_helpers import english_docs, make_fetch_dir
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pgolf.bytetable import load_sidecar, sidecar_name
from pgolf.casetransform import CAPNEXT, ESC, OPERATORS, TITLE, caseops_forward
from pgolf.config.data import ExportParams, TokenizerParams
from pgolf.data.docs import read_fetched
from pgolf.data.export import encode_batch, export_shards
from pgolf.data.shards import SHARDS_MANIFEST, list_shards, load_tokens, read_header, shard_name, write_shard
from pgolf.eval.bpb import stream_from_sidecar
from pgolf.errors import DataError, ShardError
from pgolf.bytetable import load_processor
from pgolf.tokenizer import MODEL_FILE, build_tokenizer, dropped_edge_bytes, encode_with_surfaces

VAL_DOCS = 12
SHARD_TOKENS = 4096


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("export")
    docs = english_docs()[:120]
    fetched = make_fetch_dir(root / "fetch", docs)
    build_tokenizer(fetched, TokenizerParams(vocab_size=512), ExportParams(val_docs=VAL_DOCS), root / "tok")
    return root, docs, fetched


def _params(**kw):
    return ExportParams(**{"val_docs": VAL_DOCS, "shard_tokens": SHARD_TOKENS, "workers": 1, "batch_docs": 7, **kw})


def test_export_shards_hold_bos_plus_ids_split_and_filled(setup, tmp_path):
    root, docs, fetched = setup
    manifest = export_shards(read_fetched(fetched), root / "tok", _params(), tmp_path / "shards")
    sp = load_processor(root / "tok" / MODEL_FILE)
    expected = {
        split: np.concatenate([np.array([1, *sp.encode(d)]) for d in part])
        for split, part in (("val", docs[:VAL_DOCS]), ("train", docs[VAL_DOCS:]))
    }
    for split, tokens in expected.items():
        paths = list_shards(tmp_path / "shards", split)
        assert load_tokens(paths).tolist() == tokens.tolist()
        assert [read_header(p) for p in paths[:-1]] == [SHARD_TOKENS] * (len(paths) - 1)
        assert 0 < read_header(paths[-1]) <= SHARD_TOKENS
        assert manifest[f"files_{split}"] == len(paths) and manifest[f"tokens_{split}"] == tokens.size
    assert manifest["files_train"] > 1, "documents should span several train shards"
    assert manifest["docs_val"] == VAL_DOCS and manifest["docs_train"] == len(docs) - VAL_DOCS
    assert manifest["vocab_size"] == 512 and manifest["bos_id"] == 1 and manifest["shard_tokens"] == SHARD_TOKENS
    assert manifest["source"] == "tokenized"
    assert json.loads((tmp_path / "shards" / SHARDS_MANIFEST).read_text()) == manifest
    assert len(manifest["tokenizer_sha256"]) == 64


def test_export_identical_for_one_and_two_workers(setup, tmp_path):
    root, _, fetched = setup
    export_shards(read_fetched(fetched), root / "tok", _params(workers=1), tmp_path / "one")
    export_shards(read_fetched(fetched), root / "tok", _params(workers=2, batch_docs=5), tmp_path / "two")
    one = {p.name: p.read_bytes() for p in (tmp_path / "one").iterdir()}
    two = {p.name: p.read_bytes() for p in (tmp_path / "two").iterdir()}
    assert one == two


def test_export_val_docs_leaving_no_training_data(setup, tmp_path):
    root, docs, fetched = setup
    with pytest.raises(DataError, match="leaves no training documents"):
        export_shards(read_fetched(fetched), root / "tok", _params(val_docs=len(docs)), tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_export_document_count_must_match_the_fetch_manifest(setup, tmp_path):
    root, docs, _ = setup
    fetched = make_fetch_dir(tmp_path / "fetch", docs[:30])
    manifest = json.loads((fetched / "manifest.json").read_text())
    (fetched / "manifest.json").write_text(json.dumps({**manifest, "num_docs": 31}))
    with pytest.raises(DataError, match="30 documents, the fetch manifest says 31"):
        export_shards(read_fetched(fetched), root / "tok", _params(), tmp_path / "out")


def test_export_untokenizable_document_is_named(setup, tmp_path):
    root, docs, _ = setup
    fetched = make_fetch_dir(tmp_path / "fetch", docs[:20])
    with (fetched / "docs.jsonl").open("a") as handle:
        handle.write('{"text": "bad \\ud800 surrogate"}\n')
    manifest = json.loads((fetched / "manifest.json").read_text())
    (fetched / "manifest.json").write_text(json.dumps({**manifest, "num_docs": 21}))
    with pytest.raises(DataError, match="document 20 cannot be tokenized"):
        export_shards(read_fetched(fetched), root / "tok", _params(), tmp_path / "out")


def test_export_without_documents(setup, tmp_path):
    root, _, _ = setup
    (tmp_path / "fetch").mkdir()
    (tmp_path / "fetch" / "manifest.json").write_text('{"source": "builtin"}')
    with pytest.raises(DataError, match="no documents"):
        export_shards(read_fetched(tmp_path / "fetch"), root / "tok", _params(), tmp_path / "out")


def _official_fetch(tmp_path, setup, streams: dict[str, list[list[int]]]):
    """An hf-style fetch: official tokenizer + shards (one list of tokens per shard)."""
    root, docs, _ = setup
    fetch = tmp_path / "fetch"
    shards = fetch / "datasets" / "fineweb10B_sp512"
    shards.mkdir(parents=True)
    (fetch / "tokenizers").mkdir()
    (fetch / "tokenizers" / "fineweb_512_bpe.model").write_bytes((root / "tok" / MODEL_FILE).read_bytes())
    for split, files in streams.items():
        for i, tokens in enumerate(files):
            write_shard(shards / shard_name(split, i), np.array(tokens))
    make_fetch_dir(fetch, docs[:3], source="hf", shards_dir="datasets/fineweb10B_sp512", tokenizer_model="tokenizers/fineweb_512_bpe.model")
    build_tokenizer(fetch, TokenizerParams(reuse="official", vocab_size=512), ExportParams(val_docs=1), tmp_path / "tok")
    return read_fetched(fetch), shards


def test_export_reuses_official_shards(setup, tmp_path):
    streams = {"val": [[1, 40, 41, 1, 42], [43, 1, 44]], "train": [[1, 50, 51, 52, 1], [53]]}
    fetched, shards = _official_fetch(tmp_path, setup, streams)
    manifest = export_shards(fetched, tmp_path / "tok", _params(), tmp_path / "out")
    assert manifest["source"] == "official"
    assert (manifest["docs_val"], manifest["tokens_val"], manifest["files_val"]) == (3, 8, 2)
    assert (manifest["docs_train"], manifest["tokens_train"], manifest["files_train"]) == (2, 6, 2)
    assert manifest["shard_tokens"] == 5
    for split in ("val", "train"):
        for path in list_shards(shards, split):
            assert (tmp_path / "out" / path.name).read_bytes() == path.read_bytes()


def test_export_official_shards_are_validated(setup, tmp_path):
    fetched, shards = _official_fetch(tmp_path, setup, {"val": [[1, 40]], "train": [[1, 50]]})
    (shards / shard_name("train", 0)).write_bytes(b"")
    with pytest.raises(ShardError, match="empty file"):
        export_shards(fetched, tmp_path / "tok", _params(), tmp_path / "out")
    write_shard(shards / shard_name("train", 0), np.array([1, 600]))
    with pytest.raises(DataError, match="token id 600 >= vocab_size 512"):
        export_shards(fetched, tmp_path / "tok", _params(), tmp_path / "out")
    assert not (tmp_path / "out").exists()


# --- case-transformed export and the validation byte sidecar ----------------------------------

CASE_DOCS = [
    "  The NASA Launch: iPhone McDonald's ™Word  \n",
    f"Escaped {TITLE}operators{ESC} stay {CAPNEXT}literal; ½ ﬁne É\u0301cole 日本語 😀",
    "spaced      out\ttabs\n\nand PARAGRAPHS",
    " \n\t ",
]


@pytest.fixture(scope="module")
def caseops(tmp_path_factory):
    root = tmp_path_factory.mktemp("caseops")
    docs = CASE_DOCS + english_docs()[:100]
    fetched = make_fetch_dir(root / "fetch", docs)
    build_tokenizer(fetched, TokenizerParams(vocab_size=512, text_transform="caseops"), ExportParams(val_docs=VAL_DOCS), root / "tok")
    return root, docs, fetched


def record_counts(surfaces: list[str]) -> list[int]:
    """The records' rule, character by character over each piece's surface: a case operator counts 0,
    an operator escaped by ESC counts its UTF-8 bytes, every other character its UTF-8 bytes."""
    counts, escaped = [], False
    for surface in surfaces:
        total = 0
        for ch in surface:
            if ch in OPERATORS and not escaped:
                escaped = ch == ESC
                continue
            escaped = False
            total += len(ch.encode("utf-8"))
        counts.append(total)
    return counts


def test_export_caseops_writes_transformed_tokens_and_the_records_sidecar(caseops, tmp_path):
    root, docs, fetched = caseops
    manifest = export_shards(read_fetched(fetched), root / "tok", _params(shard_tokens=1024), tmp_path / "shards")
    assert manifest["text_transform"] == "caseops" and manifest["val_byte_sidecar"] is True
    sp = load_processor(root / "tok" / MODEL_FILE)
    val_paths = list_shards(tmp_path / "shards", "val")
    assert len(val_paths) > 1, "the validation split should span several shards"
    for index, path in enumerate(val_paths):
        assert read_header(tmp_path / "shards" / sidecar_name(index)) == read_header(path)
    assert not list((tmp_path / "shards").glob("fineweb_train_bytes_*"))
    tokens, counts = load_tokens(val_paths), load_sidecar(val_paths)
    expected_tokens, expected_counts = [], []
    for doc in docs[:VAL_DOCS]:
        text = caseops_forward(doc)
        data = text.encode("utf-8")
        ids, begins, ends = encode_with_surfaces(sp, [text])[0]
        assert ids.tolist() == sp.encode(text)
        doc_counts = record_counts([data[b:e].decode("utf-8") for b, e in zip(begins, ends)])
        assert sum(doc_counts) == len(doc.encode("utf-8")) - dropped_edge_bytes(sp, doc)
        expected_tokens += [1, *ids.tolist()]
        expected_counts += [0, *doc_counts]
    assert tokens.tolist() == expected_tokens and counts.tolist() == expected_counts
    train = load_tokens(list_shards(tmp_path / "shards", "train"))
    assert train.tolist() == [t for d in docs[VAL_DOCS:] for t in (1, *sp.encode(caseops_forward(d)))]


def test_export_caseops_identical_for_one_and_two_workers(caseops, tmp_path):
    root, _, fetched = caseops
    export_shards(read_fetched(fetched), root / "tok", _params(workers=1, shard_tokens=1024), tmp_path / "one")
    export_shards(read_fetched(fetched), root / "tok", _params(workers=2, batch_docs=3, shard_tokens=1024), tmp_path / "two")
    one = {p.name: p.read_bytes() for p in (tmp_path / "one").iterdir()}
    assert any(name.startswith("fineweb_val_bytes_") for name in one)
    assert one == {p.name: p.read_bytes() for p in (tmp_path / "two").iterdir()}


def test_export_without_transform_writes_no_sidecar(setup, tmp_path):
    root, _, fetched = setup
    manifest = export_shards(read_fetched(fetched), root / "tok", _params(), tmp_path / "shards")
    assert "text_transform" not in manifest and "val_byte_sidecar" not in manifest
    assert not list((tmp_path / "shards").glob("fineweb_val_bytes_*"))


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(docs=st.lists(st.text(alphabet=st.sampled_from(list("aZq \n\t\u3000\x1f\u200b½é\u0301™日") + list(OPERATORS)), max_size=25) | st.text(max_size=25), min_size=1, max_size=5))
def test_export_sidecar_counts_every_byte_but_the_dropped_ends(caseops, docs):
    root, _, _ = caseops
    model = str(root / "tok" / MODEL_FILE)
    sp = load_processor(model)
    tokens, lengths, counts = encode_batch(model, 0, docs, "caseops", len(docs))
    assert counts.shape == tokens.shape and counts.dtype == np.uint16
    starts = np.concatenate([[0], np.cumsum(lengths)[:-1]])
    for doc, start, length in zip(docs, starts, lengths):
        assert counts[start] == 0 and tokens[start] == 1
        assert int(counts[start : start + length].sum()) == len(doc.encode("utf-8")) - dropped_edge_bytes(sp, doc)


def test_export_sidecar_entry_overflow_is_named(caseops):
    root, _, _ = caseops
    with pytest.raises(DataError, match=r"^document 7: a token stands for 70001 bytes, more than a sidecar entry \(uint16\) holds$"):
        encode_batch(str(root / "tok" / MODEL_FILE), 6, ["fine", "a" + " " * 70_000 + "b"], "caseops", 2)


def _official_caseops_fetch(tmp_path, caseops, sidecar: bool):
    root, docs, _ = caseops
    fetch = tmp_path / "fetch"
    shards = fetch / "datasets" / "fineweb10B_sp512_lossless_caps_caseops_v1_reserved"
    shards.mkdir(parents=True)
    (fetch / "tokenizers").mkdir()
    (fetch / "tokenizers" / "caseops.model").write_bytes((root / "tok" / MODEL_FILE).read_bytes())
    write_shard(shards / shard_name("val", 0), np.array([1, 40, 41, 1, 42]))
    write_shard(shards / shard_name("train", 0), np.array([1, 50]))
    if sidecar:
        write_shard(shards / sidecar_name(0), np.array([0, 3, 1, 0, 2]))
    make_fetch_dir(
        fetch, docs[:3], source="hf", shards_dir=shards.relative_to(fetch).as_posix(), tokenizer_model="tokenizers/caseops.model",
        val_byte_sidecar=sidecar, text_transform="lossless_caps_caseops_v1",
    )
    build_tokenizer(fetch, TokenizerParams(reuse="official", vocab_size=512, text_transform="caseops"), ExportParams(val_docs=1), tmp_path / "tok")
    return read_fetched(fetch), shards


def test_export_links_the_official_sidecar(caseops, tmp_path):
    fetched, shards = _official_caseops_fetch(tmp_path, caseops, sidecar=True)
    manifest = export_shards(fetched, tmp_path / "tok", _params(), tmp_path / "out")
    assert manifest["source"] == "official" and manifest["val_byte_sidecar"] is True
    assert (tmp_path / "out" / sidecar_name(0)).read_bytes() == (shards / sidecar_name(0)).read_bytes()
    write_shard(shards / sidecar_name(0), np.array([0, 3, 1]))
    with pytest.raises(DataError, match=r"fineweb_val_bytes_000000.bin: 3 byte counts for the 5 tokens of fineweb_val_000000.bin$"):
        export_shards(fetched, tmp_path / "tok", _params(), tmp_path / "out2")


def test_export_official_caseops_without_sidecar(caseops, tmp_path):
    fetched, _ = _official_caseops_fetch(tmp_path, caseops, sidecar=False)
    with pytest.raises(DataError, match=r"needs the validation byte sidecar, which the fetch lacks \(fetch.val_byte_sidecar: true\)"):
        export_shards(fetched, tmp_path / "tok", _params(), tmp_path / "out")


def test_val_stream_from_sidecar_takes_its_counts_as_target_bytes():
    tokens = np.array([1, 9, 10, 1, 11])
    stream = stream_from_sidecar(tokens, np.array([0, 2, 3, 0, 4], dtype=np.uint16), 1)
    assert stream.target_bytes.tolist() == [0, 2, 3, 0, 4] and stream.target_bytes.dtype == np.int64
    with pytest.raises(DataError, match=r"^byte sidecar counts 2 bytes for the BOS at position 3 \(must be 0\)$"):
        stream_from_sidecar(tokens, np.array([0, 2, 3, 2, 4]), 1)
    with pytest.raises(DataError, match=r"^byte sidecar holds 4 counts for 5 validation tokens$"):
        stream_from_sidecar(tokens, np.array([0, 2, 3, 0]), 1)
