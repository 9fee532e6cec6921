"""Audit: exact byte accounting on validation shards, independent recomputation, each failure class."""

from __future__ import annotations

import io
import json
import math
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import sentencepiece as spm
import yaml
from data_helpers import english_docs, make_fetch_dir

from pgolf.audit import audit, run_audit
from pgolf.bytetable import load_sidecar, sidecar_name
from pgolf.casetransform import ESC, TITLE
from pgolf.config.data import AuditParams, ExportParams, TokenizerParams
from pgolf.data.docs import read_fetched, sha256_file
from pgolf.data.export import export_shards
from pgolf.data.shards import SHARDS_MANIFEST, list_shards, read_shard, shard_name, write_shard
from pgolf.errors import AuditError
from pgolf.tokenizer import INFO_FILE, MODEL_FILE, build_tokenizer, dropped_edge_bytes

VAL_DOCS = 15
REPO = Path(__file__).resolve().parents[1]
EXTRA_DOCS = ["Café “naïve” — 日本語 😀 …  spaced   out", " leading space", "tabs\there\nand ½ ﬁne"]


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    root = tmp_path_factory.mktemp("audit")
    docs = EXTRA_DOCS + english_docs()[:80]
    fetched = make_fetch_dir(root / "fetch", docs)
    build_tokenizer(fetched, TokenizerParams(vocab_size=512), ExportParams(val_docs=VAL_DOCS), root / "tok")
    export_shards(read_fetched(fetched), root / "tok", ExportParams(val_docs=VAL_DOCS, shard_tokens=2048, workers=1), root / "shards")
    return root


@pytest.fixture
def copy(built, tmp_path):
    """A private copy of the built directories, free to corrupt."""
    for name in ("fetch", "tok", "shards"):
        shutil.copytree(built / name, tmp_path / name)
    return tmp_path


def _audit(root: Path, params: AuditParams = AuditParams()):
    return audit(read_fetched(root / "fetch"), root / "tok", root / "shards", params)


def independent_metrics(tok_dir: Path, shards_dir: Path) -> dict:
    """Recompute from the model file and raw shard bytes, one token at a time."""
    sp = spm.SentencePieceProcessor(model_file=str(tok_dir / MODEL_FILE))
    tokens: list[int] = []
    for path in sorted(shards_dir.glob("fineweb_val_*.bin")):
        tokens.extend(np.fromfile(path, dtype="<u2", offset=1024).tolist())
    total = fallback = docs = 0
    prev_boundary = True
    for t in tokens:
        boundary = sp.is_control(t) or sp.is_unknown(t) or sp.is_unused(t)
        docs += t == sp.bos_id()
        fallback += sp.is_byte(t)
        if sp.is_byte(t):
            total += 1
        elif not boundary:
            piece = sp.id_to_piece(t)
            total += len((piece[1:] if piece.startswith("▁") else piece).encode("utf-8"))
            total += piece.startswith("▁") and not prev_boundary
        prev_boundary = boundary
    return {"val_docs": docs, "val_tokens": len(tokens), "val_bytes": total, "bytes_per_token": total / len(tokens), "byte_fallback_tokens": fallback}


