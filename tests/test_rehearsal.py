"""The rehearsal's own measurements: peak memory of a process tree, disk scaled to Adience's counts."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from helpers.course import rehearsal

LINUX = Path("/proc/self/status").is_file()


@pytest.mark.skipif(not LINUX, reason="RssAnon is read from Linux's /proc")
def test_peak_memory_sees_the_largest_process_under_the_one_started():
    # a parent that starts a child holding 300 MB for a moment, the parent itself small
    child = "import time; x = bytearray(300 * 2**20); x[::4096] = b'1' * len(x[::4096]); time.sleep(2.5)"
    code = f"import subprocess, sys; subprocess.run([sys.executable, '-c', {child!r}])"
    proc = subprocess.Popen([sys.executable, "-c", code])
    with rehearsal.PeakMemory(proc.pid, interval=0.2) as peak:
        proc.wait()
    assert 300 * 1024 <= peak.peak_kb < 600 * 1024
    assert rehearsal.rss_anon_kb(proc.pid) is None  # gone: nothing to read


def test_disk_parts_that_grow_with_the_faces_are_scaled_and_the_rest_kept(tmp_path):
    home, build = tmp_path / "home", tmp_path / "build"
    sizes = {home / "weights/vgg_face_caffe/VGG_FACE.caffemodel": 5000,
             home / "data/adience/aligned/u/a.jpg": 700, home / "data/adience/fold_0_data.txt": 300,
             build / "cache/features/fc7-x/rows-1.npy": 400, build / "models/head.keras": 2000,
             build / "results.json": 50}
    for path, n in sizes.items():
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"x" * n)
    parts = {p.name: p for p in rehearsal.disk_estimate(home, build, faces=10, target_faces=100)}
    assert parts["VGG-Face release (Caffe files)"].scaled == 5000
    assert parts["Adience aligned faces"].measured == 1000 and parts["Adience aligned faces"].scaled == 10_000
    assert parts["feature caches"].scaled == 4000 and parts["trained models"].scaled == 2000
    assert parts["other build files (results, small caches)"].measured == 50
    assert sum(p.measured for p in parts.values()) == sum(sizes.values())
    text = rehearsal.format_disk(list(parts.values()), 10, 100)
    assert "scaled by 100 / 10 stand-in faces" in text and "total" in text
