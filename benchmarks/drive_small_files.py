"""Many small files through a FUSE file system vs one archive: why the course unpacks Adience locally.

On Colab, Google Drive is a FUSE file system whose every file open can cost a network round trip.
Adience is 19,487 aligned JPEGs (about 60 KB each). This benchmark makes N such files, mounts a
pass-through FUSE file system over them (written with fusepy; each open may wait ``--latency-ms``
to model a remote round trip), and measures side by side, in one run:

1. reading every file from the local disk;
2. reading every file through FUSE (no added latency: the cost of a user-space file system);
3. reading every file through FUSE with ``--latency-ms`` per open (the model of Drive);
4. reading ONE tar archive of the same files through that slow FUSE and unpacking it locally
   (what ``helpers.course.adience.prepare`` does), then reading the unpacked files.

Rows 1, 2 and 4 are measurements; row 3's latency is an assumption (Drive's per-file cost cannot
be measured here: no network). Needs Linux with /dev/fuse, ``apt-get install libfuse2`` and
``pip install fusepy`` (not course requirements: only this benchmark uses them).

    python benchmarks/drive_small_files.py --files 3000 --latency-ms 20
"""
from __future__ import annotations

import argparse
import errno
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
import threading
import time
from pathlib import Path

ADIENCE_FACES = 19_487


def make_faces(root: Path, n: int, size: int, seed: int = 0) -> list[Path]:
    """n files of ``size`` random bytes in Adience's two-level layout (aligned/<user>/<face>.jpg)."""
    import random

    rng = random.Random(seed)
    files = []
    for i in range(n):
        p = root / "aligned" / f"user{i // 100:04d}" / f"landmark_aligned_face.{i}.img.jpg"
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(rng.randbytes(size))
        files.append(p)
    return files


def read_all(files: list[Path]) -> tuple[float, int]:
    t0 = time.perf_counter()
    total = 0
    for p in files:
        with open(p, "rb") as f:
            total += len(f.read())
    return time.perf_counter() - t0, total


def drop_page_cache() -> None:
    try:
        os.sync()
        Path("/proc/sys/vm/drop_caches").write_text("3\n")
    except OSError:
        pass  # not root, or not Linux: the local reads are then from the page cache (said in the output)


def mount_passthrough(source: Path, mountpoint: Path, latency_s: float):
    """Mount a read-only pass-through FUSE file system of ``source`` at ``mountpoint`` (a thread)."""
    from fuse import FUSE, FuseOSError, Operations

    class SlowPassthrough(Operations):
        def _full(self, path):
            return os.path.join(source, path.lstrip("/"))

        def getattr(self, path, fh=None):
            try:
                st = os.lstat(self._full(path))
            except OSError as exc:
                raise FuseOSError(exc.errno) from exc
            return {k: getattr(st, k) for k in ("st_atime", "st_ctime", "st_gid", "st_mode", "st_mtime",
                                                 "st_nlink", "st_size", "st_uid")}

        def readdir(self, path, fh):
            return [".", "..", *os.listdir(self._full(path))]

        def open(self, path, flags):
            if flags & (os.O_WRONLY | os.O_RDWR):
                raise FuseOSError(errno.EROFS)
            if latency_s:
                time.sleep(latency_s)  # the modelled round trip of a remote file system
            return os.open(self._full(path), os.O_RDONLY)

        def read(self, path, size, offset, fh):
            return os.pread(fh, size, offset)

        def release(self, path, fh):
            os.close(fh)

    mountpoint.mkdir(parents=True, exist_ok=True)
    thread = threading.Thread(target=FUSE, args=(SlowPassthrough(), str(mountpoint)),
                              kwargs={"foreground": True, "ro": True, "nothreads": True}, daemon=True)
    thread.start()
    for _ in range(100):
        if os.path.ismount(mountpoint):
            return thread
        time.sleep(0.05)
    raise RuntimeError(f"the FUSE file system did not mount at {mountpoint}")


def unmount(mountpoint: Path) -> None:
    for tool in ("fusermount", "fusermount3"):
        if shutil.which(tool):
            subprocess.run([tool, "-u", str(mountpoint)], check=False)
            return
    subprocess.run(["umount", str(mountpoint)], check=False)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--files", type=int, default=3000, help="how many small files (Adience has 19,487)")
    parser.add_argument("--size-kb", type=int, default=60, help="bytes per file, in KB (Adience's aligned JPEGs: ~60)")
    parser.add_argument("--latency-ms", type=float, default=20.0, help="modelled round trip per file open")
    args = parser.parse_args(argv)
    try:
        import fuse  # noqa: F401
    except (ImportError, OSError) as exc:
        print(f"needs fusepy and libfuse2 (pip install fusepy; apt-get install libfuse2): {exc}", file=sys.stderr)
        return 2
    work = Path(tempfile.mkdtemp(prefix="drive_small_files."))
    try:
        local = work / "drive"
        files = make_faces(local, args.files, args.size_kb * 1024)
        rel = [p.relative_to(local) for p in files]
        archive = local / "aligned.tar"  # uncompressed: JPEGs do not compress, and the read is what counts
        with tarfile.open(archive, "w") as tar:
            tar.add(local / "aligned", arcname="aligned")
        rows = []
        drop_page_cache()
        secs, nbytes = read_all(files)
        rows.append(("local disk, file by file", secs))
        for latency in (0.0, args.latency_ms / 1000):
            point = work / f"fuse{latency}"
            mount_passthrough(local, point, latency)
            try:
                drop_page_cache()
                secs, got = read_all([point / r for r in rel])
                assert got == nbytes
                rows.append((f"FUSE, file by file, {latency * 1000:.0f} ms per open", secs))
                if latency:
                    out = work / "unpacked"
                    t0 = time.perf_counter()
                    with tarfile.open(point / "aligned.tar") as tar:
                        tar.extractall(out, filter="data") if hasattr(tarfile, "data_filter") else tar.extractall(out)
                    secs_unpacked, got = read_all([out / r for r in rel])
                    assert got == nbytes
                    rows.append((f"FUSE, one archive ({latency * 1000:.0f} ms per open), unpacked locally, then read",
                                 time.perf_counter() - t0))
            finally:
                unmount(point)
        mb = nbytes / 1e6
        print(f"{args.files:,} files of {args.size_kb} KB ({mb:.0f} MB); modelled latency {args.latency_ms:g} ms per open")
        base = rows[0][1]
        for name, secs in rows:
            print(f"  {name:<70} {secs:7.2f} s  {args.files / secs:8.0f} files/s  {secs / base:6.1f}x local")
        slow, archive_path = rows[2][1], rows[3][1]
        print(f"one archive instead of small files through the slow FUSE: {slow / archive_path:.1f}x faster")
        print(f"scaled to Adience's {ADIENCE_FACES:,} faces: file by file {slow * ADIENCE_FACES / args.files:.0f} s, "
              f"archive {archive_path * ADIENCE_FACES / args.files:.0f} s (the file-by-file figure at the modelled latency)")
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