def test_audit_passes_and_metrics_match_an_independent_recomputation(built, tmp_path):
    metrics_path = tmp_path / "metrics" / "audit.json"
    result = run_audit(built / "fetch", built / "tok", built / "shards", AuditParams(), metrics_path)
    first = metrics_path.read_bytes()
    metrics = json.loads(first)
    provenance = metrics.pop("provenance")
    assert metrics == result.metrics()
    shards = list_shards(built / "shards", "train") + list_shards(built / "shards", "val")
    assert provenance["data"]["shards_sha256"] == {p.name: sha256_file(p) for p in shards}
    assert provenance["data"]["manifest_sha256"] == sha256_file(built / "shards" / SHARDS_MANIFEST)
    assert provenance["data"]["tokenizer_sha256"] == sha256_file(built / "tok" / MODEL_FILE) and provenance["config"].keys() == {"audit"}
    timing = json.loads((metrics_path.parent / "timing" / "audit.json").read_text())
    assert timing["phases"].keys() == {"checks", "fingerprints"} and sum(timing["phases"].values()) <= timing["wall_seconds"]
    run_audit(built / "fetch", built / "tok", built / "shards", AuditParams(), metrics_path)
    assert metrics_path.read_bytes() == first  # seed-fixed: nothing volatile
    recomputed = independent_metrics(built / "tok", built / "shards")
    assert {k: metrics[k] for k in recomputed} == recomputed
    assert metrics["val_docs"] == VAL_DOCS and metrics["vocab_size"] == 512
    assert metrics["source_text_checked"] is True and metrics["byte_fallback_tokens"] > 0
    assert metrics["boundary_tokens"] == VAL_DOCS and metrics["boundary_ids"] == 4
    assert metrics["tokenizer_sha256"] == sha256_file(built / "tok" / MODEL_FILE)
    assert metrics["train_tokens"] == sum(read_shard(p).size for p in list_shards(built / "shards", "train"))
    assert metrics["overlap_checked"] is True and metrics["overlap_val_docs"] == VAL_DOCS
    assert metrics["overlap_train_docs"] == metrics["train_docs"]


def _rewrite_val(root: Path, change) -> None:
    path = root / "shards" / shard_name("val", 0)
    tokens = np.array(read_shard(path))
    change(tokens)
    write_shard(path, tokens)


def test_audit_byte_mismatch_names_the_document(copy, tmp_path):
    tokens = np.array(read_shard(copy / "shards" / shard_name("val", 0)))
    third = np.flatnonzero(tokens == 1)[2]
    _rewrite_val(copy, lambda t: t.__setitem__(third + 2, 3))  # an <unk> inside document 2
    with pytest.raises(AuditError, match=r"validation document 2 \(.*byte table counts \d+ bytes, its decoded text has \d+"):
        _audit(copy)
    with pytest.raises(AuditError):
        run_audit(copy / "fetch", copy / "tok", copy / "shards", AuditParams(), tmp_path / "m.json")
    assert not (tmp_path / "m.json").exists()


def test_audit_stream_must_start_with_bos(copy):
    _rewrite_val(copy, lambda t: t.__setitem__(0, 100))
    with pytest.raises(AuditError, match="does not start with BOS"):
        _audit(copy)


def test_audit_doc_count_must_match_manifest(copy):
    path = copy / "shards" / SHARDS_MANIFEST
    manifest = json.loads(path.read_text())
    path.write_text(json.dumps({**manifest, "docs_val": VAL_DOCS + 1}))
    with pytest.raises(AuditError, match=f"docs_val is {VAL_DOCS + 1}, the shards hold {VAL_DOCS}"):
        _audit(copy)


def test_audit_fails_on_a_validation_document_copied_into_training(copy):
    val = np.array(read_shard(copy / "shards" / shard_name("val", 0)))
    starts = np.flatnonzero(val == 1)
    doc = val[starts[3] : starts[4]]  # validation document 3, BOS included
    path = copy / "shards" / shard_name("train", 0)
    train = np.array(read_shard(path))
    cut = int(np.flatnonzero(train == 1)[2])
    write_shard(path, np.concatenate((train[:cut], doc, train[cut:])))
    manifest_path = copy / "shards" / SHARDS_MANIFEST
    manifest = json.loads(manifest_path.read_text())
    manifest_path.write_text(json.dumps({**manifest, "tokens_train": manifest["tokens_train"] + doc.size}))
    with pytest.raises(AuditError, match=r"^validation document 3 \('.*'\) also appears in the training data \(fineweb_train_000000.bin"):
        _audit(copy)
    assert _audit(copy, AuditParams(overlap=False)).overlap_checked is False


