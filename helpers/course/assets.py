"""The course's downloadable assets: where they come from, how they are checked, where they go.

A registry in the spirit of d2l's ``DATA_HUB``, with the safety a 0.5 GB download needs:

* **cache-first**: a complete, verified file in the cache is returned without any request;
* **resumable**: an interrupted download leaves ``<file>.part``; the next attempt continues it
  with ``Range: bytes=N-`` (and restarts cleanly when the server ignores the range);
* **atomic and checked**: the SHA-256 is computed while streaming (resumed prefix included) and
  the file gets its final name only once the checksum matches;
* **unpinned assets**: when no published SHA-256 exists (``sha256=None``), the first complete
  download records its hash in ``<cache>/<file>.sha256`` and later uses are verified against it;
* **safe extraction**: tar/zip members with absolute paths, ``..``, links that leave the target,
  or device files are refused, and the archive is unpacked into a temporary folder first.

Command line::

    python -m helpers.assets list
    python -m helpers.assets fetch vgg_face_caffe [--force]
    python -m helpers.assets verify vgg_face_caffe

Adience is deliberately not downloadable: its terms must be agreed on its site, so its entry has
no URL and says where to put the files.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import os
import posixpath
import re
import shutil
import stat
import sys
import tarfile
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Iterable

from . import paths
from .fileio import hash_file, write_json_atomic, write_text_atomic

CHUNK_SIZE = 1 << 20
CONNECT_TIMEOUT_S = 15
READ_TIMEOUT_S = 60
ASSET_ROOTS = ("weights", "data")


@dataclass(frozen=True)
class Asset:
    """One downloadable (or hand-placed) asset.

    ``extract_to`` is a folder whose first component picks the root (``"weights"`` for
    :func:`helpers.course.paths.weights_dir`, ``"data"`` for :func:`helpers.course.paths.data_dir`); the archive
    is unpacked there like ``tar -C``. ``provides`` lists paths, relative to that folder, that
    exist once the asset is in place; they decide whether the asset counts as present.
    """

    name: str
    url: str | None
    sha256: str | None
    size: int | None
    filename: str
    extract_to: str | None
    description: str
    terms: str
    provides: tuple[str, ...] = ()
    # A checksum published by someone else than the asset's owner, checked in addition to the
    # SHA-256 so that even the first download of an unpinned asset is not taken on trust.
    md5: str | None = None
    md5_source: str | None = None
    manual_steps: str | None = None

    def __post_init__(self):
        if self.sha256 is not None and not re.fullmatch(r"[0-9a-f]{64}", self.sha256):
            raise ValueError(f"asset {self.name!r}: sha256 must be 64 lowercase hex digits, got {self.sha256!r}")
        if self.md5 is not None and not re.fullmatch(r"[0-9a-f]{32}", self.md5):
            raise ValueError(f"asset {self.name!r}: md5 must be 32 lowercase hex digits, got {self.md5!r}")
        if self.extract_to is not None:
            parts = PurePosixPath(self.extract_to).parts
            if not parts or parts[0] not in ASSET_ROOTS or ".." in parts:
                raise ValueError(
                    f"asset {self.name!r}: extract_to must start with one of {ASSET_ROOTS}, got {self.extract_to!r}"
                )

    @property
    def downloadable(self) -> bool:
        return self.url is not None

    def target_dir(self) -> Path | None:
        """The folder the asset is unpacked into (resolved now, so ``COURSE_HOME`` applies)."""
        if self.extract_to is None:
            return None
        root, *rest = PurePosixPath(self.extract_to).parts
        base = paths.weights_dir() if root == "weights" else paths.data_dir()
        return base.joinpath(*rest)

    def provided_paths(self) -> list[Path]:
        target = self.target_dir()
        return [] if target is None else [target / p for p in self.provides]

    def is_present(self) -> bool:
        provided = self.provided_paths()
        return bool(provided) and all(p.exists() for p in provided)


REGISTRY: dict[str, Asset] = {}


def register(asset: Asset) -> Asset:
    if asset.name in REGISTRY:
        raise ValueError(f"an asset named {asset.name!r} is already registered")
    REGISTRY[asset.name] = asset
    return asset


VGG_FACE_URL = "https://www.robots.ox.ac.uk/~vgg/software/vgg_face/src/vgg_face_caffe.tar.gz"

register(Asset(
    name="vgg_face_caffe",
    url=VGG_FACE_URL,
    # No published SHA-256 of this tarball could be found (nor its size): rather than invent one,
    # the first complete download pins it in a lock file (see expected_sha256).
    sha256=None,
    size=None,
    filename="vgg_face_caffe.tar.gz",
    extract_to="weights",
    description="VGG-Face (Parkhi et al., BMVC 2015): the official Caffe release "
                "(deploy prototxt, caffemodel, 2,622 identity names, demo image ak.png)",
    terms="Released by the Visual Geometry Group, University of Oxford: read the licence terms on "
          "https://www.robots.ox.ac.uk/~vgg/software/vgg_face/ before use (research use; check "
          "commercial use there). Cite Parkhi, Vedaldi and Zisserman, 'Deep Face Recognition', BMVC 2015.",
    provides=(
        "vgg_face_caffe/VGG_FACE_deploy.prototxt",
        "vgg_face_caffe/VGG_FACE.caffemodel",
        "vgg_face_caffe/names.txt",
        "vgg_face_caffe/ak.png",
    ),
    # Not from Oxford: Idiap's bob.bio.face (bob/bio/face/embeddings/opencv.py, VGG16_Oxford) pins
    # this MD5 for the same tarball, fetched from the Oxford URL above or Idiap's mirror of it.
    md5="ee707ac6e890bc148cb155adeaad12be",
    md5_source="bioidiap/bob.bio.face, bob/bio/face/embeddings/opencv.py",
))

LEVI_HASSNER_URL = "https://www.openu.ac.il/home/hassner/projects/cnn_agegender/cnn_age_gender_models_and_data.0.0.2.zip"
LEVI_HASSNER_FOLDER = "cnn_age_gender_models_and_data.0.0.2"

register(Asset(
    name="levi_hassner_gender",
    # The authors' release, as linked from BVLC's Model Zoo page and their project page. No
    # checksum of the zip is published: the first download pins it (like VGG-Face's), and
    # helpers.levi_hassner checks the unpacked caffemodel and mean file against the git blob
    # ids of the copies the authors pushed to GilLevi/AgeGenderDeepLearning (models/).
    url=LEVI_HASSNER_URL,
    sha256=None,
    size=None,
    filename="cnn_age_gender_models_and_data.0.0.2.zip",
    extract_to="weights/levi_hassner",
    description="Levi & Hassner's age and gender CNNs (CVPR Workshops 2015), the Adience baseline: "
                "deploy_gender.prototxt, gender_net.caffemodel, mean.binaryproto (and the age net)",
    terms="Released by Gil Levi and Tal Hassner for research, provided 'as is' "
          "(https://talhassner.github.io/home/publication/2015_CVPR). Cite Levi and Hassner, 'Age and Gender "
          "Classification Using Convolutional Neural Networks', IEEE CVPR Workshops (AMFG) 2015.",
    provides=tuple(f"{LEVI_HASSNER_FOLDER}/{name}"
                   for name in ("deploy_gender.prototxt", "gender_net.caffemodel", "mean.binaryproto")),
))

register(Asset(
    name="adience",
    url=None,
    sha256=None,
    size=None,
    filename="aligned.tar.gz",
    extract_to="data/adience",
    description="Adience benchmark (Eidinger, Enbar and Hassner, 2014): aligned faces and the "
                "five cross-validation fold files",
    terms="Its authors distribute it only to those who agree to its terms on its site, so the course "
          "never downloads it for you.",
    provides=tuple([f"fold_{k}_data.txt" for k in range(5)] + ["aligned"]),
    manual_steps=(
        "1. register and agree to the terms at "
        "https://talhassner.github.io/home/projects/Adience/Adience-data.html\n"
        "2. download aligned.tar.gz and fold_0_data.txt ... fold_4_data.txt\n"
        "3. put the five fold files in {target}/ and unpack aligned.tar.gz there, so that "
        "{target}/aligned/<user_id>/... exists (tar -xzf aligned.tar.gz -C {target})"
    ),
))


# ----------------------------------------------------------------------------- errors


class AssetError(RuntimeError):
    """Base class: anything that stops an asset from being fetched, verified or unpacked."""


class ManualDownloadRequired(AssetError):
    """The asset has no URL: a person has to get it (terms to agree to)."""


class DownloadError(AssetError):
    """The download failed (network, HTTP status, size); the message says how to do it by hand."""


class ChecksumMismatchError(AssetError):
    """The bytes are not the expected ones; the bad file has been removed."""


class UnsafeArchiveError(AssetError):
    """An archive member would land outside the target, or is a device file."""


# ----------------------------------------------------------------------------- download


def get_asset(name_or_asset: str | Asset) -> Asset:
    if isinstance(name_or_asset, Asset):
        return name_or_asset
    try:
        return REGISTRY[name_or_asset]
    except KeyError:
        known = ", ".join(sorted(REGISTRY)) or "(none)"
        raise KeyError(f"unknown asset {name_or_asset!r}: the registry has {known}") from None


def default_cache_dir() -> Path:
    """Downloads live beside the weights, so that a Drive-backed ``COURSE_HOME`` keeps them."""
    return paths.weights_dir() / "downloads"


def cache_paths(asset: Asset, cache_dir: str | os.PathLike | None = None) -> tuple[Path, Path, Path]:
    """(final file, partial download, SHA-256 lock file) of an asset in a cache folder."""
    cache = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    final = cache / asset.filename
    return final, cache / f"{asset.filename}.part", cache / f"{asset.filename}.sha256"


def expected_sha256(asset: Asset, cache_dir: str | os.PathLike | None = None) -> tuple[str | None, str]:
    """(hash, where it comes from): the registry's pin, else the lock file, else (None, 'not pinned')."""
    if asset.sha256:
        return asset.sha256, "registry"
    _, _, lock = cache_paths(asset, cache_dir)
    if lock.is_file():
        words = lock.read_text(encoding="utf-8").split()
        recorded = words[0].lower() if words else ""
        if not re.fullmatch(r"[0-9a-f]{64}", recorded):
            raise AssetError(f"{lock}: expected a 64-digit hex SHA-256 on its first line, found {recorded!r}; delete the file to re-pin")
        return recorded, f"lock file {lock}"
    return None, "not pinned"


