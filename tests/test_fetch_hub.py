"""fetch source=hf against a local hub stand-in (tests/hub_stub.py): the real client, a real HTTP server.

No test touches the internet: the endpoint is the stub on 127.0.0.1.
"""

from __future__ import annotations

import dataclasses
import json
import shutil
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import sentencepiece as spm
from hub_stub import (
    CASEOPS_DATASET,
    CASEOPS_TOKENIZER,
    CASEOPS_VARIANT,
    DATASET,
    REPO_ID,
    TOKENIZER,
    VAL_DOCS,
    VARIANT,
    VOCAB_SIZE,
    HubRepo,
    HubStub,
    build_hub_repo,
)

from pgolf.config.data import FetchParams
from pgolf.data.docs import iter_docs, read_fetched
from pgolf.data.hub import plan_downloads
from pgolf.data.shards import encode_shard, list_shards, read_header
from pgolf.errors import DataError, ShardError

SHARDS = f"datasets/{DATASET}"


@pytest.fixture(scope="module")
def hub_repo(tmp_path_factory: pytest.TempPathFactory) -> HubRepo:
    return build_hub_repo(tmp_path_factory.mktemp("hub-repo"))


@pytest.fixture
def repo(hub_repo: HubRepo, tmp_path: Path) -> HubRepo:
    """A private copy of the stub repo that a test may damage."""
    root = tmp_path / "server"
    shutil.copytree(hub_repo.root, root)
    return dataclasses.replace(hub_repo, root=root)


@pytest.fixture
def stub(repo: HubRepo, monkeypatch: pytest.MonkeyPatch) -> Iterator[HubStub]:
    import huggingface_hub.constants

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setenv("HF_HUB_DISABLE_TELEMETRY", "1")
    for proxy in ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "http_proxy", "https_proxy", "all_proxy"):
        monkeypatch.delenv(proxy, raising=False)
    with HubStub(repo.root) as server:
        yield server


def params_for(stub: HubStub, tmp_path: Path, **overrides: object) -> FetchParams:
    values = dict(
        source="hf", repo_id=REPO_ID, endpoint=stub.url, variant=VARIANT, train_shards=2, cache_dir=str(tmp_path / "cache")
    )
    values.update(overrides)
    return FetchParams(**values)


def run_fetch(params: FetchParams, out: Path) -> dict:
    from pgolf.data.fetch import fetch

    return fetch(params, out)


def test_full_fetch_matches_the_repo_byte_for_byte(stub: HubStub, repo: HubRepo, tmp_path: Path) -> None:
    out = tmp_path / "fetch"
    summary = run_fetch(params_for(stub, tmp_path), out)
    fetched = read_fetched(out)
    assert fetched.source == "hf" and fetched.docs_path is None and fetched.docs_val is None
    assert fetched.shards_dir == out / "hub" / SHARDS
    assert [p.name for p in list_shards(fetched.shards_dir, "val")] == ["fineweb_val_000000.bin"]
    assert len(list_shards(fetched.shards_dir, "train")) == 2
    for entry in summary["files"]:
        local = out / "hub" / entry["path"]
        assert local.read_bytes() == repo.file(entry["path"]).read_bytes()
        assert entry["bytes"] == local.stat().st_size
    assert {p.name: read_header(p) for p in fetched.shards_dir.iterdir()} == repo.shard_tokens
    assert summary["tokens_per_shard"] == repo.shard_tokens
    assert fetched.tokenizer_model == out / "hub" / "tokenizers" / f"{TOKENIZER}.model"
    assert spm.SentencePieceProcessor(model_file=str(fetched.tokenizer_model)).vocab_size() == VOCAB_SIZE
    assert (summary["vocab_size"], summary["bos_id"], summary["dataset"]) == (VOCAB_SIZE, 1, DATASET)
    assert summary["commit"] == stub.commit
    assert json.loads((out / "manifest.json").read_text()) == summary


def test_with_docs_fetches_documents_and_docs_val(stub: HubStub, repo: HubRepo, tmp_path: Path) -> None:
    out = tmp_path / "fetch"
    run_fetch(params_for(stub, tmp_path, with_docs=True, train_shards=0), out)
    fetched = read_fetched(out)
    assert fetched.docs_val == VAL_DOCS and fetched.num_docs == len(repo.docs)
    assert list(iter_docs(fetched.docs_path)) == repo.docs
    assert len(list_shards(fetched.shards_dir, "train")) == 0


def test_second_fetch_hits_the_cache(stub: HubStub, tmp_path: Path) -> None:
    params = params_for(stub, tmp_path)
    first = run_fetch(params, tmp_path / "a")
    downloads = stub.gets
    assert downloads == len(first["files"])  # manifest, 3 shards, .model, .vocab
    second = run_fetch(params, tmp_path / "b")
    assert stub.gets == downloads
    assert second == first