def test_audit_source_text_comparison(copy):
    docs = [json.loads(line)["text"] for line in (copy / "fetch" / "docs.jsonl").read_text().splitlines()]
    docs[4] = docs[4].replace("e", "E", 1)
    make_fetch_dir(copy / "fetch", docs)
    with pytest.raises(AuditError, match="validation document 4 .*differ from the normalized source"):
        _audit(copy)
    assert _audit(copy, AuditParams(compare_source_text=False)).source_text_checked is False


def test_audit_tokenizer_must_match_the_export(copy):
    manifest = json.loads((copy / "shards" / SHARDS_MANIFEST).read_text())
    (copy / "shards" / SHARDS_MANIFEST).write_text(json.dumps({**manifest, "tokenizer_sha256": "0" * 64}))
    with pytest.raises(AuditError, match="tokenizer_sha256"):
        _audit(copy)


def test_audit_tokenizer_without_standalone_space_piece(copy):
    """The known bug: without a '▁' piece every space is 3 byte-fallback bytes."""
    model = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(["abcabcabd" * 50, "xyzzy" * 40]), model_writer=model, model_type="bpe", vocab_size=280,
        byte_fallback=True, add_dummy_prefix=False, bos_id=1, eos_id=2, unk_id=3, pad_id=0, hard_vocab_limit=False, minloglevel=2,
    )
    (copy / "tok" / MODEL_FILE).write_bytes(model.getvalue())
    info = json.loads((copy / "tok" / INFO_FILE).read_text())
    (copy / "tok" / INFO_FILE).write_text(json.dumps({**info, "sha256": sha256_file(copy / "tok" / MODEL_FILE)}))
    with pytest.raises(AuditError, match="no standalone '▁' piece"):
        _audit(copy)


def test_audit_missing_validation_shards(copy):
    for path in list_shards(copy / "shards", "val"):
        path.unlink()
    with pytest.raises(AuditError, match="no validation shards"):
        _audit(copy)


def _stage(script: str, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(REPO / "stages" / script), *args], capture_output=True, text=True, cwd=REPO)


def test_audit_stage_scripts_end_to_end(tmp_path):
    fetched = make_fetch_dir(tmp_path / "fetch", EXTRA_DOCS + english_docs()[:40])
    params = tmp_path / "params.yaml"
    params.write_text("tokenizer:\n  vocab_size: 400\nexport:\n  val_docs: 5\n  shard_tokens: 4096\n  workers: 1\n")
    common = ("--fetched", str(fetched), "--params", str(params))
    assert _stage("tokenizer.py", *common, "--out", str(tmp_path / "tok")).returncode == 0
    assert _stage("export.py", *common, "--tokenizer", str(tmp_path / "tok"), "--out", str(tmp_path / "shards")).returncode == 0
    metrics = tmp_path / "audit.json"
    done = _stage("audit.py", *common, "--tokenizer", str(tmp_path / "tok"), "--shards", str(tmp_path / "shards"), "--metrics", str(metrics))
    assert done.returncode == 0, done.stderr
    assert json.loads(metrics.read_text())["val_docs"] == 5
    params.write_text("tokenizer:\n  vocab_size: 100\n")
    bad = _stage("tokenizer.py", *common, "--out", str(tmp_path / "tok2"))
    assert bad.returncode == 2 and "tokenizer.vocab_size: must be >= 256" in bad.stderr


def test_audit_checks_the_official_manifest_counts(tmp_path):
    from pgolf.audit import _check_official_counts
    from pgolf.data.docs import Fetched

    hub = tmp_path / "hub"
    hub.mkdir()
    stats = {"docs_val": 50000, "tokens_val": 62021846, "files_val": 1}
    (hub / "manifest.json").write_text(json.dumps({"datasets": [{"name": "fineweb10B_sp1024", "stats": stats}]}))
    fetched = Fetched(tmp_path, "hf", None, None, None, None, None, {"dataset": "fineweb10B_sp1024", "variant": "sp1024"})
    _check_official_counts(fetched, 50000, 62021846)
    with pytest.raises(AuditError, match=r"manifest.json: dataset 'fineweb10B_sp1024' declares docs_val = 50000, the validation shards hold 49999"):
        _check_official_counts(fetched, 49999, 62021846)
    with pytest.raises(AuditError, match="declares tokens_val = 62021846"):
        _check_official_counts(fetched, 50000, 1)
    _check_official_counts(Fetched(tmp_path, "builtin", None, None, None, None, None, {}), 1, 1)  # only for the official data