def file_digests(path: str | os.PathLike) -> tuple[str, str, int]:
    """(sha256, md5, size in bytes) of a file."""
    digests = hash_file(path, "sha256", "md5")
    return digests["sha256"], digests["md5"], Path(path).stat().st_size


def manual_download_help(asset: Asset, cache_dir: str | os.PathLike | None = None) -> str:
    final, _, _ = cache_paths(asset, cache_dir)
    return (
        f"To download it by hand: open {asset.url} in a browser (or `wget -c {asset.url}`), "
        f"save it as {final}, then run `python -m helpers.assets verify {asset.name}` "
        f"and `python -m helpers.assets fetch {asset.name}` to unpack it."
    )


def fetch(
    name_or_asset: str | Asset,
    cache_dir: str | os.PathLike | None = None,
    *,
    progress: bool = True,
    force: bool = False,
    session=None,
    retries: int = 2,
) -> Path:
    """Return the path of the asset's verified file, downloading it only if needed.

    ``force`` discards the cached file and any partial download (a lock file is kept: delete it
    by hand to accept a different file). A connection cut mid-stream is resumed up to
    ``retries`` times within this call; the ``.part`` file also survives for a later call.
    """
    asset = get_asset(name_or_asset)
    if not asset.downloadable:
        raise ManualDownloadRequired(manual_instructions(asset))
    final, part, lock = cache_paths(asset, cache_dir)
    expected, source = expected_sha256(asset, cache_dir)
    if force:
        for p in (final, part):
            if p.exists():
                p.unlink()
    if final.is_file():
        return _verify_cached(asset, final, lock, expected, source, cache_dir)

    import requests  # only downloads need it
    import urllib3

    final.parent.mkdir(parents=True, exist_ok=True)
    own_session = session is None
    session = session or requests.Session()
    try:
        attempt = 0
        while True:
            try:
                sha, md5, size = _download_to_part(asset, part, session, progress)
                break
            except requests.HTTPError as exc:
                status = exc.response.status_code if exc.response is not None else "?"
                raise DownloadError(
                    f"downloading asset {asset.name!r}: the server answered HTTP {status} for {asset.url} ({exc}). "
                    f"Nothing was saved at {final}. {manual_download_help(asset, cache_dir)}"
                ) from exc
            except (requests.ConnectionError, requests.Timeout, urllib3.exceptions.HTTPError) as exc:
                attempt += 1
                have = part.stat().st_size if part.exists() else 0
                if attempt > retries:
                    kept = (f"{have} bytes are kept in {part}; running the same command again resumes from there. "
                            if have else "")
                    raise DownloadError(
                        f"downloading asset {asset.name!r} from {asset.url} failed after {attempt} attempt(s) "
                        f"({type(exc).__name__}: {exc}). {kept}{manual_download_help(asset, cache_dir)}"
                    ) from exc
                what = f"connection lost after {have} bytes" if have else "no connection"
                print(f"{asset.name}: {what} ({type(exc).__name__}); retrying ({attempt}/{retries})", file=sys.stderr)
    finally:
        if own_session:
            session.close()

    _check_or_discard(asset, part, sha, md5, size, expected, source)
    os.replace(part, final)
    if expected is None:
        _write_lock(asset, lock, sha)
    return final


