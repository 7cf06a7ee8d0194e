"""helpers.assets against a local HTTP server on 127.0.0.1 that serves fixtures made here.

The server can be told, per path, to cut the connection after N bytes (once), to answer with
an HTTP error, or to ignore Range requests; it logs every request so tests can count them.
"""
from __future__ import annotations

import dataclasses
import hashlib
import io
import random
import re
import socket
import stat
import tarfile
import threading
import zipfile
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from helpers.course import assets, paths
from helpers.course.assets import ChecksumMismatchError, DownloadError, UnsafeArchiveError

TARBALL_PATH = "/vgg_face_caffe.tar.gz"
CAFFE_FILES = ("VGG_FACE_deploy.prototxt", "VGG_FACE.caffemodel", "names.txt", "ak.png")


# ----------------------------------------------------------------------------- local server


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.0"  # the server closes after each answer: a cut is a plain EOF

    def log_message(self, *args):  # keep pytest output clean
        pass

    def do_GET(self):
        fixture = self.server.fixture
        range_header = self.headers.get("Range")
        fixture.requests.append((self.path, range_header))
        behaviour = fixture.behaviour.setdefault(self.path, {})
        if "status" in behaviour:
            self.send_error(behaviour["status"])
            return
        data = fixture.files.get(self.path)
        if data is None:
            self.send_error(404)
            return
        start = 0
        if range_header and not behaviour.get("ignore_range"):
            start = int(re.fullmatch(r"bytes=(\d+)-", range_header).group(1))
            if start >= len(data):
                self.send_response(416)
                self.send_header("Content-Range", f"bytes */{len(data)}")
                self.send_header("Content-Length", "0")
                self.end_headers()
                return
            self.send_response(206)
            self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
        else:
            self.send_response(200)
        body = data[start:]
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        cut = behaviour.pop("cut_after", None)  # one-shot: the next request gets everything
        self.wfile.write(body if cut is None else body[:cut])
        self.wfile.flush()


class FixtureServer:
    def __init__(self):
        self.files: dict[str, bytes] = {}
        self.behaviour: dict[str, dict] = {}
        self.requests: list[tuple[str, str | None]] = []
        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
        self.httpd.fixture = self
        self.thread = threading.Thread(target=self.httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
        self.thread.start()

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.httpd.server_address[1]}{path}"

    def close(self):
        self.httpd.shutdown()
        self.httpd.server_close()
        self.thread.join(timeout=5)


@pytest.fixture
def server():
    srv = FixtureServer()
    yield srv
    srv.close()


@pytest.fixture
def home(tmp_path, monkeypatch):
    """A private COURSE_HOME, so weights/ and data/ resolve under tmp_path."""
    monkeypatch.setenv(paths.ENV_HOME, str(tmp_path / "home"))
    return tmp_path / "home"


def make_tarball() -> tuple[bytes, dict[str, bytes]]:
    """A small tar.gz with the official release's layout; the caffemodel is incompressible."""
    rng = random.Random(0)
    contents = {
        "VGG_FACE_deploy.prototxt": b'name: "VGG_FACE_16_layers"\ninput: "data"\n',
        "VGG_FACE.caffemodel": bytes(rng.getrandbits(8) for _ in range(150_000)),
        "names.txt": b"A.J._Buckley\nA.R._Rahman\nAamir_Khan\n",
        "ak.png": b"\x89PNG\r\n\x1a\nnot really a png",
    }
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        d = tarfile.TarInfo("vgg_face_caffe")
        d.type, d.mode = tarfile.DIRTYPE, 0o755
        tar.addfile(d)
        for name, data in contents.items():
            info = tarfile.TarInfo(f"vgg_face_caffe/{name}")
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return buf.getvalue(), contents


@pytest.fixture(scope="module")
def tarball():
    return make_tarball()


def local_asset(server, data: bytes, **changes) -> assets.Asset:
    server.files[TARBALL_PATH] = data
    fields = {"url": server.url(TARBALL_PATH), "md5": hashlib.md5(data).hexdigest(), "md5_source": "the test"}
    fields.update(changes)
    return dataclasses.replace(assets.REGISTRY["vgg_face_caffe"], **fields)


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


# ----------------------------------------------------------------------------- registry


def test_vgg_face_entry_unpacks_exactly_where_full_mode_looks(home):
    asset = assets.REGISTRY["vgg_face_caffe"]
    assert asset.url == "https://www.robots.ox.ac.uk/~vgg/software/vgg_face/src/vgg_face_caffe.tar.gz"
    assert asset.filename == "vgg_face_caffe.tar.gz"
    full = paths.assets_for("full")
    assert sorted(asset.provided_paths()) == sorted([full.prototxt, full.caffemodel, full.names, full.sample_image])


