"""``python -m helpers.course``: run the whole course headless, in order, and report.

Each notebook in ``notebooks/`` is executed in a fresh kernel with its parameters injected
after the cell tagged ``parameters`` (the papermill convention), the executed copy is written
to ``build/notebooks/``, and a table of notebook, status and seconds closes the run. A cell
that fails makes the run exit non-zero with the notebook's name, the cell's number and the
error; ``--keep-going`` runs the remaining notebooks anyway.

    python -m helpers.course                 # every notebook, mode chosen automatically
    python -m helpers.course --mode quick    # force quick mode
    python -m helpers.course --only 03 05    # a subset
    python -m helpers.course --list          # the plan, nothing run
    python -m helpers.course --colab DIR     # Colab simulated: a fresh runtime per notebook, one shared Drive
    python -m helpers.course --colab DIR --no-drive   # ... with USE_DRIVE = False: each notebook on its own

**The Colab simulation** (``--colab DIR``) runs each notebook as Colab would: in its own fresh
runtime folder ``DIR/runtimes/<notebook>`` (Colab's ``/content``), where the notebook's own Setup
cell clones the course (``git clone https://github.com/…``, redirected to a snapshot of this
checkout, uncommitted changes included) and starts from an empty build/; the kernel sees
``COLAB_RELEASE_TAG`` and a stand-in ``google.colab`` (``tests/colab_standin``) whose
``drive.mount`` links ``DIR/drive`` (or ``--drive FOLDER``), the only folder the runtimes share.
Nothing is prepared beforehand: notebook 00 builds quick mode's world on the Drive. With
``--no-drive`` nothing is shared and every notebook recomputes what it needs.

Every notebook's kernel gets ``COURSE_NOTEBOOK``, so the numbers it records also land in its own
``build/results/<notebook>.json`` (copied to ``DIR/results/`` in the simulation).
"""
from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

from . import paths

# The repository's public home. Colab badges and the Colab set-up cell derive from it:
# change it here, then run `python -m helpers.course --sync-links`.
GITHUB_REPO = "vggface-gender-course/vggface-gender-course"
GITHUB_BRANCH = "main"
COLAB_CLONE_DIR = "/content/vggface-gender-course"
# The stand-in google.colab package the Colab simulation puts on each kernel's path.
COLAB_STANDIN = paths.REPO_ROOT / "tests" / "colab_standin"

NOTEBOOK_PATTERN = re.compile(r"^(\d\d)_[\w-]+\.ipynb$")


def colab_url(notebook_name: str) -> str:
    return f"https://colab.research.google.com/github/{GITHUB_REPO}/blob/{GITHUB_BRANCH}/notebooks/{notebook_name}"


def colab_badge(notebook_name: str) -> str:
    return (
        f'<a href="{colab_url(notebook_name)}" target="_parent">'
        '<img src="https://colab.research.google.com/assets/colab-badge.svg" alt="Open In Colab"/></a>'
    )


def clone_url() -> str:
    return f"https://github.com/{GITHUB_REPO}"


# The first code cell of every notebook (Setup). It must run before helpers/ is importable, so it
# is plain Python: find the checkout above the working folder, or, on a fresh Colab runtime
# (working folder /content), clone the course there; then install only what Colab lacks.
# `python -m helpers.course --sync-links` writes it into every notebook; a test checks they agree.
BOOTSTRAP_TEMPLATE = '''import os
import subprocess
import sys
from pathlib import Path

# On Colab: google.colab is imported in its kernel, and COLAB_RELEASE_TAG is set for every process
IN_COLAB = "google.colab" in sys.modules or "COLAB_RELEASE_TAG" in os.environ
# The folder that holds helpers/: Jupyter started in the course's folder or in notebooks/ ...
ROOT = next((p for p in [Path.cwd(), *Path.cwd().parents] if (p / "helpers" / "course").is_dir()), None)
if ROOT is None and IN_COLAB:  # ... or a fresh Colab runtime (working folder /content): fetch the code
    ROOT = Path.cwd() / "{clone_name}"
    if not (ROOT / "helpers").is_dir():
        COURSE_URL = "{clone_url}"
        subprocess.run(["git", "clone", "--quiet", "--depth", "1", COURSE_URL, str(ROOT)], check=True)
    os.chdir(ROOT / "notebooks")
if ROOT is None:
    raise FileNotFoundError(f"no helpers/ folder in {{Path.cwd()}} or above: start Jupyter in the course's folder")
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))
if IN_COLAB:
    from helpers.course import environment

    environment.install_missing()  # only what Colab lacks: never its TensorFlow, Keras, NumPy or Jupyter'''


