"""``python -m helpers.course.rehearsal``: full mode, rehearsed on stand-ins, notebook by notebook.

The real VGG-Face and Adience cannot be downloaded in CI, so CI rehearses full mode on the
stand-ins of :mod:`helpers.course.standins` (the full-size 145M-parameter network with seeded
weights, Adience's formats and 816 px JPEGs): the very code of full mode at 224 px, on the CPU,
with every size at its minimum (``--smoke``). For each notebook the rehearsal

- runs ``python -m helpers.course --mode full --smoke --only NN`` in a process of its own (a
  fresh kernel; with ``--runner-args`` whatever the runner offers, e.g. a fresh runtime folder);
- samples, once a second, the anonymous resident memory (``RssAnon``: what the kernel cannot
  drop, unlike file pages) of every process under it, and keeps the largest single process's
  peak;
- records ``rehearsal.<notebook>.peak_rss_anon_mb`` and ``.seconds`` in ``build/results.json``.

At the end it measures the disk the run took, part by part, and scales it to Adience's 19,487
faces (:func:`disk_estimate`): what grows with the faces (the JPEGs, the prepared cache, the
feature caches) is multiplied by 19,487 / the stand-in's faces, and what does not (weights,
converted and trained models, checkpoints, logs, executed notebooks) is kept as measured.

    python -m helpers.course.rehearsal                      # stand-ins in build/rehearsal/, then 00..06
    python -m helpers.course.rehearsal --only 03 --keep-going
"""
from __future__ import annotations

import argparse
import os
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from . import paths

ADIENCE_FACES = 19_487


# ----------------------------------------------------------------------------- memory

def _children(pid: int) -> list[int]:
    out = []
    try:
        for task in Path(f"/proc/{pid}/task").iterdir():
            text = (task / "children").read_text().split()
            out += [int(c) for c in text]
    except OSError:
        pass
    return out