@pytest.mark.parametrize(
    ("damage", "message"),
    [
        (lambda data: b"", "empty file"),
        (lambda data: data[:-7], "truncated"),
    ],
    ids=["zero-byte", "truncated"],
)
def test_bad_shard_on_the_server_fails_cleanly(stub, repo: HubRepo, tmp_path: Path, damage, message: str) -> None:
    bad = repo.file(f"{SHARDS}/fineweb_train_000001.bin")
    good = bad.read_bytes()
    bad.write_bytes(damage(good))
    out = tmp_path / "fetch"
    with pytest.raises(ShardError, match=rf"fineweb_train_000001\.bin: .*{message}"):
        run_fetch(params_for(stub, tmp_path), out)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cache", "server"]
    bad.write_bytes(good)  # once the server is fixed, the next fetch downloads the shard again
    run_fetch(params_for(stub, tmp_path), out)
    assert read_header(out / "hub" / SHARDS / "fineweb_train_000001.bin") == repo.shard_tokens["fineweb_train_000001.bin"]


def test_too_many_train_shards_fails_before_downloading_shards(stub: HubStub, tmp_path: Path) -> None:
    with pytest.raises(DataError, match=rf"fetch.train_shards: 3 requested but {DATASET} .* has only 2"):
        run_fetch(params_for(stub, tmp_path, train_shards=3), tmp_path / "fetch")
    assert not (tmp_path / "fetch").exists()
    assert [path for method, path, _ in stub.requests if method == "GET"] == ["datasets/manifest.json"]


def test_missing_file_on_the_server_is_named(stub: HubStub, repo: HubRepo, tmp_path: Path) -> None:
    repo.file(f"tokenizers/{TOKENIZER}.vocab").unlink()
    with pytest.raises(DataError, match=rf"datasets/tokenizers/{TOKENIZER}\.vocab: download failed"):
        run_fetch(params_for(stub, tmp_path), tmp_path / "fetch")
    assert not (tmp_path / "fetch").exists()