def bootstrap_source() -> str:
    """The Setup bootstrap cell, for this repository's clone URL."""
    return BOOTSTRAP_TEMPLATE.format(clone_name=Path(COLAB_CLONE_DIR).name, clone_url=clone_url())


def first_code_cell(nb):
    return next((c for c in nb.cells if c.cell_type == "code"), None)


@dataclass
class NotebookResult:
    name: str
    status: str = "pending"  # ok, failed, skipped
    seconds: float = 0.0
    error: str = ""
    failed_cell: int | None = None  # 1-based position in the notebook as committed
    output: Path | None = None
    results_file: Path | None = None  # what this notebook recorded (build/results/<notebook>.json)
    peak_rss_mb: float | None = None  # the kernel's peak resident memory (Linux), None if unknown


@dataclass
class Plan:
    mode: str
    reason: str
    notebooks: list[Path] = field(default_factory=list)


def discover_notebooks(folder: Path | None = None) -> list[Path]:
    folder = folder or paths.notebooks_dir()
    return sorted(p for p in folder.glob("*.ipynb") if NOTEBOOK_PATTERN.match(p.name))


def select(notebooks: list[Path], only: list[str] | None) -> list[Path]:
    """Keep the notebooks whose number or name matches ``only`` ('03', '3', '03_embeddings')."""
    if not only:
        return notebooks
    wanted = [w.strip() for item in only for w in item.split(",") if w.strip()]
    chosen = []
    for w in wanted:
        hits = [p for p in notebooks if p.name.startswith(w.zfill(2) if w.isdigit() else w)]
        if not hits:
            names = ", ".join(p.stem for p in notebooks)
            raise SystemExit(f"--only {w!r} matches no notebook (have: {names})")
        chosen.extend(h for h in hits if h not in chosen)
    return sorted(chosen)


def notebook_title(path: Path) -> str:
    nb = json.loads(path.read_text(encoding="utf-8"))
    for cell in nb.get("cells", []):
        if cell.get("cell_type") == "markdown":
            for line in "".join(cell.get("source", "")).splitlines():
                if line.startswith("# "):
                    return line[2:].strip()
    return path.stem


def inject_parameters(nb, parameters: dict) -> int:
    """Insert a cell tagged ``injected-parameters`` after the ``parameters`` cell.

    Returns the index of the injected cell. A notebook without a ``parameters`` cell gets the
    injected cell first, as papermill does.
    """
    import nbformat

    lines = ["# Parameters injected by python -m helpers.course"]
    lines += [f"{k} = {v!r}" for k, v in parameters.items()]
    cell = nbformat.v4.new_code_cell("\n".join(lines))
    cell.metadata["tags"] = ["injected-parameters"]
    nb.cells = [c for c in nb.cells if "injected-parameters" not in c.get("metadata", {}).get("tags", [])]
    index = next(
        (i + 1 for i, c in enumerate(nb.cells) if "parameters" in c.get("metadata", {}).get("tags", [])),
        0,
    )
    nb.cells.insert(index, cell)
    return index