def _verify_cached(asset, final, lock, expected, source, cache_dir) -> Path:
    sha, md5, size = file_digests(final)
    problems = _mismatches(asset, sha, md5, size, expected)
    if problems:
        raise ChecksumMismatchError(
            f"the cached file of asset {asset.name!r}, {final}, does not match: {'; '.join(problems)} "
            f"(SHA-256 from {source}). Delete it, or run `python -m helpers.assets fetch {asset.name} --force`, "
            "to download it again."
        )
    if expected is None:
        _write_lock(asset, lock, sha)
    return final


def _download_to_part(asset: Asset, part: Path, session, progress: bool) -> tuple[str, str, int]:
    """Stream the asset's URL into ``part``, continuing what is already there when possible.

    Returns (sha256, md5, size) of the whole file, hashed as the bytes arrive so that the
    0.5 GB file is not read back a second time.
    """
    from tqdm.auto import tqdm

    offset = part.stat().st_size if part.exists() else 0
    if asset.size is not None and offset > asset.size:
        print(f"{asset.name}: {part} is larger than the expected {asset.size} bytes; starting over", file=sys.stderr)
        part.unlink()
        offset = 0
    headers = {"Accept-Encoding": "identity"}
    if offset:
        headers["Range"] = f"bytes={offset}-"
    response = session.get(asset.url, headers=headers, stream=True, timeout=(CONNECT_TIMEOUT_S, READ_TIMEOUT_S))
    with response:
        if offset and response.status_code == 416:
            # Nothing left past our offset: either the part is already complete or it is longer
            # than the remote file. The checksum decides the first case; the second restarts.
            remote_size = _size_from_content_range(response.headers.get("Content-Range", ""))
            if remote_size == offset:
                return file_digests(part)
            print(f"{asset.name}: server refused the resume at byte {offset} (HTTP 416); starting over", file=sys.stderr)
            part.unlink()
            return _download_to_part(asset, part, session, progress)
        response.raise_for_status()
        if offset and response.status_code == 206:
            start = _start_from_content_range(response.headers.get("Content-Range", ""))
            if start != offset:
                print(f"{asset.name}: server resumed at byte {start}, not {offset}; starting over", file=sys.stderr)
                part.unlink()
                return _download_to_part(asset, part, session, progress)
        elif offset:
            print(f"{asset.name}: server ignored the resume request (HTTP {response.status_code}); starting over",
                  file=sys.stderr)
            offset = 0

        sha, md5 = hashlib.sha256(), hashlib.md5()
        if offset:
            with open(part, "rb") as f:
                while chunk := f.read(CHUNK_SIZE):
                    sha.update(chunk)
                    md5.update(chunk)
        length = response.headers.get("Content-Length")
        total = offset + int(length) if length and length.isdigit() else asset.size
        written = offset
        with open(part, "ab" if offset else "wb") as out, tqdm(
            total=total, initial=offset, unit="B", unit_scale=True, unit_divisor=1024,
            desc=asset.filename, disable=not progress,
        ) as bar:
            for chunk in _raw_chunks(response):
                out.write(chunk)
                sha.update(chunk)
                md5.update(chunk)
                written += len(chunk)
                bar.update(len(chunk))
        if total is not None and written != total:
            raise DownloadError(
                f"downloading asset {asset.name!r}: expected {total} bytes from {asset.url}, got {written}; "
                f"run the command again to resume from {part}"
            )
        return sha.hexdigest(), md5.hexdigest(), written