def test_val_token_count_must_match_the_manifest(stub: HubStub, repo: HubRepo, tmp_path: Path) -> None:
    manifest = json.loads(repo.file("manifest.json").read_text())
    manifest["datasets"][0]["stats"]["tokens_val"] += 1
    repo.file("manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(ShardError, match="validation shards hold"):
        run_fetch(params_for(stub, tmp_path), tmp_path / "fetch")


# ---- the manifest checks, on the manifest itself ----


def _manifest(hub_repo: HubRepo) -> dict:
    return json.loads(hub_repo.file("manifest.json").read_text())


def test_plan_reads_the_official_layout(hub_repo: HubRepo) -> None:
    plan = plan_downloads(_manifest(hub_repo), FetchParams(variant=VARIANT, train_shards=1, with_docs=True), "m")
    assert plan.files == (
        "docs_selected.jsonl",
        "docs_selected.source_manifest.json",
        f"{SHARDS}/fineweb_val_000000.bin",
        f"{SHARDS}/fineweb_train_000000.bin",
        f"tokenizers/{TOKENIZER}.model",
        f"tokenizers/{TOKENIZER}.vocab",
    )
    assert plan.tokenizer_model == f"tokenizers/{TOKENIZER}.model"


def _drop_variant(m: dict) -> None:
    m["datasets"] = []


def _drop_tokenizer(m: dict) -> None:
    m["tokenizers"] = []


def _escape_tokenizer(m: dict) -> None:
    m["tokenizers"][0]["model_path"] = "../../etc/passwd"


def _drop_stats(m: dict) -> None:
    del m["datasets"][0]["stats"]["files_train"]


def _no_val(m: dict) -> None:
    m["datasets"][0]["stats"]["files_val"] = 0


@pytest.mark.parametrize(
    ("damage", "message"),
    [
        (_drop_variant, f"no dataset '{DATASET}'"),
        (_drop_tokenizer, "which has no 'tokenizers' entry"),
        (_escape_tokenizer, "must be a relative path inside the repo"),
        (_drop_stats, "stats.files_train must be a non-negative integer"),
        (_no_val, "lists no validation shards"),
        (lambda m: m.clear(), "'datasets' list"),
    ],
)
def test_bad_manifest_is_a_data_error(hub_repo: HubRepo, damage, message: str) -> None:
    manifest = _manifest(hub_repo)
    damage(manifest)
    with pytest.raises(DataError, match=message):
        plan_downloads(manifest, FetchParams(variant=VARIANT), "repo:datasets/manifest.json")


# ---- the case-transformed set (the records' CaseOps repo) and its validation byte sidecar ----

CASEOPS_SHARDS = f"datasets/{CASEOPS_DATASET}"


def test_plan_adds_the_byte_sidecar_of_each_validation_shard(hub_repo: HubRepo) -> None:
    params = FetchParams(variant=CASEOPS_VARIANT, train_shards=1, val_byte_sidecar=True)
    plan = plan_downloads(_manifest(hub_repo), params, "m")
    assert plan.sidecar_files == (f"{CASEOPS_SHARDS}/fineweb_val_bytes_000000.bin",)
    assert plan.files[:3] == (f"{CASEOPS_SHARDS}/fineweb_val_000000.bin", *plan.sidecar_files, f"{CASEOPS_SHARDS}/fineweb_train_000000.bin")
    assert plan.text_transform == "lossless_caps_caseops_v1" and plan.tokenizer_model == f"tokenizers/{CASEOPS_TOKENIZER}.model"
    assert plan_downloads(_manifest(hub_repo), FetchParams(variant=VARIANT), "m").text_transform is None
    assert plan_downloads(_manifest(hub_repo), FetchParams(variant=CASEOPS_VARIANT), "m").sidecar_files == ()


def test_caseops_set_fetches_exports_and_audits(stub: HubStub, repo: HubRepo, tmp_path: Path) -> None:
    from pgolf.audit import audit
    from pgolf.config.data import AuditParams, ExportParams, TokenizerParams
    from pgolf.data.export import export_shards
    from pgolf.runtime import load_val_stream
    from pgolf.tokenizer import MODEL_FILE, build_tokenizer

    out = tmp_path / "fetch"
    summary = run_fetch(params_for(stub, tmp_path, variant=CASEOPS_VARIANT, val_byte_sidecar=True, with_docs=True), out)
    assert summary["val_byte_sidecar"] is True and summary["text_transform"] == "lossless_caps_caseops_v1"
    fetched = read_fetched(out)
    assert fetched.val_byte_sidecar and fetched.shards_dir == out / "hub" / CASEOPS_SHARDS
    assert {p.name: read_header(p) for p in fetched.shards_dir.iterdir()} == repo.caseops_shard_tokens
    tokenizer = TokenizerParams(reuse="official", vocab_size=VOCAB_SIZE, text_transform="caseops")
    build_tokenizer(out, tokenizer, ExportParams(val_docs=VAL_DOCS), tmp_path / "tok")
    manifest = export_shards(fetched, tmp_path / "tok", ExportParams(val_docs=VAL_DOCS), tmp_path / "shards")
    assert manifest["source"] == "official" and manifest["val_byte_sidecar"] is True
    result = audit(fetched, tmp_path / "tok", tmp_path / "shards", AuditParams())
    assert result.source_text_checked and result.val_docs == VAL_DOCS
    assert result.val_bytes == sum(len(d.encode("utf-8")) for d in repo.docs[:VAL_DOCS])  # stripped docs: nothing dropped
    stream = load_val_stream(tmp_path / "shards", tmp_path / "tok" / MODEL_FILE)
    assert int(stream.target_bytes.sum()) == result.val_bytes


def test_caseops_set_without_the_sidecar_cannot_be_scored(stub: HubStub, tmp_path: Path) -> None:
    from pgolf.config.data import ExportParams, TokenizerParams
    from pgolf.data.export import export_shards
    from pgolf.tokenizer import build_tokenizer

    out = tmp_path / "fetch"
    summary = run_fetch(params_for(stub, tmp_path, variant=CASEOPS_VARIANT), out)
    assert "val_byte_sidecar" not in summary and not list((out / "hub" / CASEOPS_SHARDS).glob("fineweb_val_bytes_*"))
    with pytest.raises(DataError, match="made with text transform 'lossless_caps_caseops_v1', not tokenizer.text_transform 'none'"):
        build_tokenizer(out, TokenizerParams(reuse="official", vocab_size=VOCAB_SIZE), ExportParams(), tmp_path / "plain")
    build_tokenizer(out, TokenizerParams(reuse="official", vocab_size=VOCAB_SIZE, text_transform="caseops"), ExportParams(), tmp_path / "tok")
    with pytest.raises(DataError, match=r"fetch.val_byte_sidecar: true"):
        export_shards(read_fetched(out), tmp_path / "tok", ExportParams(), tmp_path / "shards")


@pytest.mark.parametrize(
    ("damage", "message"),
    [
        (lambda data: data[:-5], r"fineweb_val_bytes_000000\.bin: truncated"),
        (lambda data: encode_shard(np.frombuffer(data[1024:-2], dtype="<u2")), r"fineweb_val_bytes_000000\.bin: \d+ byte counts for the \d+ tokens of fineweb_val_000000\.bin"),
    ],
    ids=["truncated", "one-count-short"],
)
def test_bad_sidecar_on_the_server_fails_cleanly(stub: HubStub, repo: HubRepo, tmp_path: Path, damage, message: str) -> None:
    bad = repo.file(f"{CASEOPS_SHARDS}/fineweb_val_bytes_000000.bin")
    good = bad.read_bytes()
    bad.write_bytes(damage(good))
    params = params_for(stub, tmp_path, variant=CASEOPS_VARIANT, val_byte_sidecar=True)
    with pytest.raises(ShardError, match=rf"{message}.*\(dropped from the download cache\)"):
        run_fetch(params, tmp_path / "fetch")
    bad.write_bytes(good)
    run_fetch(params, tmp_path / "fetch")
    sidecar = tmp_path / "fetch" / "hub" / CASEOPS_SHARDS / "fineweb_val_bytes_000000.bin"
    assert read_header(sidecar) == repo.caseops_shard_tokens["fineweb_val_000000.bin"]