def test_adience_has_no_url_and_says_where_to_put_it(home):
    asset = assets.REGISTRY["adience"]
    assert asset.url is None
    full = paths.assets_for("full")
    assert set(asset.provided_paths()) == {*full.fold_files, full.dataset_root / "aligned"}
    with pytest.raises(assets.ManualDownloadRequired, match=re.escape(str(full.dataset_root))):
        assets.fetch("adience")
    with pytest.raises(assets.ManualDownloadRequired, match="Adience-data.html"):
        assets.fetch_and_extract("adience")


def test_bad_registry_values_are_rejected():
    base = assets.REGISTRY["vgg_face_caffe"]
    with pytest.raises(ValueError, match="sha256"):
        dataclasses.replace(base, sha256="abc")
    with pytest.raises(ValueError, match="extract_to"):
        dataclasses.replace(base, extract_to="elsewhere")
    with pytest.raises(KeyError, match="vgg_face_caffe"):
        assets.get_asset("no_such_asset")


# ----------------------------------------------------------------------------- download


def test_download_then_cache_hit_makes_no_request(server, tmp_path, tarball):
    data, _ = tarball
    asset = local_asset(server, data, sha256=sha256(data), size=len(data))
    got = assets.fetch(asset, tmp_path, progress=False)
    assert got == tmp_path / "vgg_face_caffe.tar.gz"
    assert got.read_bytes() == data
    assert not (tmp_path / "vgg_face_caffe.tar.gz.part").exists()
    assert len(server.requests) == 1
    assert assets.fetch(asset, tmp_path, progress=False) == got
    assert len(server.requests) == 1


def test_interrupted_download_resumes_with_range_and_is_byte_identical(server, tmp_path, tarball):
    data, _ = tarball
    asset = local_asset(server, data, sha256=sha256(data))
    server.behaviour[TARBALL_PATH] = {"cut_after": 40_000}
    with pytest.raises(DownloadError, match="resumes") as err:
        assets.fetch(asset, tmp_path, progress=False, retries=0)
    assert asset.url in str(err.value)
    part = tmp_path / "vgg_face_caffe.tar.gz.part"
    assert part.stat().st_size == 40_000
    assert not (tmp_path / "vgg_face_caffe.tar.gz").exists()

    got = assets.fetch(asset, tmp_path, progress=False)
    assert server.requests[-1] == (TARBALL_PATH, "bytes=40000-")
    assert got.read_bytes() == data
    assert not part.exists()


def test_connection_cut_is_resumed_within_one_call(server, tmp_path, tarball):
    data, _ = tarball
    asset = local_asset(server, data, sha256=sha256(data))
    server.behaviour[TARBALL_PATH] = {"cut_after": 25_000}
    got = assets.fetch(asset, tmp_path, progress=False, retries=1)
    assert [r for _, r in server.requests] == [None, "bytes=25000-"]
    assert got.read_bytes() == data


def test_server_ignoring_range_restarts_cleanly(server, tmp_path, tarball):
    data, _ = tarball
    asset = local_asset(server, data, sha256=sha256(data))
    part = tmp_path / "vgg_face_caffe.tar.gz.part"
    part.write_bytes(data[:30_000])
    server.behaviour[TARBALL_PATH] = {"ignore_range": True}
    got = assets.fetch(asset, tmp_path, progress=False)
    assert server.requests == [(TARBALL_PATH, "bytes=30000-")]  # asked to resume, got a 200
    assert got.read_bytes() == data  # not the prefix twice


def test_complete_part_answered_416_is_verified_not_refetched(server, tmp_path, tarball):
    data, _ = tarball
    asset = local_asset(server, data, sha256=sha256(data))
    (tmp_path / "vgg_face_caffe.tar.gz.part").write_bytes(data)
    got = assets.fetch(asset, tmp_path, progress=False)
    assert server.requests == [(TARBALL_PATH, f"bytes={len(data)}-")]
    assert got.read_bytes() == data


def test_part_longer_than_remote_file_restarts(server, tmp_path, tarball):
    data, _ = tarball
    asset = local_asset(server, data, sha256=sha256(data))
    (tmp_path / "vgg_face_caffe.tar.gz.part").write_bytes(data + b"garbage")
    got = assets.fetch(asset, tmp_path, progress=False)
    assert [r for _, r in server.requests] == [f"bytes={len(data) + 7}-", None]
    assert got.read_bytes() == data