def _raw_chunks(response):
    """The body's bytes exactly as sent, each chunk as soon as it arrives.

    ``decode_content=False``: a server that labels a .tar.gz ``Content-Encoding: gzip`` must not
    get it unpacked on the fly (the checksum is of the file). ``read1`` hands over what has
    arrived rather than waiting for a full chunk, so a cut connection loses nothing already
    received and the ``.part`` file resumes from the last byte.
    """
    raw = response.raw
    if hasattr(raw, "read1"):
        while chunk := raw.read1(CHUNK_SIZE, decode_content=False):
            yield chunk
    else:  # urllib3 < 2.3
        yield from raw.stream(CHUNK_SIZE, decode_content=False)


def _size_from_content_range(value: str) -> int | None:
    m = re.match(r"bytes\s+(?:\*|\d+-\d+)/(\d+)", value.strip())
    return int(m.group(1)) if m else None


def _start_from_content_range(value: str) -> int | None:
    m = re.match(r"bytes\s+(\d+)-\d+/(?:\d+|\*)", value.strip())
    return int(m.group(1)) if m else None


def _mismatches(asset: Asset, sha: str, md5: str, size: int, expected: str | None) -> list[str]:
    problems = []
    if asset.size is not None and size != asset.size:
        problems.append(f"size expected {asset.size} bytes, actual {size}")
    if expected is not None and sha != expected:
        problems.append(f"SHA-256 expected {expected}, actual {sha}")
    if asset.md5 is not None and md5 != asset.md5:
        problems.append(f"MD5 expected {asset.md5} (published by {asset.md5_source}), actual {md5}")
    return problems