def execute_notebook(
    path: Path,
    parameters: dict,
    output_dir: Path,
    cell_timeout: int = 1800,
    kernel_name: str = "python3",
    on_cell=None,
    cwd: Path | None = None,
    env: dict | None = None,
) -> NotebookResult:
    """Run one notebook in a fresh kernel; write the executed copy to ``output_dir``.

    The kernel starts in ``cwd`` (default: the notebook's folder) with the environment ``env``
    (default: this process's, plus ``COURSE_NOTEBOOK`` naming the notebook).
    """
    import nbformat
    from nbclient import NotebookClient
    from nbclient.exceptions import CellExecutionError, CellTimeoutError, DeadKernelError

    from .fileio import atomic_path
    from .results import ENV_NOTEBOOK

    result = NotebookResult(path.stem)
    nb = nbformat.read(path, as_version=4)
    injected_at = inject_parameters(nb, parameters)
    code_cells = [i for i, c in enumerate(nb.cells) if c.cell_type == "code"]
    current = {"index": None}
    if env is None:
        env = {**os.environ, ENV_NOTEBOOK: path.stem}

    def on_cell_start(cell, cell_index, **_):
        current["index"] = cell_index
        if on_cell:
            on_cell(code_cells.index(cell_index) + 1 if cell_index in code_cells else 0, len(code_cells))

    def on_cell_complete(**_):
        peak = kernel_peak_rss_mb(client)
        if peak is not None:
            result.peak_rss_mb = max(peak, result.peak_rss_mb or 0.0)

    client = NotebookClient(
        nb,
        timeout=cell_timeout,
        kernel_name=kernel_name,
        resources={"metadata": {"path": str(cwd or path.parent)}},
        on_cell_start=on_cell_start,
        on_cell_complete=on_cell_complete,
    )
    start = time.perf_counter()
    try:
        client.execute(env=env)
        result.status = "ok"
    except (CellExecutionError, CellTimeoutError, DeadKernelError) as exc:
        result.status = "failed"
        index = current["index"]
        source = nb.cells[index].source if index is not None else ""
        # number cells as the learner sees them: 1-based, in the notebook without the injected cell
        if index is not None:
            result.failed_cell = index + (0 if index < injected_at else -1) + 1 if index != injected_at else 0
        first = next((ln for ln in source.splitlines() if ln.strip()), "")
        summary = _error_summary(exc)
        where = "the injected parameters" if index == injected_at else f"cell {result.failed_cell}"
        result.error = f"{path.name}, {where} ({first[:60]!r}): {summary}"
    finally:
        result.seconds = time.perf_counter() - start
        output_dir.mkdir(parents=True, exist_ok=True)
        result.output = output_dir / path.name
        with atomic_path(result.output) as tmp:
            nbformat.write(nb, tmp)
    return result


def kernel_peak_rss_mb(client) -> float | None:
    """The running kernel's peak resident set (``VmHWM``), in MB; None where /proc cannot tell."""
    try:
        pid = client.km.provisioner.pid
        with open(f"/proc/{pid}/status", encoding="ascii") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
    except (AttributeError, OSError, ValueError, TypeError):
        return None
    return None


def _error_summary(exc: Exception) -> str:
    ename = getattr(exc, "ename", None)
    evalue = getattr(exc, "evalue", None)
    if ename:
        return f"{ename}: {evalue}"
    text = str(exc).strip().splitlines()
    return text[-1] if text else exc.__class__.__name__


# Seconds one cell may run. Full mode's longest cells are 05's comparison (three configurations,
# "everything" training all 134 M weights) and 06's cross-validation cells, which stop themselves
# before CV_CELL_LIMIT and resume in the next cell; on a T4 05's is estimated at up to 25 minutes.
CELL_TIMEOUT = {"quick": 1800, "full": 4 * 3600}
CELL_TIMEOUT_SMOKE = 1800


def prepare_synthetic_world() -> None:
    """Quick mode's assets: the synthetic world (built once) and how strong its story is."""
    from .. import synthetic

    synthetic.ensure_built()
    synthetic.story_numbers(record=True)


def make_plan(mode: str | None, only: list[str] | None, notebooks_dir: Path | None = None) -> Plan:
    resolved, reason = paths.resolve_mode(mode)
    return Plan(resolved, reason, select(discover_notebooks(notebooks_dir), only))


def print_plan(plan: Plan) -> None:
    print(f"Mode: {plan.reason}")
    for p in plan.notebooks:
        print(f"  {p.name:<32} {notebook_title(p)}")