@pytest.mark.parametrize("status", [404, 500])
def test_http_error_raises_and_leaves_nothing(server, tmp_path, tarball, status):
    import requests

    data, _ = tarball
    asset = local_asset(server, data)
    server.behaviour[TARBALL_PATH] = {"status": status}
    with pytest.raises(DownloadError, match=f"HTTP {status}") as err:
        assets.fetch(asset, tmp_path, progress=False)
    assert isinstance(err.value.__cause__, requests.HTTPError)  # from raise_for_status()
    assert "by hand" in str(err.value) and asset.url in str(err.value)
    assert not (tmp_path / "vgg_face_caffe.tar.gz").exists()
    assert not (tmp_path / "vgg_face_caffe.tar.gz.sha256").exists()


def test_no_network_gives_url_and_manual_steps(tmp_path, tarball):
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    asset = dataclasses.replace(assets.REGISTRY["vgg_face_caffe"], url=f"http://127.0.0.1:{port}/x.tar.gz")
    with pytest.raises(DownloadError) as err:
        assets.fetch(asset, tmp_path, progress=False, retries=0)
    message = str(err.value)
    assert asset.url in message and "by hand" in message and str(tmp_path / asset.filename) in message


def test_checksum_mismatch_removes_the_file_and_names_both_hashes(server, tmp_path, tarball):
    data, _ = tarball
    wrong = "0" * 64
    asset = local_asset(server, data, sha256=wrong)
    with pytest.raises(ChecksumMismatchError) as err:
        assets.fetch(asset, tmp_path, progress=False)
    message = str(err.value)
    assert "vgg_face_caffe" in message and wrong in message and sha256(data) in message
    assert "again" in message
    assert list(tmp_path.iterdir()) == []


def test_third_party_md5_is_checked_even_when_unpinned(server, tmp_path, tarball):
    data, _ = tarball
    asset = local_asset(server, data, sha256=None, md5="f" * 32)
    with pytest.raises(ChecksumMismatchError, match="MD5 expected f{32}"):
        assets.fetch(asset, tmp_path, progress=False)
    assert list(tmp_path.iterdir()) == []  # no file, and no lock pinning a bad download


def test_unpinned_hash_is_recorded_then_enforced(server, tmp_path, tarball, capsys):
    data, _ = tarball
    asset = local_asset(server, data, sha256=None, md5=None)
    got = assets.fetch(asset, tmp_path, progress=False)
    lock = tmp_path / "vgg_face_caffe.tar.gz.sha256"
    assert lock.read_text().split()[0] == sha256(data)
    assert "NOTICE" in capsys.readouterr().err
    assert assets.expected_sha256(asset, tmp_path) == (sha256(data), f"lock file {lock}")

    # The server now serves different bytes: a forced re-download is refused by the lock.
    server.files[TARBALL_PATH] = data[:-1] + bytes([data[-1] ^ 1])
    with pytest.raises(ChecksumMismatchError, match=sha256(data)):
        assets.fetch(asset, tmp_path, progress=False, force=True)
    assert not got.exists() and lock.exists()

    # A cached file that was altered is caught without any request.
    got.write_bytes(b"tampered")
    n = len(server.requests)
    with pytest.raises(ChecksumMismatchError, match="--force"):
        assets.fetch(asset, tmp_path, progress=False)
    assert len(server.requests) == n


# ----------------------------------------------------------------------------- extraction


def test_fetch_and_extract_lands_in_full_mode_paths_and_skips_reruns(server, home, tarball):
    data, contents = tarball
    asset = local_asset(server, data, sha256=sha256(data))
    got = assets.fetch_and_extract(asset, progress=False)
    full = paths.assets_for("full")
    assert sorted(got) == sorted([full.prototxt, full.caffemodel, full.names, full.sample_image])
    for name, payload in contents.items():
        assert (full.caffe_dir / name).read_bytes() == payload
    assert not [p for p in paths.weights_dir().iterdir() if p.name.endswith(".part")]

    # The marker lets a rerun skip everything, even once the 0.5 GB tarball has been deleted.
    (assets.default_cache_dir() / asset.filename).unlink()
    n = len(server.requests)
    assert sorted(assets.fetch_and_extract(asset, progress=False)) == sorted(got)
    assert len(server.requests) == n

    # A missing unpacked file invalidates the marker: it is downloaded and unpacked again.
    full.names.unlink()
    assets.fetch_and_extract(asset, progress=False)
    assert full.names.read_bytes() == contents["names.txt"]
    assert len(server.requests) == n + 1