def _check_or_discard(asset, part: Path, sha, md5, size, expected, source) -> None:
    problems = _mismatches(asset, sha, md5, size, expected)
    if problems:
        part.unlink(missing_ok=True)
        raise ChecksumMismatchError(
            f"the download of asset {asset.name!r} from {asset.url} is corrupt or not the expected file: "
            f"{'; '.join(problems)} (SHA-256 from {source}). The bad file was deleted. Run the command again; "
            "if it fails the same way, the file on the server has changed: check the asset's page "
            + ("and, if you trust the new file, delete the lock file to re-pin it." if source.startswith("lock")
               else "and report it to the course maintainers.")
        )


def _write_lock(asset: Asset, lock: Path, sha: str) -> None:
    write_text_atomic(lock, f"{sha}  {asset.filename}\n")
    print(
        f"NOTICE: asset {asset.name!r} has no published SHA-256; recorded this copy's hash {sha} in {lock}. "
        "Later uses are verified against it.",
        file=sys.stderr,
    )


# ----------------------------------------------------------------------------- extraction


def extract(archive: str | os.PathLike, target_dir: str | os.PathLike) -> list[Path]:
    """Unpack a .tar(.gz/.bz2/.xz) or .zip archive into ``target_dir`` (like ``tar -C``), safely.

    Every member is checked before anything is written; the archive is unpacked into a temporary
    folder inside ``target_dir`` and each top-level entry is then moved into place, replacing an
    older one of the same name. A marker file records the completed extraction. Returns the
    final paths of the archive's files and links.
    """
    archive, target = Path(archive), Path(target_dir)
    if not archive.is_file():
        raise FileNotFoundError(f"archive {archive} does not exist")
    target.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{archive.name}.", suffix=".part", dir=target))
    try:
        if zipfile.is_zipfile(archive):
            members = _extract_zip(archive, tmp)
        elif tarfile.is_tarfile(archive):
            members = _extract_tar(archive, tmp)
        else:
            raise UnsafeArchiveError(f"{archive} is neither a tar nor a zip archive")
        _check_links_stay_inside(tmp, archive)
        tops = sorted({PurePosixPath(m).parts[0] for m in members})
        for top in tops:
            _replace(tmp / top, target / top)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    files = sorted(m for m in members if not (target / m).is_dir() or (target / m).is_symlink())
    write_json_atomic(marker_path(archive, target), {"archive": archive.name, "archive_size": archive.stat().st_size,
                                                     "files": files})
    return [target / m for m in files]