def format_summary(results: list[NotebookResult]) -> str:
    width = max([len(r.name) for r in results] + [8])
    lines = [f"{'notebook':<{width}}  {'status':<8} {'seconds':>8} {'peak MB':>8}", "-" * (width + 28)]
    for r in results:
        peak = f"{r.peak_rss_mb:>8.0f}" if r.peak_rss_mb else f"{'':>8}"
        lines.append(f"{r.name:<{width}}  {r.status:<8} {r.seconds:>8.1f} {peak}")
    total = sum(r.seconds for r in results)
    lines.append(f"{'total':<{width}}  {'':<8} {total:>8.1f}")
    return "\n".join(lines)


@dataclass
class ColabSimulation:
    """The folders of one simulated Colab run (``--colab DIR``)."""

    root: Path
    drive: Path | None  # the folder that plays Google Drive (holds MyDrive/); None: Drive off
    source_url: str = ""  # the snapshot of this checkout that each runtime's bootstrap clones

    @property
    def runtimes(self) -> Path:
        return self.root / "runtimes"

    @property
    def results_dir(self) -> Path:
        return self.root / "results"

    def runtime(self, notebook: Path) -> Path:
        return self.runtimes / notebook.stem

    def clone(self, notebook: Path) -> Path:
        return self.runtime(notebook) / Path(COLAB_CLONE_DIR).name

    def build_dir(self, notebook: Path) -> Path:
        """Where that notebook's kernel keeps build/: on the Drive, or in its runtime's clone."""
        if self.drive is not None:
            return self.drive / "MyDrive" / paths.DRIVE_FOLDER / "build"
        return self.clone(notebook) / "build"

    def prepare(self, notebooks: list[Path]) -> None:
        inside = next((p for p in [self.root.resolve(), *self.root.resolve().parents]
                       if (p / "helpers" / "course").is_dir()), None)
        if inside is not None:
            raise SystemExit(f"--colab {self.root}: the folder lies inside a checkout of the course ({inside}); a "
                             "runtime's Setup cell would find that checkout instead of cloning: choose a folder outside it")
        for folder in (self.root, self.runtimes):
            folder.mkdir(parents=True, exist_ok=True)
        for nb in notebooks:
            if self.runtime(nb).exists():  # every notebook gets a fresh runtime, as on Colab
                shutil.rmtree(self.runtime(nb))
            self.runtime(nb).mkdir(parents=True)
        if self.drive is not None:
            (self.drive / "MyDrive").mkdir(parents=True, exist_ok=True)
        snapshot = self.root / "source"
        if snapshot.exists():
            shutil.rmtree(snapshot)
        self.source_url = snapshot_checkout(snapshot)

    def kernel_env(self, notebook: Path) -> dict:
        """The environment of a Colab kernel: Colab's marker, the stand-in, the redirected clone."""
        from .results import ENV_NOTEBOOK, ENV_RESULTS

        env = {k: v for k, v in os.environ.items()
               if k not in (paths.ENV_HOME, paths.ENV_BUILD, paths.ENV_FAST_DATA, ENV_RESULTS)}
        env[paths.ENV_COLAB_TAG] = "simulated-by-helpers.course"
        env[paths.ENV_COLAB_CONTENT] = str(self.runtime(notebook))
        env[ENV_NOTEBOOK] = notebook.stem
        env["PYTHONPATH"] = os.pathsep.join([str(COLAB_STANDIN), *filter(None, [os.environ.get("PYTHONPATH")])])
        if self.drive is not None:
            env["COLAB_STANDIN_DRIVE"] = str(self.drive)
        # git's url.<base>.insteadOf: the Setup cell's `git clone https://github.com/...` fetches the snapshot
        n = int(env.get("GIT_CONFIG_COUNT") or 0)
        env.update({"GIT_CONFIG_COUNT": str(n + 1), f"GIT_CONFIG_KEY_{n}": f"url.{self.source_url}.insteadOf",
                    f"GIT_CONFIG_VALUE_{n}": clone_url()})
        return env