# --- case-transformed shards: bytes from the sidecar, checked against the source ---------------

CASE_DOCS = ["  The NASA Launch ™Word  \n", f"Literal {TITLE}{ESC} operators; ÉCOLE, iPhone \x1f", "Ⅻ ＡBC ﬁne"]


@pytest.fixture(scope="module")
def built_caseops(tmp_path_factory):
    root = tmp_path_factory.mktemp("audit-caseops")
    docs = CASE_DOCS + EXTRA_DOCS + english_docs()[:80]
    fetched = make_fetch_dir(root / "fetch", docs)
    build_tokenizer(fetched, TokenizerParams(vocab_size=512, text_transform="caseops"), ExportParams(val_docs=VAL_DOCS), root / "tok")
    export_shards(read_fetched(fetched), root / "tok", ExportParams(val_docs=VAL_DOCS, shard_tokens=2048, workers=1), root / "shards")
    return root, docs


@pytest.fixture
def caseops_copy(built_caseops, tmp_path):
    for name in ("fetch", "tok", "shards"):
        shutil.copytree(built_caseops[0] / name, tmp_path / name)
    return tmp_path


def _sidecar(root: Path, change) -> None:
    """Rewrite the byte sidecar of the first validation shard."""
    path = root / "shards" / sidecar_name(0)
    counts = np.array(read_shard(path))
    change(counts, np.array(read_shard(root / "shards" / shard_name("val", 0))))
    write_shard(path, counts)


def test_audit_caseops_counts_the_original_bytes(built_caseops, tmp_path):
    root, docs = built_caseops
    result = run_audit(root / "fetch", root / "tok", root / "shards", AuditParams(), tmp_path / "audit.json")
    metrics = json.loads((tmp_path / "audit.json").read_text())
    sp = spm.SentencePieceProcessor(model_file=str(root / "tok" / MODEL_FILE))
    edges = sum(dropped_edge_bytes(sp, d) for d in docs[:VAL_DOCS])
    assert metrics["text_transform"] == "caseops" and metrics["source_text_checked"] is True
    assert metrics["val_bytes"] == sum(len(d.encode("utf-8")) for d in docs[:VAL_DOCS]) - edges
    assert metrics["val_edge_bytes"] == edges > 0
    assert metrics["val_bytes"] == int(load_sidecar(list_shards(root / "shards", "val")).sum())
    assert metrics["transform_inverse_exact_docs"] == VAL_DOCS - 2  # NFKC spells ™ and Ⅻ/Ａ in ASCII capitals
    assert {**result.metrics(), "provenance": metrics["provenance"]} == metrics


def test_audit_without_transform_reports_as_before(built):
    metrics = _audit(built).metrics()
    assert not {"text_transform", "val_edge_bytes", "transform_inverse_exact_docs"} & metrics.keys()


def test_audit_caseops_sidecar_byte_mismatch_names_the_document(caseops_copy):
    def bump(counts, tokens):
        starts = np.flatnonzero(tokens == 1)
        counts[starts[3] + 2] += 1

    _sidecar(caseops_copy, bump)
    with pytest.raises(AuditError, match=r"^validation document 3 \(.*\): the byte sidecar counts \d+ bytes, the source has \d+ UTF-8 bytes"):
        _audit(caseops_copy)


def test_audit_caseops_operator_tokens_count_zero(caseops_copy):
    title = spm.SentencePieceProcessor(model_file=str(caseops_copy / "tok" / MODEL_FILE)).piece_to_id(TITLE)

    def charge_an_operator(counts, tokens):
        counts[np.flatnonzero(tokens == title)[0]] = 3

    _sidecar(caseops_copy, charge_an_operator)
    with pytest.raises(AuditError, match=r"^validation document 0: the byte sidecar counts 3 bytes for operator token '\\ue001' at position \d+, not 0$"):
        _audit(caseops_copy)