def marker_path(archive: str | os.PathLike, target_dir: str | os.PathLike) -> Path:
    return Path(target_dir) / f".{Path(archive).name}.extracted.json"


def extraction_complete(archive_name: str, target_dir: str | os.PathLike) -> bool:
    """Whether a marker says ``archive_name`` was unpacked into ``target_dir`` and its files are all there."""
    marker = marker_path(archive_name, target_dir)
    if not marker.is_file():
        return False
    try:
        files = json.loads(marker.read_text(encoding="utf-8"))["files"]
    except (ValueError, KeyError):
        return False
    return all(os.path.lexists(Path(target_dir) / f) for f in files)


def _member_path(name: str, archive: Path) -> str:
    """The member's normalised relative path, or an error naming it."""
    raw = name.replace("\\", "/")
    if raw.startswith("/") or re.match(r"^[A-Za-z]:", raw):
        raise UnsafeArchiveError(f"{archive}: member {name!r} has an absolute path; refusing to extract")
    parts = [p for p in raw.split("/") if p not in ("", ".")]
    if ".." in parts:
        raise UnsafeArchiveError(f"{archive}: member {name!r} contains '..'; refusing to extract")
    if not parts:
        return ""
    return "/".join(parts)


def _link_target_inside(member: str, link: str, *, relative_to_member: bool) -> bool:
    if link.startswith("/") or re.match(r"^[A-Za-z]:", link):
        return False
    base = posixpath.dirname(member) if relative_to_member else ""
    resolved = posixpath.normpath(posixpath.join(base, link.replace("\\", "/")))
    return resolved != ".." and not resolved.startswith("../")


def _check_no_write_through_links(members: list[str], links: set[str], archive: Path) -> None:
    # A member below a link would be written wherever the link points (even if that link was
    # judged safe on its own, chains of links can escape), so such layouts are refused.
    for m in members:
        parts = PurePosixPath(m).parts
        for i in range(1, len(parts)):
            if "/".join(parts[:i]) in links:
                raise UnsafeArchiveError(
                    f"{archive}: member {m!r} lies below the link {'/'.join(parts[:i])!r}; refusing to extract"
                )


def _extract_tar(archive: Path, dest: Path) -> list[str]:
    with tarfile.open(archive) as tar:
        infos = tar.getmembers()
        names, links = [], set()
        for info in infos:
            rel = _member_path(info.name, archive)
            if info.isdev() or not (info.isfile() or info.isdir() or info.issym() or info.islnk()):
                raise UnsafeArchiveError(
                    f"{archive}: member {info.name!r} is a device file or FIFO; refusing to extract"
                )
            if info.issym() or info.islnk():
                inside = _link_target_inside(rel, info.linkname, relative_to_member=info.issym())
                if not inside:
                    kind = "symlink" if info.issym() else "hard link"
                    raise UnsafeArchiveError(
                        f"{archive}: member {info.name!r} is a {kind} to {info.linkname!r}, outside the "
                        "target folder; refusing to extract"
                    )
                if info.islnk():  # tarfile finds a hard link's source by member name
                    info.linkname = _member_path(info.linkname, archive)
                links.add(rel)
            if rel:
                names.append(rel)
                info.name = rel
        _check_no_write_through_links(names, links, archive)
        # Python's own "data" filter (3.11.4+) checks again with the links already on disk,
        # which catches chains of links that each looked harmless on their own.
        data_filter = getattr(tarfile, "data_filter", None)
        kwargs = {"filter": data_filter} if data_filter else {}
        try:
            tar.extractall(dest, members=[i for i in infos if i.name], **kwargs)
        except getattr(tarfile, "FilterError", ()) as exc:
            raise UnsafeArchiveError(
                f"{archive}: member {exc.tarinfo.name!r} was refused ({exc}); refusing to extract"
            ) from exc
    return sorted(set(names))