def test_extract_replaces_an_older_folder(tmp_path, tarball):
    data, contents = tarball
    archive = tmp_path / "a.tar.gz"
    archive.write_bytes(data)
    target = tmp_path / "weights"
    (target / "vgg_face_caffe").mkdir(parents=True)
    (target / "vgg_face_caffe" / "stale.txt").write_text("old")
    (target / "keep_me.txt").write_text("unrelated")
    files = assets.extract(archive, target)
    assert sorted(p.name for p in files) == sorted(contents)
    assert not (target / "vgg_face_caffe" / "stale.txt").exists()
    assert (target / "keep_me.txt").read_text() == "unrelated"
    assert assets.extraction_complete("a.tar.gz", target)


def _tar(path: Path, members: list[tuple[tarfile.TarInfo, bytes | None]]) -> Path:
    with tarfile.open(path, "w:gz") as tar:
        for info, payload in members:
            if payload is not None:
                info.size = len(payload)
            tar.addfile(info, io.BytesIO(payload) if payload is not None else None)
    return path


def _file(name: str, payload: bytes = b"x") -> tuple[tarfile.TarInfo, bytes]:
    return tarfile.TarInfo(name), payload


def _link(name: str, target: str, kind=tarfile.SYMTYPE) -> tuple[tarfile.TarInfo, None]:
    info = tarfile.TarInfo(name)
    info.type, info.linkname = kind, target
    return info, None


EVIL_TARS = {
    "absolute path": ([_file("/tmp/evil_assets_test.txt")], "/tmp/evil_assets_test.txt"),
    "dot-dot": ([_file("vgg_face_caffe/../../outside/evil.txt")], "vgg_face_caffe/../../outside/evil.txt"),
    "symlink out": ([_link("vgg_face_caffe/escape", "../../outside")], "vgg_face_caffe/escape"),
    "absolute symlink": ([_link("escape", "/etc")], "escape"),
    "hard link out": ([_link("hard", "../outside/secret", tarfile.LNKTYPE)], "hard"),
    "write through link": ([_link("inner", "sub"), _file("inner/f.txt")], "inner/f.txt"),
    # Each link looks inside on its own; followed in turn they leave the target.
    "chained links": ([_link("d/b", "."), _link("c", "d/b/../..")], "c"),
}


@pytest.mark.parametrize("case", sorted(EVIL_TARS))
def test_extract_refuses_evil_tar_members(tmp_path, case):
    members, evil_member = EVIL_TARS[case]
    archive = _tar(tmp_path / "evil.tar.gz", members)
    target = tmp_path / "target"
    with pytest.raises(UnsafeArchiveError) as err:
        assets.extract(archive, target)
    assert repr(evil_member) in str(err.value) or evil_member in str(err.value)
    assert not (tmp_path / "outside").exists() and not Path("/tmp/evil_assets_test.txt").exists()
    assert list(target.iterdir()) == []  # no temporary folder, no marker


def test_extract_refuses_device_files(tmp_path):
    info = tarfile.TarInfo("dev/null_copy")
    info.type = tarfile.CHRTYPE
    archive = _tar(tmp_path / "dev.tar.gz", [(info, None)])
    with pytest.raises(UnsafeArchiveError, match="dev/null_copy.*device"):
        assets.extract(archive, tmp_path / "target")


def test_extract_keeps_links_that_stay_inside(tmp_path):
    archive = _tar(tmp_path / "ok.tar.gz", [_file("pkg/real.txt", b"hello"), _link("pkg/alias.txt", "real.txt")])
    files = assets.extract(archive, tmp_path / "target")
    alias = tmp_path / "target" / "pkg" / "alias.txt"
    assert alias in files and alias.is_symlink() and alias.read_bytes() == b"hello"


def _zip(path: Path, members: list[tuple[str, bytes, int | None]]) -> Path:
    with zipfile.ZipFile(path, "w") as zf:
        for name, payload, mode in members:
            info = zipfile.ZipInfo(name)
            if mode is not None:
                info.external_attr = mode << 16
            zf.writestr(info, payload)
    return path


@pytest.mark.parametrize("name,payload,mode", [
    ("/abs/evil.txt", b"x", None),
    ("a/../../evil.txt", b"x", None),
    ("escape", b"../../outside", stat.S_IFLNK | 0o777),
])
def test_extract_refuses_evil_zip_members(tmp_path, name, payload, mode):
    archive = _zip(tmp_path / "evil.zip", [(name, payload, mode)])
    target = tmp_path / "target"
    with pytest.raises(UnsafeArchiveError, match=re.escape(repr(name))):
        assets.extract(archive, target)
    assert list(target.iterdir()) == [] and not (tmp_path / "outside").exists()