def snapshot_checkout(dest: Path, repo: Path | None = None) -> str:
    """A one-commit git repository of the checkout's files as they are now (tracked and untracked,
    minus what .gitignore excludes), for the simulated runtimes to clone; returns its file:// URL."""
    repo = repo or paths.REPO_ROOT
    try:
        listed = subprocess.run(["git", "-C", str(repo), "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
                                check=True, capture_output=True).stdout.decode("utf-8").split("\0")
    except (OSError, subprocess.CalledProcessError) as exc:
        raise SystemExit(f"--colab needs the course as a git checkout (to clone it like Colab does): {repo}: {exc}")
    dest.mkdir(parents=True)
    for rel in filter(None, listed):
        src = repo / rel
        if src.is_file():  # listed but deleted in the work tree: not part of the snapshot
            (dest / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, dest / rel)
    git = ["git", "-C", str(dest), "-c", "user.name=helpers.course", "-c", "user.email=course@localhost"]
    for cmd in (["init", "-q"], ["add", "-A"], ["commit", "-q", "-m", "snapshot of the checkout for the Colab simulation"]):
        subprocess.run(git + cmd, check=True, capture_output=True)
    return dest.resolve().as_uri()


def run(
    mode: str | None = None,
    only: list[str] | None = None,
    keep_going: bool = False,
    output_dir: Path | None = None,
    extra_parameters: dict | None = None,
    cell_timeout: int | None = None,
    notebooks_dir: Path | None = None,
    prepare_quick=None,
    colab: ColabSimulation | None = None,
) -> tuple[int, list[NotebookResult]]:
    """Run the plan; returns (exit code, one NotebookResult per planned notebook).

    ``prepare_quick`` builds quick mode's assets before the first notebook (default: the
    synthetic world and the miniature VGG-Face, cached after the first run). ``colab`` runs each
    notebook in a simulated fresh Colab runtime instead (see the module's docstring); nothing is
    prepared then: the notebooks fetch and build what they need themselves.
    """
    from . import results as results_mod

    plan = make_plan(mode, only, notebooks_dir)
    extra = dict(extra_parameters or {})
    if cell_timeout is None:  # full mode's long cells (05's comparison, 06's folds) run for hours on a T4
        cell_timeout = CELL_TIMEOUT_SMOKE if extra.get("SMOKE") else CELL_TIMEOUT[plan.mode]
    if colab is not None:
        requested = mode or "auto"
        print(f"Colab simulated in {colab.root}: a fresh runtime per notebook, "
              + (f"Google Drive = {colab.drive}" if colab.drive else "Drive off (USE_DRIVE = False)")
              + f"; mode {requested!r}, resolved by each notebook")
        colab.prepare(plan.notebooks)
        if colab.drive is None:
            extra.setdefault("USE_DRIVE", False)  # with Drive, the notebooks' default (None: yes on Colab) decides
        parameters = {"MODE": requested, **extra}
        output_dir = output_dir or colab.root / "notebooks"
    else:
        print(f"Mode: {plan.reason}")
        if plan.mode == "full":
            missing = paths.missing_full_assets()
            if missing:
                print("Full mode needs these assets, which are missing:", file=sys.stderr)
                for what, where, how in missing:
                    print(f"  - {what}: {where}\n      how to get it: {how}", file=sys.stderr)
                return 2, []
        output_dir = output_dir or paths.build_dir() / "notebooks"
        os.environ[paths.ENV_MODE] = plan.mode  # kernels inherit it; helpers agree on the mode
        os.environ[paths.ENV_SMOKE] = "1" if extra.get("SMOKE") else "0"
        os.environ[paths.ENV_SUBSET] = repr(float(extra.get("SUBSET", 1.0)))
        if not only:
            results_mod.reset(plan.mode)
        if plan.mode == "quick":
            if prepare_quick is None:
                prepare_quick = prepare_synthetic_world
            t0 = time.perf_counter()
            prepare_quick()
            print(f"Synthetic world ready ({time.perf_counter() - t0:.0f} s)")
        parameters = {"MODE": plan.mode, **extra}

    outcomes: list[NotebookResult] = []
    n = len(plan.notebooks)
    for i, path in enumerate(plan.notebooks, 1):
        label = f"[{i}/{n}] {path.stem}"

        def on_cell(k, total, label=label):
            if sys.stdout.isatty():
                print(f"\r{label}: cell {k}/{total}", end="", flush=True)

        print(f"{label} ...", flush=True)
        if colab is not None:
            own_results = colab.build_dir(path) / "results" / f"{path.stem}.json"
            cwd, env = colab.runtime(path), colab.kernel_env(path)
        else:
            own_results = results_mod.notebook_results_path(path.stem)
            cwd, env = None, None
        own_results.unlink(missing_ok=True)  # what this run records, not an earlier run's keys
        outcome = execute_notebook(path, parameters, output_dir, cell_timeout=cell_timeout, on_cell=on_cell,
                                   cwd=cwd, env=env)
        if colab is not None and own_results.is_file():
            colab.results_dir.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(own_results, colab.results_dir / own_results.name)
            own_results = colab.results_dir / own_results.name
        outcome.results_file = own_results if own_results.is_file() else None
        if sys.stdout.isatty():
            print("\r", end="")
        peak = f", peak {outcome.peak_rss_mb:.0f} MB" if outcome.peak_rss_mb else ""
        print(f"{label}: {outcome.status} in {outcome.seconds:.1f} s{peak} -> {outcome.output}", flush=True)
        outcomes.append(outcome)
        if colab is None:
            results_mod.record(f"runner.{path.stem}.seconds", round(outcome.seconds, 1), mode=plan.mode)
            if outcome.peak_rss_mb:
                results_mod.record(f"runner.{path.stem}.peak_rss_mb", round(outcome.peak_rss_mb), mode=plan.mode)
        if outcome.status == "failed":
            print(f"FAILED: {outcome.error}", file=sys.stderr, flush=True)
            if not keep_going:
                break
    for path in plan.notebooks[len(outcomes):]:
        outcomes.append(NotebookResult(path.stem, status="skipped"))
    print()
    print(format_summary(outcomes))
    if colab is not None:
        summary = {o.name: {"status": o.status, "seconds": round(o.seconds, 1), "peak_rss_mb": o.peak_rss_mb,
                            "error": o.error or None} for o in outcomes}
        from .fileio import write_json_atomic

        write_json_atomic(colab.root / "summary.json", summary)
        print(f"Results: {colab.results_dir}/<notebook>.json; summary: {colab.root / 'summary.json'}")
    else:
        print(f"Results: {results_mod.results_path()}")
    failed = [o for o in outcomes if o.status == "failed"]
    for o in failed:
        print(f"FAILED: {o.error}", file=sys.stderr)
    return (1 if failed else 0), outcomes


def sync_links(readme: Path | None = None, notebooks: list[Path] | None = None) -> list[Path]:
    """Rewrite every Colab badge from ``GITHUB_REPO`` and every notebook's first code cell from
    ``bootstrap_source()`` (the clone URL included); return the files changed.

    Notebooks are edited as JSON and written back in nbformat's layout, so only the changed
    lines differ."""
    badge_re = re.compile(r'<a href="https://colab\.research\.google\.com/github/[^"]*/notebooks/([\w-]+\.ipynb)"[^>]*>.*?</a>')
    changed = []
    readme = readme or paths.REPO_ROOT / "README.md"
    text = readme.read_text(encoding="utf-8")
    new = badge_re.sub(lambda m: colab_badge(m.group(1)), text)
    if new != text:
        readme.write_text(new, encoding="utf-8")
        changed.append(readme)
    for path in notebooks or discover_notebooks():
        nb = json.loads(path.read_text(encoding="utf-8"))
        dirty = False
        for cell in nb["cells"]:
            src = "".join(cell["source"])
            new = badge_re.sub(lambda m: colab_badge(m.group(1)), src)
            if new != src:
                cell["source"], dirty = _source_lines(new), True
        setup = next((c for c in nb["cells"] if c["cell_type"] == "code"), None)
        if setup is not None and "".join(setup["source"]) != bootstrap_source():
            setup["source"], dirty = _source_lines(bootstrap_source()), True
        if dirty:
            from .fileio import write_text_atomic

            write_text_atomic(path, json.dumps(nb, indent=1, ensure_ascii=False) + "\n")
            changed.append(path)
    return changed


def _source_lines(text: str) -> list[str]:
    """A cell's source as nbformat stores it: lines with their newlines, the last one without."""
    return text.splitlines(keepends=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m helpers.course", description=__doc__.split("\n\n")[0])
    parser.add_argument("--mode", choices=["quick", "full", "auto"], default=None,
                        help="quick (synthetic world), full (real VGG-Face + Adience) or auto (default: full if the real assets are present)")
    parser.add_argument("--only", nargs="+", metavar="NN", help="run only these notebooks, e.g. --only 03 05 or --only 03,05")
    parser.add_argument("--list", action="store_true", help="show the plan and exit")
    parser.add_argument("--keep-going", action="store_true", help="run the remaining notebooks after a failure")
    parser.add_argument("--output-dir", type=Path, help="where executed notebooks go (default build/notebooks)")
    parser.add_argument("--smoke", action="store_true",
                        help="every size and epoch count at its minimum (SMOKE = True in every notebook): "
                             "checks in minutes that this machine and its assets work end to end")
    parser.add_argument("--subset", type=float, default=None, metavar="F",
                        help="full mode on a share F of Adience's users (whole users, every fold kept): SUBSET = F")
    parser.add_argument("--cell-timeout", type=int, default=None,
                        help=f"seconds one cell may run (default: {CELL_TIMEOUT['quick']} in quick mode and SMOKE runs, "
                             f"{CELL_TIMEOUT['full']} in full mode)")
    parser.add_argument("--colab", type=Path, metavar="DIR",
                        help="simulate Colab in DIR: each notebook in its own fresh runtime (its Setup cell clones this "
                             "checkout), a stand-in google.colab, one shared Drive folder (DIR/drive)")
    parser.add_argument("--drive", type=Path, metavar="FOLDER",
                        help="with --colab: the folder that plays Google Drive (holds MyDrive/; default DIR/drive)")
    parser.add_argument("--no-drive", action="store_true",
                        help="with --colab: USE_DRIVE = False, nothing shared between the runtimes")
    parser.add_argument("-p", "--parameter", nargs=2, action="append", metavar=("NAME", "VALUE"), default=[],
                        help="extra parameter for every notebook (VALUE is read as JSON when it parses, else as a string)")
    parser.add_argument("--sync-links", action="store_true", help="rewrite Colab badges and every notebook's Setup bootstrap cell (clone URL) from GITHUB_REPO")
    args = parser.parse_args(argv)
    if args.sync_links:
        for p in sync_links():
            print(f"updated {p}")
        return 0
    if args.list:
        print_plan(make_plan(args.mode, args.only))
        return 0
    extra = {}
    for name, value in args.parameter:
        try:
            extra[name] = json.loads(value)
        except json.JSONDecodeError:
            extra[name] = value
    if args.smoke:
        extra["SMOKE"] = True
    if args.subset is not None:
        if not 0 < args.subset <= 1:
            parser.error(f"--subset {args.subset}: a share of the users in (0, 1]")
        extra["SUBSET"] = args.subset
    colab = None
    if args.colab is not None:
        if args.no_drive and args.drive:
            parser.error("--drive and --no-drive contradict each other")
        drive = None if args.no_drive else (args.drive or args.colab / "drive")
        colab = ColabSimulation(args.colab.resolve(), drive.resolve() if drive else None)
    elif args.drive or args.no_drive:
        parser.error("--drive and --no-drive go with --colab DIR")
    code, _ = run(args.mode, args.only, args.keep_going, args.output_dir, extra, args.cell_timeout, colab=colab)
    return code


if __name__ == "__main__":
    raise SystemExit(main())