def _extract_zip(archive: Path, dest: Path) -> list[str]:
    with zipfile.ZipFile(archive) as zf:
        infos = zf.infolist()
        names, links, plan = [], set(), []
        for info in infos:
            rel = _member_path(info.filename, archive)
            mode = info.external_attr >> 16
            if mode and (stat.S_ISCHR(mode) or stat.S_ISBLK(mode) or stat.S_ISFIFO(mode) or stat.S_ISSOCK(mode)):
                raise UnsafeArchiveError(f"{archive}: member {info.filename!r} is a device file or FIFO; refusing to extract")
            is_link = bool(mode) and stat.S_ISLNK(mode)
            if is_link:
                target = zf.read(info).decode("utf-8")
                if not _link_target_inside(rel, target, relative_to_member=True):
                    raise UnsafeArchiveError(
                        f"{archive}: member {info.filename!r} is a symlink to {target!r}, outside the target "
                        "folder; refusing to extract"
                    )
                links.add(rel)
                plan.append((info, rel, target))
            elif rel:
                plan.append((info, rel, None))
            if rel:
                names.append(rel)
        _check_no_write_through_links(names, links, archive)
        for info, rel, link_target in plan:
            out = dest / rel
            if link_target is not None:
                out.parent.mkdir(parents=True, exist_ok=True)
                os.symlink(link_target, out)
            elif info.is_dir():
                out.mkdir(parents=True, exist_ok=True)
            else:
                out.parent.mkdir(parents=True, exist_ok=True)
                with zf.open(info) as src, open(out, "wb") as dst:
                    shutil.copyfileobj(src, dst, CHUNK_SIZE)
    return sorted(set(names))


def _check_links_stay_inside(root: Path, archive: Path) -> None:
    real_root = os.path.realpath(root)
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            p = os.path.join(dirpath, name)
            if os.path.islink(p):
                real = os.path.realpath(p)
                if os.path.commonpath([real_root, real]) != real_root:
                    rel = os.path.relpath(p, root)
                    raise UnsafeArchiveError(f"{archive}: member {rel!r} resolves to {real}, outside the target folder")


def _replace(src: Path, dst: Path) -> None:
    """Move ``src`` onto ``dst``; an existing ``dst`` is set aside first and removed afterwards."""
    if os.path.lexists(dst):
        old = dst.with_name(f".{dst.name}.old")
        if old.is_dir() and not old.is_symlink():
            shutil.rmtree(old)
        elif os.path.lexists(old):
            old.unlink()
        os.replace(dst, old)
        os.replace(src, dst)
        if old.is_dir() and not old.is_symlink():
            shutil.rmtree(old, ignore_errors=True)
        else:
            old.unlink(missing_ok=True)
    else:
        os.replace(src, dst)


def fetch_and_extract(
    name_or_asset: str | Asset,
    cache_dir: str | os.PathLike | None = None,
    *,
    progress: bool = True,
    force: bool = False,
    session=None,
) -> list[Path]:
    """Fetch the asset and unpack it into its ``extract_to`` folder; returns the paths it provides.

    A completed earlier extraction (marker present, its files all there) is kept without
    touching the network, even when the archive itself has since been deleted.
    """
    asset = get_asset(name_or_asset)
    target = asset.target_dir()
    if target is None:
        raise AssetError(f"asset {asset.name!r} is not an archive (no extract_to); use fetch()")
    if not asset.downloadable:
        if asset.is_present():
            return asset.provided_paths()
        raise ManualDownloadRequired(manual_instructions(asset))
    if not force and extraction_complete(asset.filename, target) and asset.is_present():
        return asset.provided_paths()
    archive = fetch(asset, cache_dir, progress=progress, force=force, session=session)
    extract(archive, target)
    missing = [p for p in asset.provided_paths() if not p.exists()]
    if missing:
        raise AssetError(
            f"asset {asset.name!r}: {archive} was unpacked into {target} but these expected paths are "
            f"missing: {', '.join(map(str, missing))}"
        )
    return asset.provided_paths()


def manual_instructions(asset: Asset) -> str:
    target = asset.target_dir()
    steps = (asset.manual_steps or "").format(target=target)
    return (
        f"asset {asset.name!r} ({asset.description}) cannot be downloaded automatically. {asset.terms}\n{steps}"
    ).rstrip()


# ----------------------------------------------------------------------------- command line