def rss_anon_kb(pid: int) -> int | None:
    """A process's anonymous resident memory in kB (Linux ``/proc``), or None."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("RssAnon:"):
                return int(line.split()[1])
    except OSError:
        return None
    return None


class PeakMemory:
    """Samples a process tree once a second; ``peak_kb`` is the largest single process's
    largest ``RssAnon`` seen (None where ``/proc`` is not there)."""

    def __init__(self, pid: int, interval: float = 1.0):
        self.pid, self.interval = pid, interval
        self.peak_kb: int | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()

    def sample(self) -> None:
        todo, seen = [self.pid], set()
        while todo:
            pid = todo.pop()
            if pid in seen:
                continue
            seen.add(pid)
            kb = rss_anon_kb(pid)
            if kb is not None and (self.peak_kb is None or kb > self.peak_kb):
                self.peak_kb = kb
            todo += _children(pid)

    def _run(self) -> None:
        while not self._stop.is_set():
            self.sample()
            self._stop.wait(self.interval)
        self.sample()


# ----------------------------------------------------------------------------- disk

# (part, path relative to the course home or the build folder, grows with the number of faces?)
DISK_PARTS = (
    ("VGG-Face release (Caffe files)", "home", "weights/vgg_face_caffe", False),
    ("converted model (.keras)", "home", "weights/converted", False),
    ("Adience aligned faces", "home", "data/adience", True),
    ("prepared image cache", "build", "cache/prepared", True),
    ("feature caches", "build", "cache/features", True),
    ("trained models", "build", "models", False),
    ("training runs (checkpoints, backups, logs)", "build", "runs", False),
    ("cross-validation runs", "build", "cv", False),
    ("executed notebooks", "build", "notebooks", False),
)


def folder_bytes(folder: Path) -> int:
    if not folder.exists():
        return 0
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file() and not p.is_symlink())


@dataclass
class DiskPart:
    name: str
    measured: int
    per_face: bool
    scaled: int


def disk_estimate(home: Path, build: Path, faces: int, target_faces: int = ADIENCE_FACES,
                  prepared: Path | None = None) -> list[DiskPart]:
    """The disk of each part of a run (:data:`DISK_PARTS`, plus whatever else lies in the build
    folder), and each scaled to ``target_faces``: parts that grow with the faces by
    ``target_faces / faces``, the others as measured."""
    factor = target_faces / max(1, faces)
    roots = {"home": Path(home), "build": Path(build)}
    out, counted = [], []
    for name, where, rel, per_face in DISK_PARTS:
        folder = prepared if (rel == "cache/prepared" and prepared is not None) else roots[where] / rel
        counted.append(folder)
        b = folder_bytes(folder)
        out.append(DiskPart(name, b, per_face, round(b * factor) if per_face else b))
    rest = folder_bytes(Path(build)) - sum(folder_bytes(f) for f in counted if Path(build) in f.parents)
    out.append(DiskPart("other build files (results, small caches)", rest, False, rest))
    return out


def format_disk(parts: list[DiskPart], faces: int, target_faces: int = ADIENCE_FACES) -> str:
    lines = [f"{'part':<44}{'measured':>12}{'scaled to ' + format(target_faces, ','):>18}"]
    for p in parts:
        lines.append(f"{p.name:<44}{p.measured / 1e6:>10.1f} MB{p.scaled / 1e9:>15.2f} GB"
                     + ("   (x faces)" if p.per_face else ""))
    total, scaled = sum(p.measured for p in parts), sum(p.scaled for p in parts)
    lines.append(f"{'total':<44}{total / 1e6:>10.1f} MB{scaled / 1e9:>15.2f} GB")
    lines.append(f"(parts marked x faces scaled by {target_faces:,} / {faces:,} stand-in faces; the others as measured)")
    return "\n".join(lines)


# ----------------------------------------------------------------------------- the rehearsal

@dataclass
class Outcome:
    notebook: str
    status: str
    seconds: float
    peak_mb: float | None


def run_notebook(name: str, env: dict, runner_args: list[str], log: Path) -> Outcome:
    cmd = [sys.executable, "-m", "helpers.course", "--mode", "full", "--smoke", "--only", name[:2], *runner_args]
    start = time.perf_counter()
    with open(log, "w", encoding="utf-8") as out:
        proc = subprocess.Popen(cmd, env=env, stdout=out, stderr=subprocess.STDOUT, cwd=paths.REPO_ROOT)
        with PeakMemory(proc.pid) as peak:
            code = proc.wait()
    seconds = time.perf_counter() - start
    mb = None if peak.peak_kb is None else round(peak.peak_kb / 1024, 1)
    return Outcome(name, "ok" if code == 0 else "failed", round(seconds, 1), mb)


def main(argv=None) -> int:
    from . import results, runner, standins

    parser = argparse.ArgumentParser(prog="python -m helpers.course.rehearsal", description=__doc__.split("\n\n")[0])
    parser.add_argument("--home", type=Path, default=None, help="stand-in course home (default build/rehearsal/home)")
    parser.add_argument("--build", type=Path, default=None, help="the run's build folder (default build/rehearsal/build)")
    parser.add_argument("--faces", type=int, default=50, help="stand-in faces when they are built (default 50)")
    parser.add_argument("--folds-from", type=Path, default=None, help="real fold files for the stand-in's rows")
    parser.add_argument("--fresh", action="store_true", help="rebuild the stand-ins and empty the build folder first")
    parser.add_argument("--only", nargs="+", metavar="NN", help="only these notebooks")
    parser.add_argument("--keep-going", action="store_true", help="run the remaining notebooks after a failure")
    parser.add_argument("--runner-args", default="", help="more arguments for python -m helpers.course (one string)")
    args = parser.parse_args(argv)

    base = paths.REPO_ROOT / "build" / "rehearsal"
    home = (args.home or base / "home").resolve()
    build = (args.build or base / "build").resolve()
    if args.fresh:
        import shutil

        shutil.rmtree(home, ignore_errors=True)
        shutil.rmtree(build, ignore_errors=True)
    t0 = time.perf_counter()
    with standins.course_home(home):
        assets = paths.assets_for("full")
        if not standins.present(assets) == ["weights", "data"]:
            if paths.missing_full_assets() == [] and not standins.present(assets):
                raise SystemExit(f"{home} holds real full-mode assets: the rehearsal runs on stand-ins only")
            standins.build(home, faces=args.faces, folds_from=args.folds_from)
    build_seconds = time.perf_counter() - t0
    env = {**os.environ, paths.ENV_HOME: str(home), paths.ENV_BUILD: str(build),
           results.ENV_RESULTS: str(build / "results.json"), "TF_CPP_MIN_LOG_LEVEL": "2", "MPLBACKEND": "Agg"}
    os.environ.update({k: env[k] for k in (paths.ENV_HOME, paths.ENV_BUILD, results.ENV_RESULTS)})
    os.environ[paths.ENV_MODE], os.environ[paths.ENV_SMOKE] = "full", "1"
    if not args.only:
        results.reset("full")
    results.record("rehearsal.standins_seconds", round(build_seconds, 1), mode="full")
    notebooks = runner.select(runner.discover_notebooks(), args.only)
    (build / "rehearsal").mkdir(parents=True, exist_ok=True)
    outcomes = []
    for nb in notebooks:
        print(f"[{nb.stem}] ...", flush=True)
        o = run_notebook(nb.stem, env, args.runner_args.split(), build / "rehearsal" / f"{nb.stem}.log")
        outcomes.append(o)
        results.record(f"rehearsal.{nb.stem}.seconds", o.seconds, mode="full")
        results.record(f"rehearsal.{nb.stem}.peak_rss_anon_mb", o.peak_mb, mode="full")
        print(f"[{nb.stem}] {o.status} in {o.seconds:.0f} s, peak {o.peak_mb} MB (log: {build / 'rehearsal' / (nb.stem + '.log')})",
              flush=True)
        if o.status != "ok" and not args.keep_going:
            break
    print(f"\n{'notebook':<24}{'status':<8}{'seconds':>9}{'peak MB':>10}")
    for o in outcomes:
        print(f"{o.notebook:<24}{o.status:<8}{o.seconds:>9.0f}{o.peak_mb if o.peak_mb is not None else float('nan'):>10.0f}")
    print(f"{'total':<32}{sum(o.seconds for o in outcomes):>9.0f}   (+{build_seconds:.0f} s building the stand-ins)")
    with standins.course_home(home):
        from ..data import read_adience_folds

        faces = len(read_adience_folds(paths.assets_for("full").dataset_root, subset=1.0, check_images=False))
    from ..pipeline import prepared_dir

    parts = disk_estimate(home, build, faces, prepared=prepared_dir())
    print("\nDisk of this run:\n" + format_disk(parts, faces))
    results.record("rehearsal.disk_bytes", sum(p.measured for p in parts), mode="full")
    results.record("rehearsal.disk_scaled_to_adience_gb", round(sum(p.scaled for p in parts) / 1e9, 2), mode="full")
    failed = [o for o in outcomes if o.status != "ok"]
    for o in failed:
        print(f"FAILED: {o.notebook} (see {build / 'rehearsal' / (o.notebook + '.log')} and {build / 'notebooks'})",
              file=sys.stderr)
    return 1 if failed or len(outcomes) < len(notebooks) else 0


if __name__ == "__main__":
    raise SystemExit(main())