def test_audit_caseops_sidecar_must_be_whole(caseops_copy):
    _sidecar(caseops_copy, lambda counts, tokens: counts.__setitem__(0, 5))
    with pytest.raises(AuditError, match="counts bytes for a BOS token"):
        _audit(caseops_copy)
    path = caseops_copy / "shards" / sidecar_name(0)
    write_shard(path, np.array(read_shard(path))[:-1])
    with pytest.raises(AuditError, match=r"fineweb_val_bytes_000000.bin: \d+ byte counts for the \d+ tokens of fineweb_val_000000.bin"):
        _audit(caseops_copy)
    path.unlink()
    with pytest.raises(AuditError, match="fineweb_val_bytes_000000.bin: validation byte sidecar not found"):
        _audit(caseops_copy)


def test_audit_caseops_manifest_and_source(caseops_copy):
    docs = [json.loads(line)["text"] for line in (caseops_copy / "fetch" / "docs.jsonl").read_text().splitlines()]
    docs[4] = docs[4].replace("e", "E", 1)
    make_fetch_dir(caseops_copy / "fetch", docs)
    with pytest.raises(AuditError, match="validation document 4 .*decoded tokens differ from the normalized caseops source"):
        _audit(caseops_copy)
    assert _audit(caseops_copy, AuditParams(compare_source_text=False)).source_text_checked is False
    path = caseops_copy / "shards" / SHARDS_MANIFEST
    manifest = json.loads(path.read_text())
    path.write_text(json.dumps({k: v for k, v in manifest.items() if k != "text_transform"}))
    with pytest.raises(AuditError, match="text_transform is None, the tokenizer has 'caseops'"):
        _audit(caseops_copy)


def test_caseops_profile_runs_stage_by_stage(tmp_path):
    """profiles/caseops-sp8192.yaml through the library calls: tokenizer, export, audit, one evaluation."""
    import torch

    from pgolf.config.eval import EvalSlidingParams
    from pgolf.config.model import ModelParams
    from pgolf.eval.methods import METHODS
    from pgolf.model import GPT
    from pgolf.runtime import load_val_stream

    profile = yaml.safe_load((REPO / "profiles" / "caseops-sp8192.yaml").read_text())
    tokenizer_params = TokenizerParams(**profile["tokenizer"])
    assert (tokenizer_params.vocab_size, tokenizer_params.text_transform) == (8192, "caseops")
    docs = CASE_DOCS + EXTRA_DOCS + english_docs()
    fetched = make_fetch_dir(tmp_path / "fetch", docs)
    export = ExportParams(val_docs=VAL_DOCS, shard_tokens=4096, workers=1)
    info = build_tokenizer(fetched, tokenizer_params, export, tmp_path / "tok")
    assert info["vocab_size"] == 8192 and info["text_transform"] == "caseops"
    manifest = export_shards(read_fetched(fetched), tmp_path / "tok", export, tmp_path / "shards")
    result = audit(read_fetched(fetched), tmp_path / "tok", tmp_path / "shards", AuditParams())
    assert result.val_tokens == manifest["tokens_val"] and result.source_text_checked

    stream = load_val_stream(tmp_path / "shards", tmp_path / "tok" / MODEL_FILE)
    assert int(stream.target_bytes.sum()) == result.val_bytes
    torch.manual_seed(0)
    model = GPT(ModelParams(vocab_size=8192, layers=1, width=32, heads=2, kv_heads=1)).eval()
    outcome = METHODS["sliding"].evaluate(model, stream, EvalSlidingParams(window=128, stride=64, batch_size=8))
    assert outcome.result.scored_bytes == result.val_bytes
    bits = outcome.result.val_loss * outcome.result.scored_tokens / math.log(2)
    assert outcome.result.val_bpb == pytest.approx(bits / result.val_bytes)
    assert outcome.result.val_loss == pytest.approx(math.log(8192), rel=0.05)  # untrained: about uniform