def _human_size(n: int | None) -> str:
    if n is None:
        return "unknown"
    size = float(n)
    for unit in ("B", "KB", "MB", "GB"):
        if size < 1024 or unit == "GB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    return f"{n} B"


def status_rows(cache_dir: str | os.PathLike | None = None) -> list[dict]:
    """One row per asset: name, size, where it goes, whether it is there."""
    rows = []
    for asset in REGISTRY.values():
        final, part, _ = cache_paths(asset, cache_dir)
        if asset.is_present():
            state = "present"
        elif not asset.downloadable:
            state = "missing (manual download)"
        elif final.is_file():
            state = "downloaded, not unpacked"
        elif part.is_file():
            state = f"partial ({_human_size(part.stat().st_size)})"
        else:
            state = "missing"
        sha, source = expected_sha256(asset, cache_dir)
        rows.append({
            "name": asset.name,
            "size": _human_size(asset.size),
            "where": _where(asset, final),
            "state": state,
            "sha256": "pinned" if asset.sha256 else ("locked" if sha else "not pinned"),
        })
    return rows


def _where(asset: Asset, final: Path) -> str:
    provided = asset.provided_paths()
    if len(provided) > 1:
        return os.path.commonpath([str(p) for p in provided])
    return str(provided[0] if provided else final)


def _cmd_list(args) -> int:
    rows = status_rows(args.cache_dir)
    cols = ("name", "size", "sha256", "state", "where")
    widths = {c: max(len(c), *(len(r[c]) for r in rows)) for c in cols}
    print("  ".join(c.ljust(widths[c]) for c in cols))
    for r in rows:
        print("  ".join(r[c].ljust(widths[c]) for c in cols))
    return 0


def _cmd_fetch(args) -> int:
    asset = get_asset(args.name)
    try:
        if asset.extract_to and asset.downloadable:
            got = fetch_and_extract(asset, args.cache_dir, force=args.force)
        else:
            got = [fetch(asset, args.cache_dir, force=args.force)]
    except ManualDownloadRequired as exc:
        print(exc, file=sys.stderr)
        return 2
    except AssetError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    for p in got:
        print(p)
    return 0


def _cmd_verify(args) -> int:
    asset = get_asset(args.name)
    final, _, lock = cache_paths(asset, args.cache_dir)
    ok = True
    if asset.downloadable:
        if final.is_file():
            expected, source = expected_sha256(asset, args.cache_dir)
            sha, md5, size = file_digests(final)
            problems = _mismatches(asset, sha, md5, size, expected)
            if problems:
                ok = False
                print(f"FAILED {final}: {'; '.join(problems)} (SHA-256 from {source})")
            else:
                print(f"OK {final}: SHA-256 {sha} ({size} bytes; checked against {source}"
                      + (f", MD5 against {asset.md5_source}" if asset.md5 else "") + ")")
                if expected is None:
                    _write_lock(asset, lock, sha)
        elif asset.is_present():
            print(f"{final} is not in the cache (already unpacked; nothing to verify)")
        else:
            ok = False
            print(f"MISSING {final}. {manual_download_help(asset, args.cache_dir)}")
    for p in asset.provided_paths():
        there = p.exists()
        ok = ok and (there or (asset.downloadable and final.is_file()))
        print(f"{'present' if there else 'missing'}  {p}")
    if not asset.downloadable and not asset.is_present():
        print(manual_instructions(asset))
    return 0 if ok else 1


def main(argv: Iterable[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m helpers.assets", description=__doc__.split("\n\n")[0])
    parser.add_argument("--cache-dir", default=None, help="where downloads are kept (default: weights/downloads)")
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("list", help="every asset: size, where it goes, whether it is there").set_defaults(run=_cmd_list)
    p = sub.add_parser("fetch", help="download (resuming), verify and unpack an asset")
    p.add_argument("name", choices=sorted(REGISTRY))
    p.add_argument("--force", action="store_true", help="download again even if a verified copy is cached")
    p.set_defaults(run=_cmd_fetch)
    p = sub.add_parser("verify", help="check the cached file's checksum and the unpacked files")
    p.add_argument("name", choices=sorted(REGISTRY))
    p.set_defaults(run=_cmd_verify)
    args = parser.parse_args(list(argv) if argv is not None else None)
    return args.run(args)


if __name__ == "__main__":
    sys.exit(main())