def test_extract_zip(tmp_path):
    archive = _zip(tmp_path / "ok.zip", [("pkg/a.txt", b"A", None), ("pkg/sub/b.txt", b"B", None)])
    files = assets.extract(archive, tmp_path / "t")
    assert {p.relative_to(tmp_path / "t").as_posix(): p.read_bytes() for p in files} == {
        "pkg/a.txt": b"A", "pkg/sub/b.txt": b"B"}


# ----------------------------------------------------------------------------- command line


def test_cli_list_fetch_verify(server, home, tarball, monkeypatch, capsys):
    data, _ = tarball
    monkeypatch.setitem(assets.REGISTRY, "vgg_face_caffe", local_asset(server, data, sha256=None))

    assert assets.main(["list"]) == 0
    out = capsys.readouterr().out
    row = next(line for line in out.splitlines() if line.startswith("vgg_face_caffe"))
    assert "missing" in row and "not pinned" in row and str(home / "weights" / "vgg_face_caffe") in row
    assert "adience" in out and "manual" in out

    assert assets.main(["verify", "vgg_face_caffe"]) == 1
    assert "MISSING" in capsys.readouterr().out

    assert assets.main(["fetch", "vgg_face_caffe"]) == 0
    captured = capsys.readouterr()
    assert "NOTICE" in captured.err and "no published SHA-256" in captured.err
    assert str(paths.assets_for("full").caffemodel) in captured.out

    assert assets.main(["verify", "vgg_face_caffe"]) == 0
    assert "OK" in capsys.readouterr().out
    assert assets.main(["list"]) == 0
    row = next(line for line in capsys.readouterr().out.splitlines() if line.startswith("vgg_face_caffe"))
    assert "present" in row and "locked" in row

    (assets.default_cache_dir() / "vgg_face_caffe.tar.gz").write_bytes(b"corrupt")
    assert assets.main(["verify", "vgg_face_caffe"]) == 1
    assert "FAILED" in capsys.readouterr().out


def test_cli_fetch_reports_failure_with_manual_steps(server, home, tarball, monkeypatch, capsys):
    data, _ = tarball
    asset = local_asset(server, data)
    server.behaviour[TARBALL_PATH] = {"status": 404}
    monkeypatch.setitem(assets.REGISTRY, "vgg_face_caffe", asset)
    assert assets.main(["fetch", "vgg_face_caffe"]) == 1
    err = capsys.readouterr().err
    assert asset.url in err and "by hand" in err and str(assets.default_cache_dir() / asset.filename) in err
    assert assets.main(["fetch", "adience"]) == 2
    assert "Adience-data.html" in capsys.readouterr().err


# ----------------------------------------------------------------------------- Levi & Hassner's release


def test_levi_hassner_entry_downloads_unpacks_and_is_found(server, home):
    from helpers import levi_hassner

    entry = assets.REGISTRY["levi_hassner_gender"]
    assert entry.url == ("https://www.openu.ac.il/home/hassner/projects/cnn_agegender/"
                         "cnn_age_gender_models_and_data.0.0.2.zip")
    assert entry.sha256 is None and entry.extract_to == "weights/levi_hassner"
    assert [p.name for p in entry.provided_paths()] == list(levi_hassner.FILES)
    # A zip with the release's layout, served locally: downloaded, pinned, unpacked where
    # helpers.levi_hassner looks.
    contents = {"deploy_gender.prototxt": b'name: "CaffeNet"\n', "gender_net.caffemodel": bytes(range(256)) * 400,
                "mean.binaryproto": b"\x08\x01" * 50, "deploy_age.prototxt": b'name: "CaffeNet"\n'}
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        for name, payload in contents.items():
            zf.writestr(f"cnn_age_gender_models_and_data.0.0.2/{name}", payload)
    server.files["/lh.zip"] = buf.getvalue()
    local = dataclasses.replace(entry, url=server.url("/lh.zip"))
    got = assets.fetch_and_extract(local, progress=False)
    assert got == entry.provided_paths()
    found = levi_hassner.release_files()
    assert {n: p.read_bytes() for n, p in found.items()} == {n: contents[n] for n in levi_hassner.FILES}
    assert (assets.default_cache_dir() / f"{entry.filename}.sha256").read_text().split()[0] == sha256(buf.getvalue())
